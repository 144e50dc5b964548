"""Model provenance: the card a ``.keras`` file written by ``mtl train`` carries, and where it
shows (``mtl infer``'s terminal, findings.json, the overlay footer, the server's JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtl.infer.predict import Predictor, load_model
from mtl.model.card import (
    DEMO_WARNING, NO_CARD, card_line, read_card, read_model_config, training_card,
    update_model_config,
)
from test_infer_support import invoke_infer as _infer
from test_infer_support import save_png, tiny_model_path, tumor_image  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def phantom_run(tiny_phantom_run):
    """A tiny model trained on phantoms only (the suite's shared run, see conftest.py)."""
    return tiny_phantom_run.run_dir


def test_trained_model_files_carry_the_card(phantom_run):
    summary = json.loads((phantom_run / "data_summary.json").read_text())["phantoms"]["splits"]
    counts = {split: v["items"] for split, v in summary.items()}
    state = json.loads((phantom_run / "state.json").read_text())
    epoch_of = {"best.keras": state["best_epoch"], "last.keras": state["epoch"]}
    for name in ("best.keras", "last.keras"):
        card = read_card(phantom_run / name)
        assert card is not None, name
        assert card["demo"] is True and card["warning"] == DEMO_WARNING
        assert DEMO_WARNING in card["intended_use"]
        assert card["training_data"]["datasets"] == [
            {"name": "phantoms", "format": "phantoms", "items": counts}]
        assert card["training_data"]["items"] == counts
        assert card["mtl_version"] and card["created"][:2] == "20"
        assert "git_commit" in card  # the commit, or None outside a checkout
        assert card["metrics"]["split"] == "val" and card["metrics"]["epoch"] == epoch_of[name]
        assert set(card["metrics"]["values"]) == {"presence_accuracy", "type_accuracy", "dice"}
        assert card["classes"] == ["no_tumor", "glioma", "meningioma", "pituitary"]
    model = load_model(phantom_run / "best.keras")  # the card survives loading
    assert model.card["training_data"]["items"] == counts
    line = card_line(model.card)
    assert line.startswith("model: " + DEMO_WARNING)
    assert f"{counts['train']}/{counts['val']}/{counts['test']} items" in line
    assert "val: presence acc" in line
    dice = model.card["metrics"]["values"]["dice"]
    assert f"Dice {dice:.3f}" in line  # three decimals: 0.795 is not shown as 0.80


def test_demo_flag_needs_every_dataset_synthetic():
    split = {"splits": {"train": {"items": 3}, "val": {"items": 1}, "test": {"items": 1}}}
    mixed = training_card("x", {"phantoms": split, "br35h": split},
                          {"phantoms": "phantoms", "br35h": "br35h"}, ["no_tumor", "glioma"])
    assert mixed["demo"] is False and mixed["warning"] is None
    assert DEMO_WARNING not in card_line(mixed)
    assert card_line(None) == NO_CARD


def test_card_update_keeps_the_weights(phantom_run, tmp_path):
    copy = tmp_path / "m.keras"
    copy.write_bytes((phantom_run / "last.keras").read_bytes())
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
    before = Predictor.from_file(copy).run_network(x)
    update_model_config(copy, card={**read_card(copy), "name": "renamed"})
    assert read_card(copy)["name"] == "renamed"
    assert read_model_config(copy)["calibration"] is not None  # other fields untouched
    after = Predictor.from_file(copy).run_network(x)
    for key in ("presence", "type", "mask"):
        np.testing.assert_array_equal(before[key], after[key])


def test_infer_prints_the_card_and_puts_it_in_findings_and_overlay(phantom_run, tmp_path):
    from PIL import Image

    save_png(tmp_path / "scan.png", tumor_image(64, 64, (20, 30, 20, 34)))
    out = tmp_path / "out"
    result = _infer(phantom_run / "best.keras", tmp_path / "scan.png", "--out", out, "--overlay")
    assert result.exit_code == 0, result.output
    line = card_line(read_card(phantom_run / "best.keras"))
    assert line in result.output.splitlines()
    record = json.loads((out / "scan" / "findings.json").read_text())
    assert record["model"]["card_line"] == line and record["model"]["demo"] is True
    assert record["model"]["card"]["warning"] == DEMO_WARNING
    assert record["model"]["calibration"]["split"] == "val"
    with Image.open(out / "scan" / "overlay.png") as png:
        assert png.text["Model"] == line  # drawn in the footer, kept as the PNG's text


def test_models_without_a_card_say_so(tiny_model_path, tmp_path):
    save_png(tmp_path / "scan.png", tumor_image(64, 64, (20, 30, 20, 34)))
    out = tmp_path / "out"
    result = _infer(tiny_model_path, tmp_path / "scan.png", "--out", out)
    assert result.exit_code == 0, result.output
    assert NO_CARD in result.output.splitlines()
    record = json.loads((out / "scan" / "findings.json").read_text())
    assert record["model"]["card_line"] == NO_CARD and record["model"]["card"] is None


def test_server_json_carries_the_card(phantom_run):
    from fastapi.testclient import TestClient

    from mtl.serve.app import create_app
    from test_serve_support import tumor_png

    app = create_app(Predictor.from_file(phantom_run / "best.keras"))
    try:
        client = TestClient(app)
        info = client.get("/api/info").json()
        assert info["model_card"].startswith("model: " + DEMO_WARNING) and info["demo"] is True
        assert info["model_card_details"]["training_data"]["datasets"][0]["format"] == "phantoms"
        assert info["calibration"]["split"] == "val"
        res = client.post("/predict", files={"file": ("a.png", tumor_png(), "image/png")})
        assert res.status_code == 200, res.text
        assert res.json()["model"]["card_line"] == info["model_card"]
        assert 'id="model-card"' in client.get("/").text
    finally:
        app.state.service.close()
