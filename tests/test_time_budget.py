"""train.time_budget_minutes: the run plans its epochs from the epochs it has timed, the cosine
schedule follows the plan, and training stops when not one more epoch fits (mtl.time_budget).

The clock is faked: each epoch "takes" a set number of seconds, so the plan is known exactly."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from mtl.config import ConfigError, load_config
from mtl.runfolder import RunFolder, read_history
from mtl.time_budget import (EpochPlan, budget_spent, cosine_learning_rate, epoch_estimate,
                             initial_plan, planned_epochs)
from mtl.train import Start, open_run, run_callbacks

from test_train import TINY


def test_planning_arithmetic():
    assert planned_epochs(2, 20, seconds_left=185.0, epoch_seconds=60.0) == 5
    assert planned_epochs(2, 4, seconds_left=1e6, epoch_seconds=60.0) == 4  # never past epochs
    assert planned_epochs(2, 20, seconds_left=-5.0, epoch_seconds=60.0) == 2  # over: stop now
    # the first epoch (caches, tracing) counts only while it is the only one
    assert epoch_estimate([300.0]) == 300.0
    assert epoch_estimate([300.0, 60.0, 70.0, 65.0]) == 65.0
    # the cosine reaches its floor at the last planned epoch and stays there
    assert cosine_learning_rate(2, base=1.0, epochs=3, min_fraction=0.1) == pytest.approx(0.1)
    assert cosine_learning_rate(5, base=1.0, epochs=3, min_fraction=0.1) == pytest.approx(0.1)


def test_resume_continues_or_stretches_the_plan():
    state = {"epoch": 3, "epochs_planned": 3,
             "time_budget": {"minutes": 5.0, "epochs": 20, "seconds_used": 270.0,
                             "epoch_seconds": 60.0, "stopped": True}}
    assert budget_spent(state, 20, 5.0) and budget_spent(state, 20, 4.0)
    assert budget_spent(state, 30, 5.0)  # more epochs, the same budget: still spent
    assert budget_spent(state, 20, 5.4)  # raised, but 54 s hold no 60 s epoch
    assert not budget_spent(state, 20, 10.0)  # a raised budget goes on
    assert not budget_spent(state, 20, None)  # the budget removed: the rest of train.epochs
    assert not budget_spent({"epoch": 3}, 20, 5.0)  # no budget before: nothing to keep
    killed = {**state, "time_budget": {**state["time_budget"], "stopped": False}}
    assert budget_spent(killed, 20, 5.0)  # killed with its time up: only the end is redone
    # 10 minutes: 330 s left at 60 s an epoch hold 5 more epochs
    assert initial_plan(20, state, 10.0) == EpochPlan(8)
    assert initial_plan(6, state, 10.0).epochs == 6
    assert initial_plan(20, state, None) == EpochPlan(20)  # the budget dropped: train.epochs
    assert initial_plan(20, {"epoch": 0, "best": None}, 5.0) == EpochPlan(20)


def test_config_checks_the_budget():
    with pytest.raises(ConfigError, match="time_budget_minutes must be > 0"):
        load_config(overrides=TINY + ["train.time_budget_minutes=0"])
    with pytest.raises(ConfigError, match="multiworker"):
        load_config(overrides=TINY + ["train.time_budget_minutes=60",
                                      "train.strategy=multiworker"])
    assert load_config(overrides=TINY).train.time_budget_minutes is None


class FakeClock:
    """``time`` for mtl.time_budget: ``perf_counter`` reads ``now``, which epochs advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def fit_under_budget(tmp_path, monkeypatch, minutes, epochs, state=None, seconds=(120.0, 60.0)):
    """A tiny model fitted with run_callbacks' schedule, budget and recorder, on a fake clock:
    30 s of start-up, the first epoch of this session ``seconds[0]``, the others ``seconds[1]``.
    Returns (history rows, state.json, the callbacks)."""
    import keras

    from mtl.train import RunRecorder

    clock = FakeClock()
    monkeypatch.setattr("mtl.time_budget.time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr("mtl.train.plot_history", lambda *a, **k: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    config = load_config(overrides=TINY + [
        f"train.runs_dir={tmp_path}", f"train.epochs={epochs}", "train.lr_schedule=cosine",
        "train.lr_min_fraction=0.1", f"train.time_budget_minutes={minutes}"])
    resume = state is not None
    start = Start(RunFolder(run_dir), RunFolder(run_dir), resume, True,
                  state if resume else {"epoch": 0, "best": None}, False)

    class Tick(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.now += seconds[0] if epoch == start.epoch else seconds[1]

    started = clock.now
    clock.now += 30.0  # loading the data
    callbacks = run_callbacks(config, start, 0.01, "loss", started)
    assert isinstance(callbacks[-1], RunRecorder)
    if resume:
        model = keras.models.load_model(run_dir / "last.keras")
    else:
        rng = np.random.default_rng(0)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(8)(inputs)))
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.run_eagerly = True  # a tiny model: tracing would cost more than training
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=start.epoch, verbose=0,
              shuffle=False, callbacks=[Tick(), *callbacks])
    return (read_history(run_dir / "history.csv"),
            json.loads((run_dir / "state.json").read_text()), callbacks)


