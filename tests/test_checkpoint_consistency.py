"""The files of one epoch change together or not at all (issue 15, item 4).

A process is "killed" at every write point of an epoch's checkpoint: the five file operations
of :mod:`mtl.checkpoint` are replaced by ones that stop at the k-th operation, either before it
or half-way through it (a torn file), by raising an exception nothing catches, which leaves
the folder as a kill would. The run folder is then recovered as ``--resume`` does and must hold
one epoch's files, all agreeing with history.csv. A tiny Keras model stands in for the network
(the weights of epoch e are all e, so every file says which epoch it holds).
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pytest

from mtl import checkpoint
from mtl.checkpoint import fingerprint, history_best, reconcile, recover
from mtl.runfolder import history_text, read_history
from mtl.train import RunRecorder, held_epoch

STEPS = 2  # optimizer steps per epoch


class Killed(BaseException):
    """Not an Exception: no handler in the code under test can catch it."""


def tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="marker")(inputs)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.optimizer.build(model.trainable_variables)  # saved with its slots, as after training
    return model


def epoch_of(path) -> int:
    """The epoch a saved model holds: its marker weights, read from the file without Keras."""
    with zipfile.ZipFile(path) as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        kernel = np.asarray(weights["layers/dense/vars/0"])  # the first Dense: "marker"
    assert kernel.shape == (4, 3) and np.unique(kernel).size == 1
    return int(kernel.flat[0])


def finish_epoch(recorder: RunRecorder, model: keras.Model, epoch: int, val_loss: float) -> None:
    """What fit does around one epoch (0-based), with weights that name the epoch."""
    recorder.on_epoch_begin(epoch)
    layer = model.get_layer("marker")
    layer.kernel.assign(np.full(layer.kernel.shape, epoch + 1, np.float32))
    model.optimizer.iterations.assign((epoch + 1) * STEPS)
    recorder.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_loss": val_loss})


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """The curves are redrawn after a commit and are not part of it: skipped for speed."""
    monkeypatch.setattr("mtl.train.plot_history", lambda *a, **k: None)


class FaultyDisk:
    """Counts the file operations of mtl.checkpoint; the ``at``-th one is killed, before it
    starts or (``torn``) after writing half of it."""

    def __init__(self, monkeypatch, at: int | None = None, torn: bool = False) -> None:
        self.count, self.at, self.torn, self.log = 0, at, torn, []
        for name in ("_write", "_save_model", "_copy", "_replace", "_remove"):
            monkeypatch.setattr(checkpoint, name, self._wrap(name, getattr(checkpoint, name)))

    def _wrap(self, name, real):
        def operation(*args):
            self.count += 1
            target = args[1] if name in ("_replace", "_copy", "_save_model") else args[0]
            self.log.append((name, str(target).rsplit("/", 2)[-2:]))
            if self.count == self.at:
                if self.torn and name == "_write":
                    args[0].write_bytes(args[1][: len(args[1]) // 2])
                elif self.torn and name in ("_save_model", "_copy"):
                    args[1].write_bytes(b"PK\x03\x04 half a zip")
                raise Killed(f"killed at {name} #{self.count}")
            return real(*args)
        return operation


def assert_consistent(run_dir) -> int:
    """state.json, history.csv, last.keras and best.keras name the same epoch; returns it."""
    assert not (run_dir / checkpoint.PENDING).exists()
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    state = json.loads((run_dir / "state.json").read_text())
    history = read_history(run_dir / "history.csv")
    epoch = state["epoch"]
    assert [r["epoch"] for r in history] == list(range(1, epoch + 1))
    assert epoch_of(run_dir / "last.keras") == epoch
    best, best_epoch = history_best(history, "val_loss", "min")
    assert (state["best"], state["best_epoch"]) == (best, best_epoch)
    assert epoch_of(run_dir / "best.keras") == best_epoch
    assert state["files"] == {"last.keras": fingerprint(run_dir / "last.keras"),
                              "best.keras": fingerprint(run_dir / "best.keras")}
    assert state["optimizer_steps"] == [STEPS * e for e in range(1, epoch + 1)]
    return epoch


def test_a_kill_at_any_write_point_leaves_one_epoch(tmp_path, monkeypatch):
    """Epoch 2 improves on epoch 1 (val_loss 13.3 after 40.8), so its checkpoint writes every
    file; it is killed at each of its file operations in turn."""
    model = tiny_model()
    base = tmp_path / "epoch1"
    base.mkdir()
    recorder = RunRecorder(base, "val_loss", "min", None, epochs=3)
    recorder.set_model(model)
    finish_epoch(recorder, model, 0, 40.8)
    assert assert_consistent(base) == 1

    def recorder_after_epoch_1(run_dir):  # as on resume
        shutil.copytree(base, run_dir)
        state = json.loads((run_dir / "state.json").read_text())
        recorder = RunRecorder(run_dir, "val_loss", "min", state["best"], epochs=3, state=state)
        recorder.set_model(model)
        return recorder

    # the operations of epoch 2's checkpoint, counted on a run that is not killed
    counter = FaultyDisk(monkeypatch)
    finish_epoch(recorder_after_epoch_1(tmp_path / "count"), model, 1, 13.3)
    operations = list(counter.log)
    assert assert_consistent(tmp_path / "count") == 2
    commit_point = [i for i, (name, where) in enumerate(operations, start=1)
                    if name == "_replace" and where[-1] == checkpoint.COMMIT][0]
    assert len(operations) >= 9

    seen = set()
    for k, (operation, _) in enumerate(operations, start=1):
        for torn in (False, True) if operation in ("_write", "_save_model", "_copy") else (False,):
            run_dir = tmp_path / f"kill{k}{'torn' if torn else ''}"
            recorder = recorder_after_epoch_1(run_dir)
            disk = FaultyDisk(monkeypatch, at=k, torn=torn)
            with pytest.raises(Killed):
                finish_epoch(recorder, model, 1, 13.3)
            disk.at = None
            note = recover(run_dir)
            epoch = assert_consistent(run_dir)
            # before the commit point the old epoch stays, from it on the new one is finished
            assert epoch == (2 if k > commit_point else 1), (k, torn, disk.log[-1])
            if k == 1 and not torn:  # nothing staged: an empty .pending, removed quietly
                assert note is None
            else:
                assert ("finished it" if epoch == 2 else "discarded it") in note
            seen.add(epoch)
    assert seen == {1, 2}


def test_resume_repairs_a_run_killed_by_an_older_mtl(tmp_path):
    """The issue's two kills, in the files mtl wrote before checkpoints were committed: killed
    just after last.keras was replaced, and while best.keras was being written. history.csv and
    last.keras have epoch 2 (val_loss 13.3), state.json and best.keras still epoch 1 (40.8)."""
    model = tiny_model()
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    rows = []
    for epoch, val in ((1, 40.8), (2, 13.3)):
        model.get_layer("marker").kernel.assign(np.full((4, 3), epoch, np.float32))
        model.optimizer.iterations.assign(epoch * STEPS)
        rows.append({"epoch": epoch, "loss": 1.0 / epoch, "val_loss": val, "learning_rate": 0.01})
        model.save(run_dir / "last.keras")
        if epoch == 1:
            shutil.copyfile(run_dir / "last.keras", run_dir / "best.keras")
    (run_dir / "history.csv").write_text(history_text(rows))
    (run_dir / "best.tmp.keras").write_bytes(b"PK\x03\x04 half of best.keras")
    old_state = {"epoch": 1, "best": 40.8, "best_epoch": 1, "monitor": "val_loss", "mode": "min",
                 "epochs_planned": 3, "stopped_early": False}
    (run_dir / "state.json").write_text(json.dumps(old_state))

    assert "best.tmp.keras" in recover(run_dir)  # the torn temporary file goes
    loaded = keras.models.load_model(run_dir / "last.keras")
    held = held_epoch(loaded, old_state, STEPS)
    assert held == 2
    state, note = reconcile(run_dir, old_state, read_history(run_dir / "history.csv"), held,
                            "val_loss", "min", history_text)
    assert "\n" not in note and "state.json said epoch 1" in note
    assert "copied from last.keras" in note
    assert (state["epoch"], state["best"], state["best_epoch"]) == (2, 13.3, 2)
    assert json.loads((run_dir / "state.json").read_text())["best_epoch"] == 2
    assert epoch_of(run_dir / "best.keras") == 2
    # and a run killed before its last.keras was replaced loses the history row it had added
    model.get_layer("marker").kernel.assign(np.full((4, 3), 2, np.float32))
    rows.append({"epoch": 3, "loss": 0.3, "val_loss": 1.0, "learning_rate": 0.01})
    (run_dir / "history.csv").write_text(history_text(rows))
    state, note = reconcile(run_dir, state, read_history(run_dir / "history.csv"), 2,
                            "val_loss", "min", history_text)
    assert "history.csv had 3 rows" in note and state["best_epoch"] == 2
    assert [r["epoch"] for r in read_history(run_dir / "history.csv")] == [1, 2]
    # a consistent folder is left alone
    assert reconcile(run_dir, state, read_history(run_dir / "history.csv"), 2, "val_loss", "min",
                     history_text) == (state, None)


def test_resume_without_the_saved_weights_names_last_keras(tiny_phantom_run, tmp_path):
    """state.json says 2 epochs but last.keras is gone: one line, not fresh weights trained on
    as if they were epoch 3."""
    from click.testing import CliRunner

    from mtl.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_phantom_run.run_dir, run_dir)
    (run_dir / "last.keras").unlink()
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--epochs", "3", "-q"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert f"{run_dir / 'last.keras'}: cannot resume" in errors[0] and "missing" in errors[0]
    assert len(read_history(run_dir / "history.csv")) == 2


def test_a_run_killed_while_finishing_is_finished_on_resume(tiny_phantom_run, tmp_path,
                                                            monkeypatch):
    """Killed after its last epoch, before metrics.json: resuming does not call it finished
    but redoes the end of training (without training more)."""
    from mtl.config import load_config
    from mtl.train import train

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_phantom_run.run_dir, run_dir)
    (run_dir / "metrics.json").unlink()
    history = (run_dir / "history.csv").read_text()
    calls = []
    monkeypatch.setattr("mtl.train.finish_run_models", lambda *a, **k: calls.append(a) or {})
    result = train(load_config(run_dir / "config.yaml"), run_dir=run_dir, resume=True, verbose=0)
    assert len(calls) == 1 and result.epochs_done == 2
    assert (run_dir / "history.csv").read_text() == history  # no epoch trained again
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    assert (metrics["epochs_done"], metrics["best_epoch"]) == (2, state["best_epoch"])
    # now it is finished: a second resume does nothing
    assert train(load_config(run_dir / "config.yaml"), run_dir=run_dir, resume=True,
                 verbose=0).epochs_done == 2 and len(calls) == 1
