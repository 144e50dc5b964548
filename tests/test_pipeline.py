"""Pipeline: sample -> (image, targets, weights); plans; joint augmentation; tf.data batches."""

import numpy as np
import pytest

from mtl.config import ConfigError, SourceConfig, load_config
from mtl.data.adapters import Adapter, DataError, Record
from mtl.data.pipeline import (
    LoadErrors, SampleEncoder, Source, make_dataset, open_sources, plan_split, plan_training,
)
from mtl.data.preprocess import letterbox, letterbox_info, prepare_image, unletterbox
from mtl.data.sample import make_sample

SIZE = 64


class MemoryAdapter(Adapter):
    """An adapter over samples held in memory; a sample of None fails to load."""

    name = "memory"

    def __init__(self, samples, **kw):
        super().__init__(".", **kw)
        self.samples = samples

    def _scan(self):
        return [
            Record(case_id=f"m{i}", patient_id=f"p{i}", presence=s and s["presence"],
                   label=s and s["label"], has_mask=bool(s and s["mask"] is not None),
                   source=f"memory/{i}.png")
            for i, s in enumerate(self.samples)
        ]

    def load(self, record):
        sample = self.samples[int(record.case_id[1:])]
        if sample is None:
            raise DataError(f"{record.source}: cannot decode")
        return sample


