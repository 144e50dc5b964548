"""Temperature scaling of the presence and type heads: the fit, and the saved model applying it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mtl.model.calibration import (
    fit_calibration, fit_temperature, presence_nll, sigmoid, softmax, type_nll,
)
from mtl.model.inference import with_flip_tta


def _overconfident(n: int, k: int, temperature: float, seed: int = 0):
    """Labels drawn from calibrated logits; the logits a model over-confident by
    ``temperature`` would give (scaled up by it)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < sigmoid(z)).astype(int)
    zk = rng.normal(0.0, 1.5, (n, k))
    yk = np.array([rng.choice(k, p=p) for p in softmax(zk)])
    return z * temperature, y, zk * temperature, yk


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(temperature):
    zp, yp, zt, yt = _overconfident(20000, 4, temperature)
    assert fit_temperature(presence_nll, zp, yp) == pytest.approx(temperature, rel=0.06)
    assert fit_temperature(type_nll, zt, yt) == pytest.approx(temperature, rel=0.06)
    cal = fit_calibration(zp, yp, zt, yt)
    assert cal["presence_temperature"] == pytest.approx(temperature, rel=0.06)
    assert cal["type_temperature"] == pytest.approx(temperature, rel=0.06)
    for head in ("presence", "type"):
        assert cal["nll"][head]["after"] <= cal["nll"][head]["before"]
    assert cal["split"] == "val" and cal["items"] == {"presence": 20000, "type": 20000}


def test_too_few_labelled_items_keep_temperature_one():
    cal = fit_calibration(np.array([3.0, -2.0]), np.array([1, 0]), np.zeros((0, 4)),
                          np.zeros(0, int))
    assert cal["presence_temperature"] == 1.0 and cal["type_temperature"] == 1.0
    assert len(cal["notes"]) == 2


def test_saved_temperature_gives_calibrated_probabilities_after_load(tmp_path):
    from mtl.config import load_config
    from mtl.infer.predict import Predictor
    from mtl.train import build_model

    model = build_model(load_config(overrides=[
        "data.image_size=64", "model.decoder_filters=[16,16,8,8,8]", "model.head_units=8"]))
    x = np.random.default_rng(0).random((3, 64, 64, 1)).astype(np.float32)
    raw = {k: np.asarray(v, np.float64) for k, v in model(x, training=False).items()}
    model.calibration = {"presence_temperature": 3.0, "type_temperature": 0.5, "split": "val"}
    path = tmp_path / "calibrated.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    predictor = Predictor.from_file(path)
    assert predictor.model.calibration["presence_temperature"] == 3.0
    out = predictor.run_network(x)
    logit = np.log(raw["presence"]) - np.log1p(-raw["presence"])
    np.testing.assert_allclose(out["presence"], sigmoid(logit / 3.0).ravel(), atol=2e-5)
    np.testing.assert_allclose(out["type"], softmax(np.log(raw["type"]) / 0.5), atol=2e-5)
    np.testing.assert_allclose(out["mask"], raw["mask"][..., 0], atol=1e-5)  # mask untouched
    # decisions do not move: same arg-max type, same side of 0.5
    assert (out["type"].argmax(1) == raw["type"].argmax(1)).all()
    assert ((out["presence"] > 0.5) == (raw["presence"].ravel() > 0.5)).all()


def test_flip_tta_averages_every_output():
    def forward(x):
        s = x.reshape(len(x), -1)
        return {"presence": s[:, :1], "type": s[:, :2], "presence_logit": s[:, 1:2] * 2,
                "mask": x}

    x = np.arange(8, dtype=np.float32).reshape(1, 2, 4, 1)
    out = with_flip_tta(forward)(x)
    assert set(out) == {"presence", "type", "presence_logit", "mask"}
    mirrored = x[:, :, ::-1].reshape(1, -1)
    assert out["presence_logit"][0, 0] == pytest.approx((x.reshape(-1)[1] + mirrored[0, 1]))


def test_split_passes_compile_xla_only_for_small_batches(monkeypatch):
    """Calibration and evaluation run over a whole split: at 4 slices per batch or more a
    short last batch must not compile XLA (what ``jit_compile="auto"`` does per call); a
    smaller batch size runs through XLA."""
    import mtl.evaluate.predict as evaluation
    import mtl.model.inference as inference
    from mtl.config import load_config
    from mtl.data.pipeline import open_sources
    from mtl.model.calibration import calibrate_on_split
    from mtl.train import build_model

    assert [inference.jit_for_batches(b) for b in (1, 3, 4, 16)] == [True, True, False, False]
    config = load_config(overrides=[
        "data.image_size=64", "model.decoder_filters=[16,16,8,8,8]", "model.head_units=8",
        "data.sources=[{format: phantoms, options: {n: 11, size: 64}}]"])
    sources = open_sources(config)
    sources[0].splits = {"val": list(range(6)), "test": list(range(6, 11))}
    model = build_model(config)
    real, made = inference.compiled_forward, []

    def spy(*args, **kwargs):
        forward = real(*args, **kwargs)
        made.append((kwargs.get("jit_compile", "auto"), forward))
        return forward

    monkeypatch.setattr(inference, "compiled_forward", spy)
    monkeypatch.setattr(evaluation, "compiled_forward", spy)
    calibrate_on_split(model, sources, config, "val", batch_size=4)  # batches of 4 and 2
    pred = evaluation.predict_split(model, sources, config, "test", batch_size=4, progress=False)
    assert len(pred.case_ids) == 5
    assert [jit for jit, _ in made] == [False, False]
    assert all(forward.xla_graph is None for _, forward in made)
    calibrate_on_split(model, sources, config, "val", batch_size=2)
    assert made[-1][0] is True
