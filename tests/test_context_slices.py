"""Neighbouring slices as input channels (``data.context_slices``, "2.5-D"): the channel
names and stacking rules, the LGG adapter reading a slice's neighbours from its volume, the
training input (the slice-order flip included), a tiny run trained, evaluated and given to
``mtl infer`` end to end, and the refusal of a single 2-D image. Every file is written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mtl.config import ConfigError, load_config
from mtl.data.adapters import DataError, get_adapter
from mtl.data.context import (
    clamped_index, context_names, describe, offsets, stack_context,
)
from mtl.data.pipeline import SampleEncoder, open_sources, reverse_slices
from mtl.data.preprocess import (
    context_slices, prepare_image, preprocessing_spec, sequence_names,
)
from mtl.model.warm_start import WarmStartError
from test_infer_channels import NAMES, lgg_slice, save_nifti

#: the module-wide model and run are built once, in one test process
pytestmark = pytest.mark.xdist_group("context-slices")

# --------------------------------------------------------------------------- names and stacking


def test_channel_names_run_from_the_lowest_offset_sequence_by_sequence():
    assert context_names(["t1", "flair"], 0) == ["t1", "flair"]
    assert context_names(["t1", "flair"], 1) == ["t1@-1", "flair@-1", "t1", "flair",
                                                 "t1@+1", "flair@+1"]
    assert context_names(["flair"], 2) == ["flair@-2", "flair@-1", "flair", "flair@+1",
                                           "flair@+2"]
    assert describe(context_names(NAMES, 1)) == (
        "pre-contrast, flair, post-contrast; each with 1 slice on either side")
    assert describe(context_names(NAMES, 2)).endswith("each with 2 slices on either side")
    assert describe(NAMES) == "pre-contrast, flair, post-contrast"
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="whole number"):
            offsets(bad)


def test_end_slices_stand_in_for_neighbours_beyond_the_volume():
    assert clamped_index(4, [1, 2, 3, 10]) == 3  # a gap: the nearest slice
    assert clamped_index(9, [1, 2, 3, 10]) == 10
    assert clamped_index(0, [1, 2, 3]) == 1 and clamped_index(-5, [3, 1, 2]) == 1
    assert clamped_index(11, [1, 2, 10]) == 10
    volume = np.arange(4)[:, None, None, None] * np.ones((4, 2, 2, 1))  # slice k holds k
    stacked = stack_context(volume, 1)
    assert stacked.shape == (4, 2, 2, 3)
    assert stacked[:, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    two = stack_context(np.stack([volume[..., 0]] * 2, axis=-1), 2)  # 2 sequences, k = 2
    assert two.shape == (4, 2, 2, 10)
    assert two[0, 0, 0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    assert np.array_equal(stack_context(volume, 0), volume)


def test_the_slice_flip_reverses_slices_and_keeps_each_slices_sequences():
    image = np.arange(9, dtype=np.float32)[None, None].repeat(2, 0).repeat(2, 1)
    assert reverse_slices(image, 3)[0, 0].tolist() == [6, 7, 8, 3, 4, 5, 0, 1, 2]
    assert np.array_equal(reverse_slices(reverse_slices(image, 3), 3), image)


# --------------------------------------------------------------------------- config and spec


def _lgg_config(root: Path, *extra: str):
    return load_config(overrides=[
        "data.sources=[{format: lgg, root: " + str(root) + "}]", "data.image_size=32",
        "data.channels=3", f"data.channel_names=[{', '.join(NAMES)}]",
        "data.classes=[no_tumor, G2, G3]", "data.context_slices=1", "data.link_copies=false",
        *extra])


def test_config_and_stored_preprocessing(tmp_path):
    config = _lgg_config(tmp_path)
    assert config.data.input_channels == 9 and config.network_spec().channels == 9
    assert config.data.input_names == context_names(NAMES, 1)
    spec = preprocessing_spec(32, 3, [0.5, 99.5], NAMES, 1)
    assert spec["channels"] == 9 and spec["channel_names"] == context_names(NAMES, 1)
    assert sequence_names(spec) == NAMES and context_slices(spec) == 1
    old = {"channels": 3, "channel_names": NAMES}  # a model saved before context slices
    assert sequence_names(old) == NAMES and context_slices(old) == 0
    with pytest.raises(ConfigError, match="needs data.channel_names"):
        load_config(overrides=["data.context_slices=1"])
    with pytest.raises(ConfigError, match="whole number"):
        _lgg_config(tmp_path, "data.context_slices=-1")
    with pytest.raises(ConfigError, match="marks a neighbouring slice"):
        load_config(overrides=["data.channels=2", "data.channel_names=[t1, flair@-1]"])
    with pytest.raises(ConfigError, match="imagenet needs 3 input channels.*gives 9"):
        _lgg_config(tmp_path, "model.encoder_weights=imagenet")
    # a dataset of single images is refused when it is opened, not item by item
    images = load_config(overrides=["data.sources=[{format: phantoms, options: {n: 4}}]",
                                    "data.channels=1", "data.channel_names=[t1]",
                                    "data.context_slices=1"])
    with pytest.raises(ConfigError, match="single images, not slices of volumes"):
        open_sources(images)


# --------------------------------------------------------------------------- the LGG adapter


def _write_volume(folder: Path, indices, tumor_at=(), size: int = 40) -> list[np.ndarray]:
    """One TCGA patient's slices; slice k's FLAIR channel is offset by 3k, so each channel
    says which slice it came from."""
    folder.mkdir(parents=True)
    slices = []
    for index in indices:
        box = (10, 22, 12, 26) if index in tumor_at else None
        image, mask = lgg_slice(100 * len(folder.name) + index, box)
        image[..., 0] = np.uint8(3 * index)  # pre-contrast: the slice number, everywhere
        tifffile.imwrite(folder / f"{folder.name}_{index}.tif", image, photometric="rgb")
        tifffile.imwrite(folder / f"{folder.name}_{index}_mask.tif", mask)
        slices.append(image)
    return slices


def test_lgg_reads_a_slices_neighbours_from_its_volume(tmp_path):
    data = tmp_path / "kaggle_3m"
    _write_volume(data / "TCGA_CS_4941_19960909", (1, 2, 3, 10), tumor_at={2})
    adapter = get_adapter("lgg", tmp_path, keep="tumor")  # neighbours need not be records
    (record,) = adapter.records()
    sample = adapter.load_context(record, 1)
    assert sample["image"].shape == (40, 40, 9)
    assert sample["meta"]["channels"] == context_names(NAMES, 1)
    assert sample["image"][0, 0, [0, 3, 6]].tolist() == [3, 6, 9]  # slices 1, 2, 3
    assert np.array_equal(sample["image"][..., 3:6], adapter.load(record)["image"])
    assert np.array_equal(sample["mask"], adapter.load(record)["mask"])
    everything = {r.extra["slice"]: r for r in get_adapter("lgg", tmp_path).records()}
    wide = get_adapter("lgg", tmp_path)
    assert wide.load_context(everything[1], 2)["image"][0, 0, ::3].tolist() == [3, 3, 3, 6, 9]
    assert wide.load_context(everything[10], 1)["image"][0, 0, ::3].tolist() == [30, 30, 30]
    assert wide.load_context(everything[3], 1)["image"][0, 0, ::3].tolist() == [6, 9, 9]
    one = get_adapter("lgg", tmp_path, channel="flair")
    flair = one.load_context({r.extra["slice"]: r for r in one.records()}[2], 1)
    assert flair["image"].shape == (40, 40, 3)
    assert flair["meta"]["channels"] == ["flair@-1", "flair", "flair@+1"]


def test_a_neighbour_of_another_size_and_datasets_of_single_images_are_refused(tmp_path):
    data = tmp_path / "kaggle_3m"
    folder = data / "TCGA_CS_4941_19960909"
    _write_volume(folder, (1, 2))
    tifffile.imwrite(folder / f"{folder.name}_3.tif", np.zeros((20, 20, 3), np.uint8),
                     photometric="rgb")
    tifffile.imwrite(folder / f"{folder.name}_3_mask.tif", np.zeros((20, 20), np.uint8))
    records = {r.extra["slice"]: r for r in get_adapter("lgg", tmp_path).records()}
    with pytest.raises(DataError, match=r"_3\.tif: slice shape \(20, 20\) differs"):
        get_adapter("lgg", tmp_path).load_context(records[2], 1)
    adapter = get_adapter("phantoms", n=4, size=64)
    with pytest.raises(DataError, match="single images, not slices of volumes"):
        adapter.load_context(adapter.records()[0], 1)


# --------------------------------------------------------------------------- training input


@pytest.fixture(scope="module")
def lgg_volumes(tmp_path_factory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """Ten patients of five slices each (tumor in the middle three), as kaggle_3m ships them."""
    root = tmp_path_factory.mktemp("lgg-volumes")
    data = root / "kaggle_3m"
    rows = ["Patient,neoplasm_histologic_grade"]
    volumes = {}
    for p in range(10):
        folder = f"TCGA_XX_{1000 + p}_20000101"
        volumes[folder] = _write_volume(data / folder, range(1, 6), tumor_at={2, 3, 4})
        rows.append(f"TCGA_XX_{1000 + p},{1 + p % 2}")
    (data / "data.csv").write_text("\n".join(rows) + "\n")
    return root, volumes


def test_the_training_input_is_the_volume_stacked_as_inference_stacks_it(lgg_volumes):
    root, volumes = lgg_volumes
    config = _lgg_config(root)
    (source,) = open_sources(config)
    encoder = SampleEncoder(config, augment=False)
    record = source.records[0]  # slice 1: its lower neighbour is itself
    folder = record.extra["folder"]
    stacked = stack_context(np.stack(volumes[folder]), 1)
    for i in range(5):
        prepared = encoder.prepare(source.load(source.records[i]), source)
        expected, _info = prepare_image(stacked[i], encoder.spec)
        np.testing.assert_allclose(prepared.image, expected, atol=1e-6)
    # the slice-order flip: seeded, about half the items, each one's slices reversed
    flips = SampleEncoder(_lgg_config(root, "data.augment.affine=0", "data.augment.hflip=0",
                                      "data.augment.brightness_contrast=0",
                                      "data.augment.distortion=0"), augment=True)
    prepared = flips.prepare(source.load(source.records[2]), source)
    flipped = 0
    for seed in range(40):
        image, *_ = flips.finish(prepared, seed)
        again, *_ = flips.finish(prepared, seed)
        assert np.array_equal(image, again)
        if np.array_equal(image, prepared.image):
            continue
        np.testing.assert_allclose(image, reverse_slices(prepared.image, 3))
        flipped += 1
    assert 10 <= flipped <= 30
    never = SampleEncoder(_lgg_config(root, "data.augment.slice_flip=0"), augment=True)
    assert never.slice_flip == 0


# --------------------------------------------------------------------------- end to end


TINY_NET = ("model.decoder_filters=[8,8,8,8,8]", "model.head_units=8")


@pytest.fixture(scope="module")
def single_slice_model(lgg_volumes, tmp_path_factory) -> Path:
    """A tiny (untrained, seeded) 32-px LGG model of single slices, saved."""
    import warnings

    import keras

    from mtl.train import build_model

    root, _volumes = lgg_volumes
    keras.utils.set_random_seed(5)
    model = build_model(_lgg_config(root, "data.context_slices=0", *TINY_NET))
    path = tmp_path_factory.mktemp("single") / "single.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    return path


def test_widening_keeps_what_the_single_slice_model_computes(single_slice_model, lgg_volumes):
    """A 2.5-D model started from a single-slice one (train.init_from) gives, before any
    training, the single-slice model's outputs: the neighbours enter through zero weights."""
    import keras

    from mtl.infer.predict import Predictor
    from mtl.model.warm_start import warm_start, widen
    from mtl.train import build_model

    kernel = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    wide = widen(kernel, (2, 2, 9, 4), 3, 3)
    assert np.array_equal(wide[:, :, 3:6], kernel) and not wide[:, :, :3].any()
    assert not wide[:, :, 6:].any()
    assert widen(np.array([1.0, 2, 3]), (9,), 3, 3).tolist() == [1, 2, 3] * 3
    assert widen(np.ones((3, 3)), (3, 9), 3, 3) is None

    root, volumes = lgg_volumes
    source = keras.models.load_model(single_slice_model)
    target = build_model(_lgg_config(root, *TINY_NET))
    done = warm_start(target, source)
    assert done["slices"] == 3 and done["widened"]  # the input convolution, its statistics
    before = Predictor(target)
    single = Predictor(source)
    volume = np.stack(volumes[sorted(volumes)[0]])
    a = before.predict(stack_context(volume, 1))
    b = single.predict(volume)
    np.testing.assert_allclose(a.presence, b.presence, atol=1e-5)
    np.testing.assert_allclose(a.type_probs, b.type_probs, atol=1e-5)
    np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)


