"""Training within a time budget (``train.time_budget_minutes``).

A 2-core CPU without bfloat16 instructions trains the reference file at a fifth to two fifths of
the speed of one with them (README -> Performance), so a fixed number of epochs cannot promise a
duration. With a budget, the run plans its epochs from the epochs it has timed: after every
epoch, the planned total becomes the epochs done plus as many more as the time left holds at the
median epoch time of this session, never more than ``train.epochs``. A new run's first epoch
(it fills the caches and traces the graph) only decides a stop and leaves the median once a
second epoch is timed; a resumed session plans with the epoch time the last one measured until
it has timed two of its own. The cosine schedule follows the plan (:class:`CosineSchedule`), so
a run cut to fewer epochs still decays to its final learning rate instead of being killed at a
high one. When not one more epoch fits, training stops and ends as usual (temperatures, cards,
metrics.json).

The budget counts wall-clock time from the start of :func:`mtl.train.train` (reading the data
and the near-copy search included) up to the last committed epoch, summed over the sessions of
a resumed run (``state.json`` keeps the seconds used). The end of training (temperature fitting
on the validation split, the cards) comes after it: about one validation pass more.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import keras

log = logging.getLogger(__name__)

#: state.json key of the budget's bookkeeping
STATE_KEY = "time_budget"


@dataclass
class EpochPlan:
    """The number of epochs the run plans to train: ``train.epochs``, or fewer where a time
    budget holds fewer. The learning-rate schedule and the run recorder read it every epoch."""

    epochs: int


def cosine_learning_rate(epoch: int, *, base: float, epochs: int, min_fraction: float) -> float:
    """The learning rate of a 0-based epoch: half a cosine from base down to base * min_fraction,
    reached by the last planned epoch. A function of the epoch and the plan alone, so resume
    needs no state."""
    progress = min(epoch / max(epochs - 1, 1), 1.0)
    return float(base * (min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))))


@dataclass
class CosineSchedule:
    """Keras's ``LearningRateScheduler`` schedule: the cosine over the current plan."""

    base: float
    plan: EpochPlan
    min_fraction: float

    def __call__(self, epoch: int, _current: float = 0.0) -> float:
        return cosine_learning_rate(epoch, base=self.base, epochs=self.plan.epochs,
                                    min_fraction=self.min_fraction)