def tumor_image(h=80, w=120):
    image = np.full((h, w), 40, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[30:50, 70:100] = 1
    image[mask == 1] = 250
    return image, mask


def source_of(samples, **source_kw):
    adapter = MemoryAdapter(samples)
    return Source(SourceConfig(format="memory", **source_kw), adapter, adapter.records(), "memory")


def config(**over):
    base = {"data.image_size": SIZE, "data.augment.enabled": False}
    return load_config(overrides={**base, **over})


def test_encode_full_sample():
    image, mask = tumor_image()
    sample = make_sample(image, mask=mask, presence=1, label="glioma", case_id="a")
    x, y, w = SampleEncoder(config(), augment=False).encode(sample, source_of([sample]), 0)
    assert x.shape == (SIZE, SIZE, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y["type"] == 1 and y["presence"][0] == 1.0
    assert w == {"presence": 1.0, "type": 1.0, "mask": 1.0, "box": 0.0}
    # the letterboxed mask still covers the bright tumor pixels
    assert x[..., 0][y["mask"][..., 0] > 0].mean() > 0.9
    assert x[..., 0][y["mask"][..., 0] == 0].mean() < 0.3


def test_missing_labels_become_zero_weights_not_fake_values():
    image, _ = tumor_image()
    sample = make_sample(image, presence=1, label=None, case_id="b")
    _, y, w = SampleEncoder(config(), augment=False).encode(sample, source_of([sample]), 0)
    assert w["type"] == 0.0 and w["mask"] == 0.0 and w["presence"] == 1.0
    unknown = make_sample(image, case_id="c")
    _, _, w = SampleEncoder(config(), augment=False).encode(unknown, source_of([unknown]), 0)
    assert all(v == 0.0 for v in w.values())


def test_no_tumor_slice_has_a_counted_empty_mask():
    image, _ = tumor_image()
    sample = make_sample(image, mask=np.zeros(image.shape, np.uint8), presence=0,
                         label="no_tumor", case_id="d")
    _, y, w = SampleEncoder(config(), augment=False).encode(sample, source_of([sample]), 0)
    assert w["mask"] == 1.0 and y["mask"].sum() == 0 and y["type"] == 0


def test_box_only_sample_gets_a_box_target():
    image, mask = tumor_image()
    sample = make_sample(image, presence=1, label="meningioma", case_id="e",
                         meta={"box": (70, 30, 100, 50)})
    x, y, w = SampleEncoder(config(), augment=False).encode(sample, source_of([sample]), 0)
    assert w["box"] == 1.0 and w["mask"] == 0.0
    assert x[..., 0][y["box"][..., 0] > 0].mean() > 0.8


def test_label_map_and_unknown_labels():
    image, _ = tumor_image()
    sample = make_sample(image, presence=1, label="G2", case_id="f")
    src = source_of([sample], label_map={"G2": "glioma"})
    _, y, w = SampleEncoder(config(), augment=False).encode(sample, src, 0)
    assert y["type"] == 1 and w["type"] == 1.0
    dropped = source_of([sample], label_map={"G2": None})
    _, _, w = SampleEncoder(config(), augment=False).encode(sample, dropped, 0)
    assert w["type"] == 0.0


def test_unknown_label_in_config_is_a_clear_error():
    cfg = config(**{"data.classes": ["no_tumor", "tumor"]})
    with pytest.raises(ConfigError, match="not in data.classes"):
        open_sources(cfg)


def test_augmentation_is_joint_and_seeded():
    image, mask = tumor_image(96, 96)
    sample = make_sample(image, mask=mask, presence=1, label="glioma", case_id="g")
    cfg = config(**{"data.augment.enabled": True, "data.augment.affine": 1.0,
                    "data.augment.distortion": 1.0, "data.augment.brightness_contrast": 0.0})
    enc = SampleEncoder(cfg, augment=True)
    src = source_of([sample])
    a = enc.encode(sample, src, 7)
    b = enc.encode(sample, src, 7)
    c = enc.encode(sample, src, 8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["mask"], b[1]["mask"])
    assert not np.array_equal(a[1]["mask"], c[1]["mask"])
    for x, y, _ in (a, c):  # the mask moved with the tumor
        inside = x[..., 0][y["mask"][..., 0] > 0]
        assert inside.size > 0 and inside.mean() > 0.7


def test_letterbox_round_trip():
    image, mask = tumor_image(80, 120)
    info = letterbox_info(80, 120, SIZE)
    small = letterbox(mask, info, nearest=True)
    assert small.shape == (SIZE, SIZE)
    back = unletterbox(small, info, nearest=True)
    assert back.shape == (80, 120)
    assert (back == mask).mean() > 0.98
    x, info2 = prepare_image(np.dstack([image] * 3), {"image_size": SIZE, "channels": 3,
                                                      "intensity_percentiles": [0.5, 99.5]})
    assert x.shape == (SIZE, SIZE, 3) and info2 == info


def test_constant_image_does_not_divide_by_zero():
    x, _ = prepare_image(np.full((50, 50), 7.0), {"image_size": SIZE, "channels": 1,
                                                  "intensity_percentiles": [0.5, 99.5]})
    assert np.isfinite(x).all() and x.max() == 0.0


def test_plans_are_reproducible_and_resume_consistent():
    image, mask = tumor_image()
    a = source_of([make_sample(image, mask=mask, presence=1, label="glioma", case_id=str(i))
                   for i in range(10)])
    b = source_of([make_sample(image, presence=1, case_id=str(i)) for i in range(30)], weight=2.0)
    for s in (a, b):
        s.splits = {"train": list(range(len(s.records)))}
    full = plan_training([a, b], seed=3, epochs=range(0, 4), steps=5, batch_size=8)
    tail = plan_training([a, b], seed=3, epochs=range(2, 4), steps=5, batch_size=8)
    n = 2 * 5 * 8
    np.testing.assert_array_equal(full.item[-n:], tail.item)
    np.testing.assert_array_equal(full.aug_seed[-n:], tail.aug_seed)
    np.testing.assert_array_equal(full.source[-n:], tail.source)
    # weight 2 on 30 items vs weight 1 on 10: b fills ~6/7 of the slots
    share = (plan_training([a, b], seed=0, epochs=range(20), steps=10, batch_size=8).source == 1).mean()
    assert share == pytest.approx(6 / 7, abs=0.04)


def test_dataset_batches_and_skips_bad_items():
    image, mask = tumor_image()
    good = make_sample(image, mask=mask, presence=1, label="glioma", case_id="0")
    src = source_of([good, None, good])
    src.splits = {"test": [0, 1, 2]}
    cfg = config()
    errors = LoadErrors()
    ds = make_dataset([src], plan_split([src], "test"), SampleEncoder(cfg, augment=False),
                      batch_size=3, on_error="skip", errors=errors)
    x, y, w = next(iter(ds))
    assert tuple(x.shape) == (3, SIZE, SIZE, 1)
    assert tuple(y["mask"].shape) == (3, SIZE, SIZE, 1) and tuple(y["type"].shape) == (3,)
    np.testing.assert_array_equal(w["mask"].numpy(), [1.0, 0.0, 1.0])
    assert len(errors.items) == 1 and "memory/1.png" in errors.items[0][0]
    strict = make_dataset([src], plan_split([src], "test"), SampleEncoder(cfg, augment=False),
                          batch_size=3, on_error="raise")
    with pytest.raises(Exception, match="memory/1.png"):
        next(iter(strict))


def test_worker_processes_give_the_same_batches_as_threads():
    """data.workers: the plan's items loaded and augmented in spawned processes come back in
    plan order, equal to the in-process pipeline's, seeded augmentation included."""
    cfg = load_config(overrides={"data.image_size": SIZE,
                                 "data.sources": [{"format": "phantoms",
                                                   "options": {"n": 12, "size": 64}}]})
    sources = open_sources(cfg)
    sources[0].splits = {"train": list(range(12))}
    plan = plan_training(sources, seed=3, epochs=range(2), steps=3, batch_size=4)
    encoder = SampleEncoder(cfg, augment=True)
    threads = list(make_dataset(sources, plan, encoder, batch_size=4).as_numpy_iterator())
    processes = list(make_dataset(sources, plan, encoder, batch_size=4, workers=2)
                     .as_numpy_iterator())
    assert len(processes) == len(threads) == 6
    for (x1, y1, w1), (x2, y2, w2) in zip(threads, processes):
        np.testing.assert_array_equal(x1, x2)
        for key in y1:
            np.testing.assert_array_equal(y1[key], y2[key])
        for key in w1:
            np.testing.assert_array_equal(w1[key], w2[key])


def test_worker_processes_skip_and_raise_like_threads():
    image, mask = tumor_image()
    good = make_sample(image, mask=mask, presence=1, label="glioma", case_id="0")
    src = source_of([good, None, good])
    src.splits = {"test": [0, 1, 2]}
    encoder = SampleEncoder(config(), augment=False)
    errors = LoadErrors()
    ds = make_dataset([src], plan_split([src], "test"), encoder, batch_size=3, on_error="skip",
                      errors=errors, workers=1)
    _, _, w = next(iter(ds))
    np.testing.assert_array_equal(w["mask"].numpy(), [1.0, 0.0, 1.0])
    assert errors.items == [("memory/1.png", "memory/1.png: cannot decode")]
    strict = make_dataset([src], plan_split([src], "test"), encoder, batch_size=3,
                          on_error="raise", workers=1)
    with pytest.raises(Exception, match="memory/1.png"):
        next(iter(strict))
    with pytest.raises(ConfigError, match="data.workers"):
        config(**{"data.workers": -1})


class CountingAdapter(MemoryAdapter):
    """MemoryAdapter that counts loads (threads of one process)."""

    def __init__(self, samples, **kw):
        super().__init__(samples, **kw)
        self.loads = 0

    def load(self, record):
        self.loads += 1
        return super().load(record)


def test_cache_gives_the_same_batches_and_loads_each_item_once():
    image, mask = tumor_image()
    samples = [make_sample(np.roll(image, 7 * i, axis=1), mask=np.roll(mask, 7 * i, axis=1),
                           presence=1, label="glioma", case_id=str(i)) for i in range(6)]
    adapter = CountingAdapter(samples)
    src = Source(SourceConfig(format="memory"), adapter, adapter.records(), "memory")
    src.splits = {"train": list(range(6))}
    cfg = config(**{"data.augment.enabled": True})
    plan = plan_training([src], seed=1, epochs=range(3), steps=3, batch_size=4)  # 36 slots
    plain = list(make_dataset([src], plan, SampleEncoder(cfg, augment=True), batch_size=4)
                 .as_numpy_iterator())
    assert adapter.loads == 36
    adapter.loads = 0
    encoder = SampleEncoder(cfg, augment=True, cache=True)
    cached = list(make_dataset([src], plan, encoder, batch_size=4).as_numpy_iterator())
    assert adapter.loads <= 6 + 2  # once per item (a racing thread may load one twice)
    assert encoder.cache_bytes == 6 * SIZE * SIZE * (4 + 2)
    for (x1, y1, w1), (x2, y2, w2) in zip(plain, cached, strict=True):
        np.testing.assert_array_equal(x1, x2)
        for key in y1:
            np.testing.assert_array_equal(y1[key], y2[key])
    # augmentation never alters what the cache holds
    fresh = SampleEncoder(cfg, augment=False).prepare(samples[0], src)
    np.testing.assert_array_equal(encoder._cache[(0, 0)].image, fresh.image)
    np.testing.assert_array_equal(encoder._cache[(0, 0)].mask, fresh.mask)


NAMED = ["pre-contrast", "flair", "post-contrast"]


def named_sample(channels=NAMED, n=3):
    rng = np.random.default_rng(0)
    # three sequences with very different intensity ranges
    image = np.stack([rng.uniform(0, 10, (48, 48)), rng.uniform(100, 4000, (48, 48)),
                      rng.uniform(0, 1, (48, 48))][:n], axis=-1).astype(np.float32)
    meta = {"channels": list(channels)} if channels is not None else {}
    return make_sample(image, case_id="c0", presence=0, label="no_tumor", meta=meta)


def test_named_channels_are_scaled_each_on_its_own_and_recorded_in_the_spec():
    cfg = config(**{"data.channels": 3, "data.channel_names": NAMED})
    encoder = SampleEncoder(cfg, augment=False)
    assert encoder.spec["channel_names"] == NAMED
    assert encoder.spec["intensity"] == "percentile_per_channel"
    prepared = encoder.prepare(named_sample(), source_of([named_sample()]))
    # every channel spans [0, 1] on its own: one shared range would leave two channels near 0
    assert (np.percentile(prepared.image.reshape(-1, 3), 99, axis=0) > 0.8).all()
    assert (np.percentile(prepared.image.reshape(-1, 3), 50, axis=0) > 0.3).all()
    # an unnamed 3-channel model keeps the shared range
    shared = SampleEncoder(config(**{"data.channels": 3}), augment=False)
    plain = shared.prepare(named_sample(channels=None), source_of([named_sample(channels=None)]))
    assert plain.image[..., 2].max() < 0.01


def test_a_sample_without_the_named_channels_is_refused_naming_them():
    cfg = config(**{"data.channels": 3, "data.channel_names": NAMED})
    encoder = SampleEncoder(cfg, augment=False)
    with pytest.raises(DataError, match="missing post-contrast"):
        encoder.prepare(named_sample(channels=["pre-contrast", "flair"], n=2),
                        source_of([named_sample()]))
    with pytest.raises(DataError, match="another order"):
        encoder.prepare(named_sample(channels=NAMED[::-1]), source_of([named_sample()]))
    with pytest.raises(DataError, match="needs 3 input channels"):  # no names: counted
        encoder.prepare(named_sample(channels=None, n=1), source_of([named_sample()]))


def test_grey_is_never_copied_into_named_channels():
    spec = SampleEncoder(config(**{"data.channels": 3, "data.channel_names": NAMED}),
                         augment=False).spec
    with pytest.raises(ValueError, match=r"needs 3 input channels \(pre-contrast, flair, "
                                         r"post-contrast, in this order\); the image has 1"):
        prepare_image(np.zeros((20, 20), np.uint8), spec)


@pytest.mark.parametrize("override, message", [
    ({"data.channels": 2, "data.channel_names": NAMED}, "3 names for data.channels=2"),
    ({"data.channels": 2, "data.channel_names": ["flair", "flair"]}, "distinct"),
])
def test_channel_names_must_match_the_channels(override, message):
    with pytest.raises(ConfigError, match=message):
        config(**override)