def test_a_model_that_cannot_start_the_run_is_refused_before_a_run_folder(
        single_slice_model, lgg_volumes, tmp_path):
    from mtl.model.warm_start import WarmStartError
    from mtl.train import train

    root, _volumes = lgg_volumes
    runs = tmp_path / "runs"
    cases = [
        (["data.classes=[no_tumor, G2, G3, G4]"], "another network.*classes"),
        (["model.head_units=16"], "another network.*head_units: 8 there, 16 here"),
        (["data.channel_names=[flair, pre-contrast, post-contrast]"], "the model reads"),
    ]
    for extra, message in cases:
        config = _lgg_config(root, *TINY_NET, f"train.runs_dir={runs}",
                             f"train.init_from={single_slice_model}", *extra)
        with pytest.raises(WarmStartError, match=message):
            train(config, verbose=0)
    missing = _lgg_config(root, *TINY_NET, f"train.runs_dir={runs}",
                          f"train.init_from={tmp_path / 'nothing'}")
    with pytest.raises(WarmStartError, match="not found"):
        train(missing, verbose=0)
    assert not runs.exists() or not any(runs.iterdir())


def test_a_model_whose_run_trained_on_this_runs_test_items_is_refused(
        single_slice_model, lgg_volumes, tmp_path):
    """The model's run folder says (splits.json) what it trained on: a run whose validation or
    test items are among them is refused, its scores would not be honest."""
    import shutil

    root, volumes = lgg_volumes
    folder = tmp_path / "other-run"
    folder.mkdir()
    shutil.copy(single_slice_model, folder / "best.keras")
    every = [f"{f}_{k}" for f in volumes for k in range(1, 6)]
    (folder / "splits.json").write_text(json.dumps({"lgg": {
        "format": "lgg", "root": str(root), "patients": {},
        "case_ids": {"train": every, "val": [], "test": []}}}))
    config = _lgg_config(root, *TINY_NET, f"train.runs_dir={tmp_path / 'runs'}",
                         f"train.init_from={folder}",
                         "data.split={train: 0.6, val: 0.2, test: 0.2}")
    from mtl.train import train

    with pytest.raises(WarmStartError, match=r"trained on 4 patient\(s\) of this run's "
                                             "validation and test splits"):
        train(config, verbose=0)  # two val and two test patients
    assert not any((tmp_path / "runs").iterdir())  # the refused run left no folder
    # one slice of each patient trained on counts for the whole patient
    one_each = [f"{f}_3" for f in volumes]
    (folder / "splits.json").write_text(json.dumps({"lgg": {
        "format": "lgg", "root": str(root), "patients": {},
        "case_ids": {"train": one_each, "val": [], "test": []}}}))
    with pytest.raises(WarmStartError, match=r"trained on 4 patient\(s\)"):
        train(config, verbose=0)


