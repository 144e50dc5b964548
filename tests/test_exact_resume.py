"""A killed and resumed run trains exactly as the uninterrupted one (issue 15, item 5), and
its run folder agrees with itself (item 4).

The uninterrupted run is the suite's shared one (conftest.py: 2 epochs of 2 steps on phantoms).
The same configuration is trained again and killed in the checkpoint of epoch 1, just after
last.keras was replaced (one of the kills of the issue), then resumed: epoch 2 must give the
same losses and the same weights, to float tolerance.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile

import h5py
import numpy as np
import pytest

from mtl import checkpoint
from mtl.config import load_config
from mtl.runfolder import read_history
from mtl.train import train


def test_dropout_generators_and_callback_counters_are_restored(tmp_path, monkeypatch):
    """What a .keras file does not hold, on a tiny model trained for 3 epochs, once straight
    and once stopped after epoch 1 and resumed from its run folder: dropout masks come from a
    generator whose state is saved in state.json, and the plateau scheduler keeps its counters
    (here it sees no improvement after epoch 1, so it halves the rate after epoch 2; restarted
    from scratch on resume it would not)."""
    import keras

    from mtl.train import RunRecorder

    monkeypatch.setattr("mtl.train.plot_history", lambda *a, **k: None)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")

    def fit(run_dir, epochs, initial_epoch=0):
        keras.utils.set_random_seed(0)
        if initial_epoch:
            model = keras.models.load_model(run_dir / "last.keras")
            state = json.loads((run_dir / "state.json").read_text())
        else:
            run_dir.mkdir()
            inputs = keras.Input((4,))
            hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(16)(inputs))
            hidden = keras.layers.BatchNormalization()(hidden)
            model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
            state = None
        model.run_eagerly = True  # a tiny model: tracing would cost more than training
        keep = [keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1,
                                                  min_delta=100.0),
                keras.callbacks.EarlyStopping(monitor="loss", patience=5)]
        recorder = RunRecorder(run_dir, "loss", "min", state and state["best"], epochs,
                               state=state, keep=keep)
        model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
                  shuffle=False, callbacks=[*keep, recorder])
        return read_history(run_dir / "history.csv")

    straight = fit(tmp_path / "straight", 3)
    fit(tmp_path / "resumed", 1)
    resumed = fit(tmp_path / "resumed", 3, initial_epoch=1)
    assert [r["learning_rate"] for r in straight] == pytest.approx([0.01, 0.01, 0.005])
    for a, b in zip(straight, resumed):
        assert (a["loss"], a["learning_rate"]) == pytest.approx((b["loss"], b["learning_rate"]),
                                                                rel=1e-6)
    a = weights(tmp_path / "straight" / "last.keras")
    b = weights(tmp_path / "resumed" / "last.keras")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, err_msg=name)


class Killed(BaseException):
    """Not an Exception: no handler in the code under test can catch it."""


def weights(path) -> dict[str, np.ndarray]:
    """Every array of a .keras file (layers and optimizer), read without Keras."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
            h5.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_a_killed_and_resumed_run_trains_as_if_never_stopped(tiny_phantom_run, tmp_path,
                                                              monkeypatch, caplog):
    reference = tiny_phantom_run.run_dir
    config = load_config(reference / "config.yaml", ["name=killed", f"train.runs_dir={tmp_path}"])
    run_dir = tmp_path / "killed"

    real_replace = checkpoint._replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if dst.name == "last.keras":
            raise Killed("after last.keras was replaced")

    monkeypatch.setattr("mtl.train.plot_history", lambda *a, **k: None)  # not under test
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "_replace", replace_then_die)
        with pytest.raises(Killed):
            train(config, verbose=0)
    assert (run_dir / "last.keras").is_file() and not (run_dir / "state.json").exists()
    # the same seed gives the same splits (and, below, the same first epoch)
    assert (run_dir / "splits.json").read_text() == (reference / "splits.json").read_text()

    # calibrating the saved models when training ends is not under test: skipped for speed
    monkeypatch.setattr("mtl.train.finish_run_models", lambda *a, **k: {})
    with caplog.at_level(logging.WARNING):
        result = train(load_config(run_dir / "config.yaml"), run_dir=run_dir, resume=True,
                       verbose=0)
    notes = [r.getMessage() for r in caplog.records if "checkpoint of epoch 1" in r.getMessage()]
    assert len(notes) == 1 and "finished it" in notes[0], caplog.text
    assert not [r for r in caplog.records if "not exact" in r.getMessage()], caplog.text

    expected, got = read_history(reference / "history.csv"), read_history(run_dir / "history.csv")
    assert [r["epoch"] for r in got] == [1, 2]
    for want, row in zip(expected, got):
        for key, value in want.items():
            if key != "seconds":
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (row["epoch"], key)
    a, b = weights(reference / "last.keras"), weights(run_dir / "last.keras")
    assert a.keys() == b.keys() and len(a) > 100
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)

    # the run folder agrees with itself and with the uninterrupted run's
    state = json.loads((run_dir / "state.json").read_text())
    want = json.loads((reference / "state.json").read_text())
    assert (state["epoch"], state["best_epoch"]) == (2, want["best_epoch"])
    assert state["best"] == pytest.approx(want["best"], rel=1e-5)
    assert state["files"]["last.keras"] == checkpoint.fingerprint(run_dir / "last.keras")
    assert state["files"]["best.keras"] == checkpoint.fingerprint(run_dir / "best.keras")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["epochs_done"], metrics["best_epoch"]) == (2, state["best_epoch"])
    assert (result.epochs_done, result.best_epoch) == (2, state["best_epoch"])
