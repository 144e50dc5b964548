"""mtl.infer.predict and gradcam: geometry back to each slice, TTA, post-processing, real model."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.infer.predict import ModelError, Predictor, keep_largest_component, load_model
from test_infer_support import (  # noqa: F401 - tiny_model_path is a fixture
    CLASSES,
    PREPROCESSING,
    TUMOR,
    fake_forward,
    head_volume,
    tiny_model_path,
    tumor_image,
)


def _predictor(forward=fake_forward, **kw) -> Predictor:
    return Predictor(forward=forward, preprocessing=PREPROCESSING, classes=CLASSES, **kw)


def intensity_forward(x):
    """Mask probability = the input intensity (a blurred copy of the bright tumor)."""
    out = fake_forward(x)
    out["mask"] = np.asarray(x)[..., :1]
    return out


def test_mask_comes_back_at_the_slice_size_exactly_when_only_padded():
    image = tumor_image(48, 64, (10, 20, 30, 45))  # letterboxed by padding rows only
    truth = np.zeros((48, 64), np.uint8)
    truth[10:20, 30:45] = 1
    pred = _predictor().predict(image[None])
    assert pred.mask.shape == (1, 48, 64) and pred.mask.dtype == np.uint8
    assert np.array_equal(pred.mask[0], truth)
    assert pred.presence.tolist() == pytest.approx([0.9])
    assert pred.letterboxes[0].pad_top == 8


@pytest.mark.parametrize("shape, box", [((100, 80), (30, 50, 20, 40)),
                                        ((37, 150), (5, 20, 100, 130)),
                                        ((300, 260), (100, 160, 30, 90))])
def test_mask_geometry_survives_letterbox_and_resize(shape, box):
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 50).astype(np.uint8)
    r0, r1, c0, c1 = box
    image[r0:r1, c0:c1] = 250
    truth = np.zeros(shape, bool)
    truth[r0:r1, c0:c1] = True
    mask = _predictor(intensity_forward).predict(image[None]).mask[0] > 0
    assert mask.shape == shape
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95


def test_flip_tta_averages_with_the_unflipped_prediction_of_the_mirrored_input():
    def left_half(x):
        n, s = len(x), x.shape[1]
        mask = np.zeros((n, s, s, 1), np.float32)
        mask[:, :, : s // 2] = 1.0  # always the left half, whatever the input
        presence = np.asarray(x)[:, :, : s // 2].mean(axis=(1, 2, 3))[:, None]
        return {"presence": presence, "type": np.tile([0.25] * 4, (n, 1)), "mask": mask}

    image = np.zeros((64, 64), np.uint8)
    image[:, :20] = 200  # bright on the left
    image[0, 63] = 1
    plain = _predictor(left_half).predict(image[None])
    tta = _predictor(left_half, tta=True).predict(image[None])
    assert plain.mask[0, :, :32].all() and not plain.mask[0, :, 32:].any()
    assert np.allclose(tta.prob, 0.5)  # left half (plain) + right half (mirrored back) / 2
    x_presence = plain.presence[0]
    flipped = _predictor(left_half).predict(image[None, :, ::-1]).presence[0]
    assert tta.presence[0] == pytest.approx((x_presence + flipped) / 2)
    # a flip-equivariant network gives the same mask with and without TTA
    asym = tumor_image(48, 64, (10, 20, 40, 55))
    assert np.array_equal(_predictor(tta=True).predict(asym[None]).mask,
                          _predictor().predict(asym[None]).mask)


def test_keep_largest_component_2d_and_3d():
    image = tumor_image(48, 64, (10, 20, 10, 25))
    image[30:34, 45:49] = 130  # a smaller second blob
    assert _predictor().predict(image[None]).mask.sum() == 150 + 16
    assert _predictor(largest_component=True).predict(image[None]).mask.sum() == 150
    vol = np.zeros((3, 10, 10), np.uint8)
    vol[0:3, 1:3, 1:3] = 1  # 12 voxels connected across slices
    vol[1, 5:8, 5:8] = 1  # 9 voxels, the biggest single-slice blob
    kept = keep_largest_component(vol)
    assert kept.sum() == 12 and kept[1, 5:8, 5:8].sum() == 0
    assert keep_largest_component(np.zeros((4, 4))).sum() == 0


def test_constant_slices_are_not_run_and_batches_are_used():
    calls = []

    def counting(x):
        calls.append(len(x))
        return fake_forward(x)

    vol = np.moveaxis(head_volume((48, 64, 10)), 2, 0).copy()
    vol[0] = 0
    vol[9] = 5
    vol[4, 20:30, 10:20] = TUMOR
    pred = _predictor(counting, batch_size=3).predict(vol)
    assert pred.evaluated.tolist() == [False] + [True] * 8 + [False]
    assert np.isnan(pred.presence[[0, 9]]).all() and not pred.mask[[0, 9]].any()
    assert calls == [3, 3, 2]
    assert pred.mask[4, 20:30, 10:20].all() and pred.mask.sum() == 100
    calls.clear()
    _predictor(counting, batch_size=8, tta=True).predict(vol[1:3])
    assert calls == [2, 2]
    with pytest.raises(ValueError, match="constant"):
        _predictor().predict(np.zeros((2, 16, 16)))


def test_predictor_checks_its_settings():
    with pytest.raises(ValueError):
        _predictor(threshold=1.0)
    with pytest.raises(ValueError):
        Predictor(forward=fake_forward)


def test_real_model_loads_once_and_predicts_in_the_input_geometry(tiny_model_path, tmp_path):
    predictor = Predictor.from_file(tiny_model_path, batch_size=2, tta=True)
    assert predictor.classes == CLASSES and predictor.preprocessing["image_size"] == 64
    image = tumor_image(100, 80, (30, 50, 20, 40))
    pred = predictor.predict(np.stack([image, image[::-1]]))
    assert pred.prob.shape == (2, 100, 80) and pred.mask.shape == (2, 100, 80)
    assert 0 <= pred.prob.min() and pred.prob.max() <= 1
    assert np.allclose(pred.type_probs.sum(1), 1, atol=1e-4)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="bad.keras"):
        load_model(bad)


def test_network_runs_as_one_graph_equal_to_the_eager_model_for_any_batch_size(tiny_model_path):
    """The predictor's traced graphs give the eager model's outputs; a large batch runs in the
    plain graph and small ones (a partial batch, one slice) in the XLA graph, each traced once
    for every batch size (no retracing per partial batch)."""
    from mtl.model.inference import XLA_BELOW_BATCH

    size = XLA_BELOW_BATCH + 1
    predictor = Predictor.from_file(tiny_model_path, batch_size=size)
    x = np.random.default_rng(0).random((size + 2, 64, 64, 1)).astype(np.float32)
    out = predictor.run_network(x)  # a batch for the plain graph, then 2 slices for XLA
    single = predictor.run_network(x[:1])
    eager = {k: np.asarray(v) for k, v in predictor.model(x, training=False).items()}
    n = len(x)
    for key, shape in (("presence", (n,)), ("type", (n, 4)), ("mask", (n, 64, 64))):
        np.testing.assert_allclose(out[key], eager[key].reshape(shape), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(single["mask"][0], out["mask"][0], rtol=1e-4, atol=1e-5)
    assert predictor._graph.graph.experimental_get_tracing_count() == 1
    assert predictor._graph.xla_graph.experimental_get_tracing_count() == 1


def test_warm_up_compiles_the_one_slice_path_before_any_request(tiny_model_path):
    predictor = Predictor.from_file(tiny_model_path)
    predictor.warm_up()
    assert predictor._graph.xla_graph.experimental_get_tracing_count() == 1
    predictor.run_network(np.random.default_rng(0).random((1, 64, 64, 1), dtype=np.float32))
    assert predictor._graph.xla_graph.experimental_get_tracing_count() == 1  # no new trace


def test_gradcam_maps_are_at_slice_size_and_in_unit_range(tiny_model_path):
    from mtl.infer.gradcam import GradCam

    cam = GradCam(load_model(tiny_model_path))
    slices = [tumor_image(100, 80, (30, 50, 20, 40)), tumor_image(48, 64, (5, 15, 5, 15))]
    maps = cam.slice_maps(slices, class_index=1)
    assert [m.shape for m in maps] == [(100, 80), (48, 64)]
    assert all(np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 for m in maps)


def _presence_forward(p: float):
    def forward(x):
        out = fake_forward(x)
        out["presence"] = np.full((len(x), 1), p, np.float32)
        return out
    return forward


def test_mask_rule_presence_withholds_the_mask_of_slices_called_tumor_free():
    image = tumor_image(48, 64, (10, 20, 30, 45))
    unsure = _predictor(_presence_forward(0.3)).predict(image[None])
    assert unsure.mask.sum() == 0 and unsure.withheld.tolist() == [150]
    assert unsure.presence.tolist() == pytest.approx([0.3])  # probabilities are untouched
    shown = _predictor(_presence_forward(0.3), mask_rule="independent").predict(image[None])
    assert shown.mask.sum() == 150 and shown.withheld.tolist() == [0]
    sure = _predictor(_presence_forward(0.7)).predict(image[None])
    assert sure.mask.sum() == 150 and sure.withheld.tolist() == [0]
    # the presence threshold decides, not the mask threshold
    strict = _predictor(_presence_forward(0.7), presence_threshold=0.8).predict(image[None])
    assert strict.mask.sum() == 0
    assert _predictor(_presence_forward(0.7)).predict(image[None], presence_threshold=0.8
                                                     ).mask.sum() == 0
    with pytest.raises(ValueError, match="mask_rule"):
        _predictor(mask_rule="sometimes")


def test_mask_rule_applies_slice_by_slice_in_a_volume():
    from mtl.infer.predict import apply_mask_rule

    mask = np.ones((3, 4, 4), np.uint8)
    out, withheld = apply_mask_rule(mask, np.array([0.9, 0.2, np.nan]), "presence", 0.5)
    assert out.reshape(3, -1).sum(1).tolist() == [16, 0, 0]
    assert withheld.tolist() == [0, 16, 16]
