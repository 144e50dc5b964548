"""The ``serve`` click command: options, the printed URL, the model loaded once, errors.

The server loop (``run_server``) is replaced by a function that drives the app it was given
through the test client, with the real (tiny, untrained) model file.
"""

from __future__ import annotations

import re
import socket

import pytest
from click.testing import CliRunner

import mtl.infer.predict as predict_module
import mtl.serve.command as command
from mtl.serve.command import serve
from test_infer_support import tiny_model_path  # noqa: F401 - a fixture
from test_serve_support import fake_predictor, tumor_png


def _capture(monkeypatch, drive=None):
    seen = {}

    def fake_run(app, sock, log_level="warning", request_timeout=None):
        seen.update(app=app, port=sock.getsockname()[1], log_level=log_level,
                    request_timeout=request_timeout)
        try:
            if drive:
                drive(app, sock)
        finally:
            app.state.service.close()

    monkeypatch.setattr(command, "run_server", fake_run)
    return seen


def test_serve_prints_its_url_loads_the_model_once_and_answers(tiny_model_path, monkeypatch):
    from fastapi.testclient import TestClient

    loads = []
    real_load = predict_module.load_model
    monkeypatch.setattr(predict_module, "load_model",
                        lambda path: loads.append(path) or real_load(path))
    answers = {}

    def drive(app, sock):
        host, port = sock.getsockname()[:2]
        client = TestClient(app, base_url=f"http://{host}:{port}")
        for name in ("a.png", "b.png"):
            res = client.post("/predict", files={"file": (name, tumor_png(), "image/png")})
            assert res.status_code == 200, res.text
            answers[name] = res.json()
        assert client.get("/api/info").json()["max_upload_bytes"] == 2 << 20
        # bound to loopback: other Host names are refused (DNS rebinding)
        assert TestClient(app, base_url="http://evil.example").get("/").status_code == 400

    seen = _capture(monkeypatch, drive)
    result = CliRunner().invoke(serve, [str(tiny_model_path), "--port", "0",
                                        "--max-upload-mb", "2", "--threshold", "0.4"])
    assert result.exit_code == 0, result.output
    port = seen["port"]
    assert port > 0
    assert f"mtl serve: http://127.0.0.1:{port}/" in result.output
    assert f"POST http://127.0.0.1:{port}/predict" in result.output
    assert "warning" not in result.output
    assert len(loads) == 1  # one model for every request
    r = answers["a.png"]
    assert r["settings"]["threshold"] == 0.4 and r["model"]["path"] == "m.keras"
    probs = r["findings"]["type"]["probabilities"]
    assert set(probs) == {"no_tumor", "glioma", "meningioma", "pituitary"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert r["findings"]["tumor"]["area_px"] == answers["b.png"]["findings"]["tumor"]["area_px"]


def test_serve_warns_when_not_on_loopback_and_reports_bad_models_and_busy_ports(
        tmp_path, monkeypatch):
    monkeypatch.setattr(predict_module.Predictor, "from_file",
                        classmethod(lambda cls, path, ensemble=(), **kw: fake_predictor(**kw)))
    model = tmp_path / "m.keras"
    model.write_bytes(b"not a model")
    seen = _capture(monkeypatch)
    result = CliRunner().invoke(serve, [str(model), "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert re.search(r"mtl serve: http://0\.0\.0\.0:\d+/", result.output)
    assert "not a loopback address" in result.output and "no authentication" in result.output
    assert seen["app"] is not None

    monkeypatch.undo()
    bad = CliRunner().invoke(serve, [str(model), "--port", "0"])
    assert bad.exit_code == 1 and "cannot load model" in bad.output

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = CliRunner().invoke(serve, [str(model), "--port", str(port)])
    assert taken.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.output
    assert CliRunner().invoke(serve, [str(model), "--port", "70000"]).exit_code == 2


def test_serve_runs_an_ensemble_and_names_its_members(tiny_model_path, tmp_path, monkeypatch):
    import shutil

    from fastapi.testclient import TestClient

    other = tmp_path / "n.keras"
    shutil.copy(tiny_model_path, other)
    answers = {}

    def drive(app, sock):
        host, port = sock.getsockname()[:2]
        client = TestClient(app, base_url=f"http://{host}:{port}")
        res = client.post("/predict", files={"file": ("a.png", tumor_png(), "image/png")})
        assert res.status_code == 200, res.text
        answers.update(res.json())

    _capture(monkeypatch, drive)
    result = CliRunner().invoke(serve, [str(tiny_model_path), "--port", "0",
                                        "--ensemble", str(other)])
    assert result.exit_code == 0, result.output
    assert f"model {tiny_model_path} + {other}:" in result.output
    assert "ensemble of 2 models, outputs averaged" in result.output
    assert answers["model"]["path"] == (f"{tiny_model_path.parent.name}/m.keras + "
                                        f"{tmp_path.name}/n.keras")  # run folder and file
    members = answers["model"]["calibration"]["members"]  # each member's own temperatures
    assert [m["path"] for m in members] == [str(tiny_model_path), str(other)]
    assert answers["model"]["card_line"].startswith("ensemble of 2 models")
    missing = CliRunner().invoke(serve, [str(tiny_model_path), "--port", "0",
                                         "--ensemble", str(tmp_path / "gone.keras")])
    assert missing.exit_code == 2 and "gone.keras: not found" in missing.output


def test_log_level_reaches_mtl_own_messages_while_serving(tiny_model_path, monkeypatch,
                                                          caplog):
    """--log-level sets mtl's loggers as well as uvicorn's while the server runs (error hides
    mtl's warnings; debug says why an upload was refused, with the traceback), and puts them
    back afterwards."""
    import logging

    from fastapi.testclient import TestClient

    logger = logging.getLogger("mtl")
    before = logger.level
    logger.setLevel(logging.INFO)

    def drive(app, sock):
        host, port = sock.getsockname()[:2]
        client = TestClient(app, base_url=f"http://{host}:{port}")
        during["level"] = logger.getEffectiveLevel()
        res = client.post("/predict", files={"file": ("junk.png", b"not a png", "image/png")})
        assert 400 <= res.status_code < 500, res.text

    try:
        for level in ("error", "debug", "warning"):
            during: dict = {}
            caplog.clear()
            seen = _capture(monkeypatch, drive)
            result = CliRunner().invoke(serve, [str(tiny_model_path), "--port", "0",
                                                "--log-level", level])
            assert result.exit_code == 0, result.output
            assert seen["log_level"] == level
            assert during["level"] == getattr(logging, level.upper())
            assert logger.level == logging.INFO
            refused = [r for r in caplog.records if "upload junk.png refused" in r.getMessage()]
            assert bool(refused) == (level == "debug"), level
    finally:
        logger.setLevel(before)