@pytest.fixture(scope="module")
def context_run(lgg_volumes, single_slice_model, tmp_path_factory):
    """`mtl train` of a tiny 2.5-D LGG model started from the single-slice one
    (train.init_from): one epoch of a 32-px network on the ten patients (split by patient),
    then its run folder."""
    from mtl.train import train

    root, _volumes = lgg_volumes
    runs = tmp_path_factory.mktemp("runs")
    config = _lgg_config(root, "name=ctx", f"train.runs_dir={runs}", "train.epochs=1",
                         "train.batch_size=8", *TINY_NET,
                         f"train.init_from={single_slice_model.parent}",  # a folder: not a run
                         "data.split={train: 0.6, val: 0.2, test: 0.2}")
    with pytest.raises(WarmStartError, match="best.keras"):
        train(config, verbose=0)
    config.train.init_from = str(single_slice_model)
    result = train(config, verbose=0)
    return result.run_dir


def test_a_trained_run_records_its_context_and_evaluate_reads_it(context_run, lgg_volumes):
    import keras

    import mtl.evaluate.evaluation as evaluation
    from mtl.infer.predict import Predictor

    model = keras.models.load_model(context_run / "best.keras")
    pre = model.preprocessing
    assert pre["context_slices"] == 1 and pre["sequences"] == NAMES
    assert pre["channel_names"] == context_names(NAMES, 1) and pre["channels"] == 9
    seen = []
    original = evaluation.predict_split

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    pytest.MonkeyPatch().setattr(evaluation, "predict_split", spy)
    metrics, out = evaluation.evaluate(context_run, split="test", n_resamples=10)
    assert (out / "metrics.json").is_file()
    assert metrics["overall"]["n_items"] == 10 and metrics["overall"]["mask"]["n_tumor"] == 6
    pred = seen[0]
    assert len(pred.case_ids) == 10  # two test patients of five slices
    # what evaluate scored is what the predictor gives for the volume stacked as infer does
    _root, volumes = lgg_volumes
    predictor = Predictor.from_file(context_run / "best.keras")
    folders = sorted({c.rsplit("_", 1)[0] for c in pred.case_ids})
    for folder in folders:
        stacked = stack_context(np.stack(volumes[folder]), 1)
        got = predictor.predict(stacked)
        for k in range(5):
            j = pred.case_ids.index(f"{folder}_{k + 1}")
            assert got.presence[k] == pytest.approx(float(pred.outputs["presence"][j, 0]),
                                                    abs=2e-4)


