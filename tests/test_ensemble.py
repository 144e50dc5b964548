"""Ensembles (``--ensemble``, :mod:`mtl.model.ensemble`): the mean of the members' outputs,
each member fed the slices it reads, members that read different inputs refused, and the card
line. The end-to-end runs (evaluate, infer) are in ``test_context_slices.py``, beside the tiny
2.5-D run they use. Every model here is built by the test (tiny, untrained, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.model.card import DEMO_WARNING, card_line, is_demo, provenance
from mtl.model.ensemble import Ensemble, EnsembleError, check_members, mean_outputs, member_file
from test_context_slices import TINY_NET, _lgg_config


def _model(tmp_path, seed: int, *extra: str):
    import keras

    from mtl.train import build_model

    keras.utils.set_random_seed(seed)
    return build_model(_lgg_config(tmp_path, *TINY_NET, *extra))


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A 2.5-D model (one neighbour per side) and a single-slice one of the same sequences."""
    root = tmp_path_factory.mktemp("ensemble")
    return _model(root, 1), _model(root, 2, "data.context_slices=0")


def test_each_member_reads_its_own_slices_and_the_outputs_are_averaged(members):
    from mtl.model.inference import compiled_forward

    wide, single = members
    ensemble = Ensemble([single, wide], ["single.keras", "wide.keras"])
    assert ensemble.preprocessing == wide.preprocessing  # the widest input
    assert ensemble.preprocessing["channels"] == 9 and ensemble.classes == wide.classes
    assert ensemble.channel_window(single) == slice(3, 6)  # the middle slice's 3 sequences
    assert ensemble.channel_window(wide) == slice(0, 9)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 9)).astype(np.float32)
    got = compiled_forward(ensemble, 32, 9, jit_compile=False)(x)
    a = compiled_forward(wide, 32, 9, jit_compile=False)(x)
    b = compiled_forward(single, 32, 3, jit_compile=False)(np.ascontiguousarray(x[..., 3:6]))
    for key in ("presence", "type", "mask", "presence_uncalibrated", "type_uncalibrated"):
        np.testing.assert_allclose(got[key], (a[key] + b[key]) / 2, atol=1e-6)
    assert not np.allclose(a["mask"], b["mask"])  # two different networks, so the mean counts
    # the logits are those of the mean probabilities
    np.testing.assert_allclose(1 / (1 + np.exp(-got["presence_logit"])),
                               got["presence_uncalibrated"], atol=1e-5)
    e = np.exp(got["type_logits"])
    np.testing.assert_allclose(e / e.sum(-1, keepdims=True), got["type_uncalibrated"], atol=1e-5)
    with pytest.raises(ValueError, match="reads 9 channels"):
        ensemble.compiled_forward(32, 3)
    # no one temperature describes the mean: each member's is recorded, and applied to its own
    assert [m["presence_temperature"] for m in ensemble.calibration["ensemble"]] == [1.0, 1.0]
    assert provenance(ensemble)["calibration"]["members"][1]["path"] == "wide.keras"


def test_the_predictor_runs_an_ensemble_on_a_stacked_volume(members):
    from mtl.data.context import stack_context
    from mtl.infer.predict import Predictor

    wide, single = members
    volume = np.random.default_rng(1).integers(0, 255, (4, 40, 40, 3)).astype(np.float32)
    both = Predictor(Ensemble([wide, single], ["w.keras", "s.keras"]), jit_compile=False)
    got = both.predict(stack_context(volume, 1))
    a = Predictor(wide, jit_compile=False).predict(stack_context(volume, 1))
    b = Predictor(single, jit_compile=False).predict(volume)
    np.testing.assert_allclose(got.presence, (a.presence + b.presence) / 2, atol=1e-5)
    np.testing.assert_allclose(got.prob, (a.prob + b.prob) / 2, atol=1e-5)


def test_members_that_read_different_inputs_are_refused(members, tmp_path):
    wide, single = members
    cases = [
        (("data.classes=[no_tumor, G3, G2]",), r"classes \['no_tumor', 'G3', 'G2'\].*same order"),
        (("data.image_size=64",), "image_size=64"),
        (("data.channel_names=[flair, pre-contrast, post-contrast]",), "sequences="),
        (("data.intensity_percentiles=[1.0, 99.0]",), "intensity_percentiles="),
    ]
    for extra, message in cases:
        other = _model(tmp_path, 3, *extra)
        with pytest.raises(EnsembleError, match=message):
            check_members([wide, other], ["a.keras", "b.keras"])
    with pytest.raises(EnsembleError, match="at least two"):
        Ensemble([wide], ["a.keras"])
    with pytest.raises(ValueError, match="one path per member"):
        Ensemble([wide, single], ["a.keras"])
    with pytest.raises(EnsembleError, match="not found"):
        member_file(tmp_path / "missing.keras")
    with pytest.raises(EnsembleError, match="has no best.keras"):
        member_file(tmp_path)
    (tmp_path / "best.keras").write_bytes(b"")
    assert member_file(tmp_path) == tmp_path / "best.keras"


def test_the_card_line_names_each_member_and_a_demo_member_shows():
    real = {"training_data": {"datasets": [{"format": "lgg", "name": "lgg"}],
                              "items": {"train": 7, "val": 2, "test": 3}},
            "metrics": {"split": "test", "values": {"dice": 0.795}}, "mtl_version": "0.1",
            "created": "2026-11-30"}
    demo = {**real, "demo": True}
    card = {"ensemble": [{"path": "runs/a/best.keras", "card": real},
                         {"path": "runs/b/best.keras", "card": None}]}
    line = card_line(card)
    assert line.startswith("ensemble of 2 models, outputs averaged: a/best.keras: trained on lgg")
    assert "Dice 0.795" in line and "b/best.keras: no model card" in line
    assert not is_demo(card)
    card["ensemble"][1]["card"] = demo
    assert is_demo(card) and card_line(card).startswith(DEMO_WARNING + "; ensemble of 2")
    # the warning once, each demo member marked after its name
    card["ensemble"][0]["card"] = demo
    line = card_line(card)
    assert line.count(DEMO_WARNING) == 1
    assert "a/best.keras (demo): trained on lgg" in line and "b/best.keras (demo): " in line

    class Fake:
        calibration = None

    Fake.card = card
    assert provenance(Fake())["demo"] is True


def test_mean_outputs_keeps_only_what_every_member_gives():
    a = {"presence": np.array([[0.2]]), "type": np.array([[0.5, 0.5]]),
         "mask": np.zeros((1, 2, 2, 1))}
    b = {"presence": np.array([[0.6]]), "type": np.array([[0.1, 0.9]]),
         "mask": np.ones((1, 2, 2, 1)), "presence_uncalibrated": np.array([[0.6]])}
    out = mean_outputs([a, b])
    assert set(out) == {"presence", "type", "mask"}
    np.testing.assert_allclose(out["presence"], [[0.4]])
    np.testing.assert_allclose(out["type"], [[0.3, 0.7]])
    np.testing.assert_allclose(out["mask"], 0.5)