def test_a_run_stops_within_its_budget_and_ends_its_schedule(tmp_path, monkeypatch):
    # 5 min: 30 s start-up, epochs of 120 s (the first) and 60 s. After epoch 1 (150 s used) the
    # plan stays at 20 (one slow epoch decides only a stop); after epoch 2 (210 s) 90 s hold one
    # more at 60 s: 3 planned; after epoch 3 (270 s) none: stop
    history, state, _ = fit_under_budget(tmp_path, monkeypatch, minutes=5, epochs=20)
    assert len(history) == 3
    assert state["epochs_planned"] == 3 and state["epoch"] == 3
    assert state["time_budget"] == {"minutes": 5.0, "epochs": 20, "seconds_used": 270.0,
                                    "epoch_seconds": 60.0, "stopped": True}
    assert not state["stopped_early"]  # the budget's stop is not early stopping
    rates = [float(r["learning_rate"]) for r in history]
    expected = [0.01, cosine_learning_rate(1, base=0.01, epochs=20, min_fraction=0.1), 0.001]
    np.testing.assert_allclose(rates, expected, rtol=1e-5,
                               err_msg="the last planned epoch trains at the schedule's floor")

    # resumed with 10 minutes: 330 s left at the 60 s measured hold 5 more epochs, planned at
    # once, so the schedule goes on from epoch 4 of 8. This session starts up in 30 s and its
    # first epoch takes 150 s (caches): the measured 60 s stand for it, so after it (450 s
    # used) 150 s hold two more: 6 planned; epochs 5 and 6 take 60 s, the last on the floor
    history, state, _ = fit_under_budget(tmp_path, monkeypatch, minutes=10, epochs=20,
                                         state=state, seconds=(150.0, 60.0))
    assert state["time_budget"]["seconds_used"] == pytest.approx(270.0 + 30.0 + 150.0 + 60.0 * 2)
    assert len(history) == 6 and state["epochs_planned"] == 6 and state["time_budget"]["stopped"]
    assert state["time_budget"]["epoch_seconds"] == 60.0  # not the slow first epoch
    assert float(history[3]["learning_rate"]) == pytest.approx(
        cosine_learning_rate(3, base=0.01, epochs=8, min_fraction=0.1), rel=1e-5)
    assert float(history[-1]["learning_rate"]) == pytest.approx(0.001, rel=1e-5)


def test_resume_reads_the_budget_from_the_run_folder(tmp_path, monkeypatch):
    """open_run, as `mtl train --resume` calls it: a run the budget ended stays finished unless
    the budget is raised (or removed), and early stopping under a cut plan stays finished too."""
    _, state, _ = fit_under_budget(tmp_path, monkeypatch, minutes=5, epochs=20)
    run_dir = tmp_path / "run"

    def stopped(*overrides):
        config = load_config(overrides=TINY + [f"train.runs_dir={tmp_path}", *overrides])
        (run_dir / "config.yaml").write_text(config.to_yaml())
        return open_run(config, run_dir, resume=True).stopped

    assert stopped("train.epochs=20", "train.time_budget_minutes=5")
    assert stopped("train.epochs=30", "train.time_budget_minutes=5")
    assert not stopped("train.epochs=20", "train.time_budget_minutes=10")
    assert not stopped("train.epochs=20")
    # early stopping at epoch 3 while the budget planned 10 of 20: finished, unless resumed
    # with more than the 20 epochs it ran under
    early = {**state, "stopped_early": True, "epochs_planned": 10,
             "time_budget": {**state["time_budget"], "stopped": False, "seconds_used": 100.0}}
    (run_dir / "state.json").write_text(json.dumps(early))
    assert stopped("train.epochs=20", "train.time_budget_minutes=5")
    assert not stopped("train.epochs=30", "train.time_budget_minutes=5")


def test_a_generous_budget_changes_nothing(tmp_path, monkeypatch):
    history, state, _ = fit_under_budget(tmp_path, monkeypatch, minutes=600, epochs=3)
    assert len(history) == 3 and state["epochs_planned"] == 3
    assert not state["time_budget"]["stopped"]
    np.testing.assert_allclose([float(r["learning_rate"]) for r in history],
                               [0.01, 0.0055, 0.001], rtol=1e-5)


def test_the_closing_line_says_the_budget_ended_the_run(tmp_path, monkeypatch):
    from mtl.train import TrainResult
    from mtl.train_command import best_line

    history, state, _ = fit_under_budget(tmp_path, monkeypatch, minutes=5, epochs=20)
    run_dir = tmp_path / "run"
    (run_dir / "config.yaml").write_text(load_config(overrides=TINY + ["train.epochs=20"]).to_yaml())
    line = best_line(TrainResult(run_dir, 3, state["best"], state["best_epoch"], history))
    assert line.startswith("3 epochs done (the time budget of 5 min held 3 of 20); best loss ")