def test_infer_stacks_a_volumes_neighbours_and_refuses_a_single_image(context_run, lgg_volumes,
                                                                      tmp_path):
    from click.testing import CliRunner

    from mtl.infer.command import infer
    from mtl.infer.predict import Predictor
    from mtl.infer.readers import channel_item, load_case
    from mtl.infer.runner import InferOptions, run

    root, volumes = lgg_volumes
    folder = sorted(volumes)[0]
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    files = {}
    for c, name in enumerate(NAMES):
        volume = np.stack([s[..., c] for s in volumes[folder]], axis=-1).astype(np.int16)
        files[name] = save_nifti(tmp_path / f"{folder}_{name}.nii.gz", volume, affine)
    item = channel_item([(n, files[n]) for n in NAMES], NAMES)
    plain = load_case(item, channels=NAMES)
    wide = load_case(item, channels=NAMES, context=1)
    assert wide.channel_names == tuple(context_names(NAMES, 1))
    assert wide.display_name == "flair"
    np.testing.assert_array_equal(wide.slices, stack_context(plain.slices, 1))

    model = context_run / "best.keras"
    args = [str(model), "--out", str(tmp_path / "out"), "--no-progress", "--overlay"]
    for name in NAMES:
        args += ["--input", f"{name}={files[name]}"]
    result = CliRunner().invoke(infer, args)
    assert result.exit_code == 0, result.output
    (record_path,) = (tmp_path / "out").glob("*/findings.json")
    record = json.loads(record_path.read_text())
    assert record["input"]["channels"] == context_names(NAMES, 1)
    assert record["input"]["n_slices"] == 5
    assert (record_path.parent / "mask.nii.gz").is_file()

    # one 3-channel slice as the dataset ships it: no neighbours, refused with what to give
    tif = next((root / "kaggle_3m" / folder).glob("*_3.tif"))
    predictor = Predictor.from_file(model)
    outcome = run(predictor, [tif], tmp_path / "single", InferOptions())
    (failure,) = outcome.failures
    assert "a single 2-D image" in failure.error
    assert "1 slice on either side" in failure.error
    assert "--input flair=FILE" in failure.error