def planned_epochs(done: int, ceiling: int, seconds_left: float, epoch_seconds: float) -> int:
    """Epochs done plus those that fit in ``seconds_left`` at ``epoch_seconds`` each, at most
    ``ceiling`` (and never fewer than ``done``)."""
    if epoch_seconds <= 0:
        return ceiling
    more = max(int(seconds_left // epoch_seconds), 0)
    return max(done, min(ceiling, done + more))


def epoch_estimate(cycles: list[float]) -> float:
    """Seconds one more epoch will take: the median of this session's epochs, the first left out
    once there are others (it fills the caches and traces the graph)."""
    timed = cycles[1:] if len(cycles) > 1 else cycles
    return float(statistics.median(timed))


class TimeBudget(keras.callbacks.Callback):
    """Re-plans the epochs after each one so that training ends within ``minutes``; stops the
    fit when not one more epoch fits. Must come before the run recorder in the fit's callbacks,
    so that the epoch it commits carries the new plan and the stop.

    ``ceiling``: train.epochs; ``started``: ``time.perf_counter()`` when this session's
    ``mtl train`` began; ``used_before``: the seconds earlier sessions of a resumed run used;
    ``kept_estimate``: the epoch time they measured, which stands in for this session's until
    it has timed two epochs (its first fills the caches and traces the graph)."""

    def __init__(self, minutes: float, plan: EpochPlan, ceiling: int, started: float,
                 used_before: float = 0.0, kept_estimate: float | None = None) -> None:
        super().__init__()
        self.minutes = float(minutes)
        self.plan = plan
        self.ceiling = int(ceiling)
        self.started = started
        self.used_before = float(used_before)
        self.cycles: list[float] = []  # this session's epochs, seconds from end to end
        self.kept_estimate = kept_estimate
        self.estimate: float | None = kept_estimate
        self.stopped = False
        self._mark = started

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    def used(self) -> float:
        """Seconds used so far, earlier sessions included."""
        return self.used_before + time.perf_counter() - self.started

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._mark = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.cycles.append(now - self._mark)
        self._mark = now
        done = epoch + 1
        if len(self.cycles) > 1 or self.kept_estimate is None:
            self.estimate = epoch_estimate(self.cycles)
        fits = planned_epochs(done, self.ceiling, self.seconds - self.used(), self.estimate)
        # a new run's first epoch alone (caches, tracing) would under-plan: it only decides a
        # stop (so a budget under about two of its epochs may end after one)
        if len(self.cycles) > 1 or self.kept_estimate is not None or fits == done:
            if fits != self.plan.epochs:
                log.info("time budget: %.1f of %g min used, %.1f min an epoch: %d epochs "
                         "planned (was %d)", self.used() / 60, self.minutes,
                         self.estimate / 60, fits, self.plan.epochs)
            self.plan.epochs = fits
        if done >= self.plan.epochs and done < self.ceiling:
            self.stopped = True
            self.model.stop_training = True
            log.info("time budget: stopping after epoch %d of train.epochs=%d (%.1f of %g min "
                     "used)", done, self.ceiling, self.used() / 60, self.minutes)

    def state(self) -> dict[str, Any]:
        """What state.json keeps of the budget (read back on resume)."""
        return {"minutes": self.minutes, "epochs": self.ceiling,
                "seconds_used": round(self.used(), 1),
                "epoch_seconds": None if self.estimate is None else round(self.estimate, 1),
                "stopped": self.stopped}


def resumed_budget(state: dict[str, Any]) -> dict[str, Any]:
    """The budget bookkeeping of a run's state.json ({} where the run had no budget)."""
    return dict(state.get(STATE_KEY) or {})


def budget_spent(state: dict[str, Any], epochs: int, minutes: float | None) -> bool:
    """Whether a run resumed with ``epochs`` and ``minutes`` has no epoch left to train under
    its budget: the budget stopped it and was not raised, or the time left does not hold one
    more epoch at the epoch time last measured (a run killed when its time was up). A budget
    removed (None) trains the rest of ``epochs``."""
    kept = resumed_budget(state)
    done = int(state.get("epoch") or 0)
    if minutes is None or not kept or done >= epochs:
        return False
    if kept.get("stopped") and minutes <= float(kept.get("minutes", 0.0)):
        return True
    return initial_plan(epochs, state, minutes).epochs <= done


def planned_ceiling(state: dict[str, Any]) -> int | None:
    """The train.epochs a run's state.json was written under: the time budget's record of it,
    else ``epochs_planned`` (the same number for a run without a budget)."""
    ceiling = resumed_budget(state).get("epochs", state.get("epochs_planned"))
    return None if ceiling is None else int(ceiling)


def initial_plan(epochs: int, state: dict[str, Any], minutes: float | None) -> EpochPlan:
    """The plan a session starts with: ``train.epochs``; on resume under a budget, the epochs
    done plus those the time left holds at the epoch time the last session measured (so the
    schedule continues its curve, or stretches it where the budget was raised)."""
    kept = resumed_budget(state)
    done = int(state.get("epoch") or 0)
    if minutes is None or not kept or not kept.get("epoch_seconds"):
        return EpochPlan(epochs)
    return EpochPlan(planned_epochs(done, epochs,
                                    minutes * 60.0 - float(kept.get("seconds_used", 0.0)),
                                    float(kept["epoch_seconds"])))


__all__ = ["CosineSchedule", "EpochPlan", "TimeBudget", "budget_spent", "cosine_learning_rate",
           "epoch_estimate", "initial_plan", "planned_ceiling", "planned_epochs", "resumed_budget"]