def test_pictures_show_the_slice_itself_and_one_slice_volumes_are_refused(tmp_path):
    """Without a sequence named FLAIR the overlays show the first sequence of the slice itself
    (never a neighbour); a volume of one slice holds no neighbours and is refused."""
    from mtl.evaluate.healthy import HealthyVolumeError, check_grey_model
    from mtl.infer.channels import overlay_index
    from mtl.infer.predict import Predictor
    from mtl.infer.readers import InputError, channel_item, load_case

    assert overlay_index(["t1", "t2"], 1) == 2 and overlay_index(NAMES, 1) == 4
    assert overlay_index(NAMES, 0) == 1 and overlay_index(None, 2) == 0
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    files = {n: save_nifti(tmp_path / f"{n}.nii.gz",
                           rng.integers(0, 200, (40, 40, 4)).astype(np.int16), affine)
             for n in ("t1", "t2")}
    case = load_case(channel_item(list(files.items()), ["t1", "t2"]), channels=["t1", "t2"],
                     context=1)
    assert case.display_name == "t1" and case.channel_names[case.display_channel] == "t1"
    np.testing.assert_array_equal(case.shown_slices(), case.slices[..., 2])
    thin = {n: save_nifti(tmp_path / f"thin_{n}.nii.gz",
                          rng.integers(0, 200, (40, 40, 1)).astype(np.int16), affine)
            for n in ("t1", "t2")}
    with pytest.raises(InputError, match="a volume of one slice"):
        load_case(channel_item(list(thin.items()), ["t1", "t2"]), channels=["t1", "t2"],
                  context=1)
    one = Predictor(forward=lambda x: {}, classes=["no_tumor", "glioma"],
                    preprocessing=preprocessing_spec(32, 1, [0.5, 99.5], ["t1"], 1))
    with pytest.raises(HealthyVolumeError, match="neighbouring slice"):
        check_grey_model(one)


def test_the_warm_start_benchmark_compares_the_two_models_on_a_volume(single_slice_model,
                                                                      lgg_volumes, tmp_path):
    """benchmarks/warm_start_check.py (the README's figure for the real model) on the tiny one."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: benchmarks/
    from benchmarks.warm_start_check import main

    root, _volumes = lgg_volumes
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_lgg_config(root, "data.context_slices=0", *TINY_NET)
                                     .to_dict()))
    out = tmp_path / "check.json"
    result = main(["--model", str(single_slice_model), "--config", str(config), "--lgg",
                   str(root), "--patient", "1", "--slices", "1:4", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["slices"] == 3 and "conv0/kernel" in result["widened_weights"]
    assert max(result["max_abs_difference"].values()) < 1e-4
    assert result["mask_pixels_that_differ"] == 0


# --------------------------------------------------------------------------- ensembles


def test_evaluate_scores_an_ensemble_of_the_single_slice_and_the_2_5d_model(
        context_run, single_slice_model, lgg_volumes, tmp_path, caplog):
    """``mtl evaluate RUN --ensemble MODEL``: the run's split, scored on the mean of both
    models (a single-slice member among 2.5-D ones); the run's card is left alone; a member
    whose run trained on a patient of the split is refused."""
    import logging
    import shutil

    import mtl.evaluate.evaluation as evaluation
    from mtl.config import ConfigError
    from mtl.model.card import read_card

    from mtl.infer.predict import Predictor
    from mtl.model.ensemble import load_ensemble

    card_before = read_card(context_run / "best.keras")
    seen = []
    original = evaluation.predict_split

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(evaluation, "predict_split", spy)
    with caplog.at_level(logging.WARNING, logger="mtl"):
        result, out = evaluation.evaluate(context_run, split="test", n_resamples=0,
                                          ensemble=[single_slice_model],
                                          out=tmp_path / "eval-ensemble")
    monkeypatch.undo()
    # what was scored is the ensemble's prediction of each test volume, as infer makes it
    _root, volumes = lgg_volumes
    pred = seen[0]
    both = Predictor(load_ensemble([context_run / "best.keras", single_slice_model]))
    alone = Predictor.from_file(context_run / "best.keras")
    differs = False
    for folder in sorted({c.rsplit("_", 1)[0] for c in pred.case_ids}):
        stacked = stack_context(np.stack(volumes[folder]), 1)
        got, own = both.predict(stacked), alone.predict(stacked)
        for k in range(5):
            j = pred.case_ids.index(f"{folder}_{k + 1}")
            assert got.presence[k] == pytest.approx(float(pred.outputs["presence"][j, 0]),
                                                    abs=2e-4)
            differs |= abs(float(own.presence[k]) - float(got.presence[k])) > 1e-3
    assert differs  # the member counted
    assert "no splits.json beside it" in caplog.text
    assert result["ensemble"] == [str(context_run / "best.keras"), str(single_slice_model)]
    assert result["overall"]["n_items"] == 10
    assert result["model_card"].startswith("ensemble of 2 models")
    assert "model_card_updated" not in result
    assert read_card(context_run / "best.keras") == card_before
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Evaluation of an ensemble: {context_run / 'best.keras'} + "
                             f"{single_slice_model}")
    assert "- ensemble:" in report and "T per member" in report

    # a member trained on the test patients of this run: refused, nothing scored
    leaky = tmp_path / "leaky-run"
    leaky.mkdir()
    shutil.copy(single_slice_model, leaky / "best.keras")
    saved = json.loads((context_run / "splits.json").read_text())
    test_ids = [c for entry in saved.values() for c in entry["case_ids"]["test"]]

    def member_used(train: list[str], val: list[str]) -> None:
        """The member's splits.json: which patients its run trained and validated on."""
        (leaky / "splits.json").write_text(json.dumps({"lgg": {
            "format": "lgg", "root": "elsewhere", "patients": {},
            "case_ids": {"train": train, "val": val, "test": []}}}))

    member_used(test_ids[:1], [])
    with pytest.raises(ConfigError, match=r"trained or validated on 1 patient\(s\) of the "
                                          "split scored here"):
        evaluation.evaluate(context_run, split="test", n_resamples=0, ensemble=[leaky],
                            out=tmp_path / "refused")
    assert not (tmp_path / "refused" / "metrics.json").exists()
    # a member that chose its weights on a test patient (its validation split): refused too
    member_used([], test_ids[-1:])
    with pytest.raises(ConfigError, match="trained or validated on 1 patient"):
        evaluation.evaluate(context_run, split="test", n_resamples=0, ensemble=[leaky])
    # ... while its validation split, which it never saw, is scored
    evaluation.evaluate(context_run, split="val", n_resamples=0, ensemble=[leaky],
                        out=tmp_path / "val")
    # a replicate of the run (its own validation split): averaged on val to pick a gate, as
    # the run itself chose its epoch there; a member that trained on a val patient is not
    val_ids = [c for entry in saved.values() for c in entry["case_ids"]["val"]]
    member_used([], val_ids)
    assert evaluation.evaluate(context_run, split="val", n_resamples=0, ensemble=[leaky],
                               out=tmp_path / "val-replicate")[0]["overall"]["n_items"] > 0
    member_used(val_ids[:1], [])
    with pytest.raises(ConfigError, match=r"its run trained on 1 patient\(s\) of the split"):
        evaluation.evaluate(context_run, split="val", n_resamples=0, ensemble=[leaky])


def test_infer_runs_an_ensemble_and_refuses_grad_cam_of_one(context_run, single_slice_model,
                                                            lgg_volumes, tmp_path):
    from click.testing import CliRunner

    from mtl.infer.command import infer

    _root, volumes = lgg_volumes
    folder = sorted(volumes)[0]
    files = []
    for c, name in enumerate(NAMES):
        volume = np.stack([s[..., c] for s in volumes[folder]], axis=-1).astype(np.int16)
        path = save_nifti(tmp_path / f"{folder}_{name}.nii.gz", volume, np.eye(4))
        files += ["--input", f"{name}={path}"]
    base = [str(single_slice_model), *files, "--ensemble", str(context_run), "--no-progress"]
    result = CliRunner().invoke(infer, [*base, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 models, outputs averaged" in result.output
    (record_path,) = (tmp_path / "out").glob("*/findings.json")
    record = json.loads(record_path.read_text())
    assert record["input"]["channels"] == context_names(NAMES, 1)  # the widest member's input
    assert "ensemble of 2 models" in json.dumps(record)
    refused = CliRunner().invoke(infer, [*base, "--explain", "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "Grad-CAM of one network" in refused.output
    missing = CliRunner().invoke(infer, [*base, "--ensemble", str(tmp_path / "none.keras"),
                                         "--out", str(tmp_path / "y")])
    assert missing.exit_code == 2 and "none.keras: not found" in missing.output
