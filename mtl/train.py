"""``mtl train``: fit the multi-task network and keep everything in one run folder.

A run folder ``runs/<name>/`` holds::

    config.yaml         the resolved configuration (what ``--resume`` reloads)
    splits.json         the patient-safe train/val/test split of every source
    data_summary.json   items and labelled tasks per source and split
    history.csv         one row per finished epoch (train and val metrics, lr, seconds)
    state.json          the last finished epoch and the best monitored value
    last.keras          model + optimizer after the last finished epoch
    best.keras          model at the best monitored epoch
    plots/curves.png    training curves, redrawn every epoch
    metrics.json        summary written when training ends
    .pending/           only while an epoch's files are committed together (mtl.checkpoint)

Both ``.keras`` files carry the model card (:mod:`mtl.model.card`); when training ends, the
presence and type temperatures are fitted on the validation split and stored in them
(:mod:`mtl.model.calibration`).

The folder, its naming and the formats of its files belong to :class:`mtl.runfolder.RunFolder`.
Every file is written atomically (:mod:`mtl.files`); the files of one epoch (history.csv,
last.keras, best.keras, state.json) are committed together (:mod:`mtl.checkpoint`), so a run
killed at any moment resumes from its last finished epoch with ``--resume``, exactly as if it had
not stopped.

:func:`train` tells the story in steps: :func:`open_run` (the run folder and where a resume
starts), :func:`training_data` (datasets, splits, summary), :func:`training_model` (new or
resumed), :func:`input_pipelines`, :func:`fit` and :func:`finish` (calibration, metrics.json).
The ``mtl train`` command is :mod:`mtl.train_command`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import keras

from mtl.checkpoint import EpochCommit, reconcile, recover, restore_resume_state, resume_state
from mtl.config import Config, ConfigError, load_config
from mtl.data.pipeline import (
    LoadErrors,
    SampleEncoder,
    Source,
    make_dataset,
    open_sources,
    plan_split,
    plan_training,
    preflight,
    skip_report,
    steps_per_epoch,
)
from mtl.data.preprocess import data_preprocessing
from mtl.distribute import (
    cluster_role, distributed_dataset, make_strategy, scaling, synchronize_batchnorm,
)
from mtl.data.copies import check_groups_together, link_copies, split_jointly, train_once
from mtl.data.splits import match_case_ids, split_records
from mtl.model.card import finish_run_models, training_card
from mtl.model.multitask import MultiTaskModel
from mtl.model.optimizers import FusedAdam
from mtl.model.warm_start import WarmStartError
from mtl.model.weight_gradient import resolve_weight_gradient, use_weight_gradient
from mtl.figures import plot_history
from mtl.files import json_text
from mtl.precision import resolve_precision
from mtl.time_budget import (STATE_KEY as BUDGET_KEY, CosineSchedule, EpochPlan, TimeBudget,
                             budget_spent, cosine_learning_rate, initial_plan, planned_ceiling,
                             resumed_budget)
from mtl.runfolder import (
    CONFIG, DATA_SUMMARY, HISTORY, METRICS, SPLITS, STATE, ResumeError, RunFolder, describe,
    history_text, splits_entry,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- splits


def assign_splits(sources: list[Source], config: Config, run_dir: Path, reuse: bool,
                  saved_in: Path | None = None) -> dict[str, Any] | None:
    """Patient-safe splits of every source, saved to (or, on resume, read from) splits.json.

    With ``data.link_copies`` (default) the sources are split together: near-copies in any
    source of the run share a split with each other and with their patient groups
    (:mod:`mtl.data.copies`). Returns the copy counts for ``data_summary.json``: found now, or
    on resume those the run's ``data_summary.json`` recorded (None when linking is off).
    """
    folder, saved_folder = RunFolder(run_dir), RunFolder(saved_in or run_dir)
    source_path = saved_folder / SPLITS
    saved = saved_folder.read_splits() if reuse else None
    copies: dict[str, Any] | None = None
    if saved is not None:
        unknown = [s.name for s in sources if not (
            isinstance(saved.get(s.name), dict) and saved[s.name].get("format") == s.config.format
            and saved[s.name].get("root") == s.config.root)]
        if unknown:  # a fresh split would move items already trained on into val/test
            raise ConfigError(
                f"{source_path} has no saved split for {', '.join(unknown)}: the datasets of a "
                "run cannot change on resume; start a new run for new data")
        for source in sources:
            source.splits, missing = match_case_ids(source.records, saved[source.name]["case_ids"])
            if missing:  # e.g. items skipped as unreadable since the run started
                log.warning("%s: %d case id(s) of the saved splits are no longer in the data, "
                            "e.g. %s", source.name, len(missing), missing[:5])
        recorded = saved_folder.read_data_summary()
        if recorded is not None:  # the counts found when the run started
            copies = recorded.get("_near_copies")
    elif config.data.link_copies:
        links = link_copies(sources)
        with split_errors(config):
            parts = split_jointly(sources, links, config.data.split, seed=config.seed,
                                  cv=config.data.cv, refit=config.data.refit)
        check_groups_together(links, parts)
        copies = links.summary()
        log.info("near-copies: %d cross-dataset groups (%d items); %d split groups",
                 copies["cross_dataset_groups"], copies["items_in_cross_dataset_groups"],
                 copies["split_groups"])
        if config.data.train_copies == "once":
            copies["left_out_of_training"] = left_out = train_once(links, parts)
            log.info("data.train_copies: once: %s near-copies left out of training (%s)",
                     sum(left_out.values()),
                     ", ".join(f"{name} {n}" for name, n in left_out.items() if n) or "none")
        for source, split in zip(sources, parts):
            source.splits = split
    else:
        for source in sources:
            with split_errors(config, source.name):
                source.splits = split_records(source.records, config.data.split,
                                              seed=config.seed, cv=config.data.cv,
                                              refit=config.data.refit)
    if config.data.cv:
        log.info("cross-validation fold %d of %d (0-based): %s", config.data.cv_fold,
                 config.data.cv_folds, patient_groups(sources, "val", "validation"))
    if config.data.refit:
        log.info("data.refit: the val split's patients train too; no validation, test split "
                 "unchanged: %s", patient_groups(sources, "train", "training"))
    folder.write_splits({s.name: splits_entry(s.config.format, s.config.root, s.records, s.splits)
                         for s in sources})
    return copies


def patient_groups(sources: list[Source], split: str, role: str) -> str:
    """How many patient groups each source has in one split, for the log:
    ``"figshare: 3 validation patient group(s); brisc: 40 ..."``."""
    return "; ".join(f"{s.name}: {len({s.records[i].patient_id for i in s.splits[split]})} "
                     f"{role} patient group(s)" for s in sources)


@contextlib.contextmanager
def split_errors(config: Config, source: str | None = None) -> Iterator[None]:
    """A split that cannot be made (too few patients for the splits or the cross-validation
    folds) as a ConfigError naming the dataset, not a traceback."""
    try:
        yield
    except ValueError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{exc} (data.split {config.data.split}"
                          + (f", data.cv_folds {config.data.cv_folds}" if config.data.cv else "")
                          + ")") from None


def data_summary(sources: list[Source], copies: dict[str, Any] | None = None,
                 cv: tuple[int, int] | None = None, refit: bool = False) -> dict[str, Any]:
    """Items and labelled tasks per source and split; ``copies``: near-copy counts, under
    ``"_near_copies"`` (see :meth:`mtl.data.copies.CopyLinks.summary`); ``cv``: the
    cross-validation fold (``data.cv_folds``, ``data.cv_fold``), under ``"_cross_validation"``;
    ``refit`` (``data.refit``: the val patients trained too) as ``"_refit": true``."""
    summary: dict[str, Any] = {}
    for source in sources:
        per_split = {}
        for split, idx in source.splits.items():
            recs = [source.records[i] for i in idx]
            labels: dict[str, int] = {}
            for r in recs:
                key = str(source.class_label(r.label))
                labels[key] = labels.get(key, 0) + 1
            per_split[split] = {
                "items": len(recs),
                "patients": len({r.patient_id for r in recs}),
                "labelled": {
                    "presence": sum(r.presence is not None for r in recs),
                    "type": sum(source.class_label(r.label) is not None for r in recs),
                    "mask": sum(r.has_mask for r in recs),
                },
                "labels": labels,
            }
        summary[source.name] = {"skipped_at_scan": len(source.scan_skipped), "splits": per_split}
    if copies is not None:
        summary["_near_copies"] = copies
    if cv is not None:
        summary["_cross_validation"] = {"folds": cv[0], "fold": cv[1]}
    if refit:
        summary["_refit"] = True
    return summary


# --------------------------------------------------------------------------- callback


class RunRecorder(keras.callbacks.Callback):
    """Commits history.csv, last.keras, best.keras and state.json together every epoch
    (:class:`mtl.checkpoint.EpochCommit`), then redraws the curves.

    It must come after the callbacks in ``keep`` (learning-rate plateau, early stopping) in the
    fit's list, so that what it saves includes their decisions at the end of the epoch, and so
    that on resume it restores their counters after their ``on_train_begin`` reset them.
    ``state``: the state.json of the run being resumed (``best``, ``best_epoch`` and the
    ``resume`` states are carried on from it). ``epochs``: the planned epochs, or the plan a
    time budget revises (``budget``, which must come before the recorder too)."""

    def __init__(self, run_dir: Path, monitor: str, mode: str, best: float | None,
                 epochs: int | EpochPlan, state: dict[str, Any] | None = None,
                 keep: list[keras.callbacks.Callback] | None = None,
                 budget: TimeBudget | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.folder = RunFolder(run_dir)
        self.plan = epochs if isinstance(epochs, EpochPlan) else EpochPlan(int(epochs))
        self.budget = budget
        self.monitor = monitor
        self.mode = mode
        self.best = best
        self.state = dict(state or {})
        self.keep = list(keep or [])
        self._t0 = time.perf_counter()
        self._lr: float | None = None

    @property
    def epochs(self) -> int:
        return self.plan.epochs

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state.get("epoch"):  # resuming: the generators and counters of that epoch
            missing = restore_resume_state(self.model, self.keep, self.state.get("resume"),
                                           str(self.folder / STATE))
            for line in missing:
                log.warning("resume is not exact: %s", line)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()
        # after a scheduler set it: the rate this epoch trains with
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return not math.isnan(value)
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        logs.pop("learning_rate", None)  # put there by the schedulers: recorded below
        # epochs are counted from 1 in history.csv, as on the console and in the plots
        done = epoch + 1
        row = {"epoch": done, **{k: float(v) for k, v in sorted(logs.items())}}
        row["learning_rate"] = self._lr if self._lr is not None else float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._t0, 3)
        value = logs.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"train.monitor {self.monitor!r} is not among the logged metrics: {sorted(logs)}"
            )
        improved = self._improved(float(value))
        best = float(value) if improved else self.best
        rows = [r for r in self.folder.history() if int(r["epoch"]) < done]
        # cumulative optimizer steps after each epoch: which epoch a last.keras holds
        steps = (list(self.state.get("optimizer_steps") or []) + [None] * done)[:epoch]
        commit = EpochCommit(self.run_dir, done)
        commit.text(HISTORY, history_text(rows + [row]))
        commit.model("last.keras", self.model)
        last = commit.fingerprint("last.keras")
        if improved:
            commit.copy("best.keras", "last.keras")
        state = {"epoch": done, "best": best,
                 "best_epoch": done if improved else self.state.get("best_epoch"),
                 "monitor": self.monitor, "mode": self.mode, "epochs_planned": self.epochs,
                 "stopped_early": False, "optimizer_steps": steps + [optimizer_steps(self.model)],
                 "files": {"last.keras": last, "best.keras": last if improved
                           else (self.state.get("files") or {}).get("best.keras")},
                 "resume": resume_state(self.model, self.keep)}
        if self.budget is not None:
            state[BUDGET_KEY] = self.budget.state()
        commit.text(STATE, json_text(state))
        commit.commit()
        self.best, self.state = best, state
        plot_history(self.folder / HISTORY, self.folder / "plots" / "curves.png")

    def on_train_end(self, logs: dict | None = None) -> None:
        state = self.folder.read_state()
        budget_stop = self.budget is not None and self.budget.stopped
        if self.model.stop_training and not budget_stop and state.get("epoch", 0) < self.epochs:
            # early stopping: the run is finished unless it is resumed with more epochs
            state["stopped_early"] = True
            self.folder.write_state(state)


def _finite(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A history row for JSON: NaN and infinities become null."""
    if row is None:
        return None
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()}


# --------------------------------------------------------------------------- training


def optimizer_steps(model: keras.Model) -> int:
    """Steps the optimizer has taken (its counter may be a tf.distribute MirroredVariable)."""
    value = model.optimizer.iterations.value
    return int(value.numpy() if hasattr(value, "numpy") else value)


def held_epoch(model: keras.Model, state: dict[str, Any], steps: int) -> int:
    """The finished epochs a loaded last.keras holds: the epoch whose end state.json recorded at
    the optimizer's step count, else (older run folders) the step count over steps per epoch."""
    iterations = optimizer_steps(model)
    known = state.get("optimizer_steps") or []
    if iterations in known:
        return known.index(iterations) + 1
    return iterations // steps


def finished(run_dir: Path, state: dict[str, Any]) -> bool:
    """Whether the end of training (calibration, metrics.json) was done for the state's epoch:
    a run killed during it is finished again on resume."""
    try:
        metrics = RunFolder(run_dir).read_json(METRICS) or {}
        return (metrics.get("epochs_done") == state.get("epoch")
                and metrics.get("best_epoch") == state.get("best_epoch"))
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best: float | None
    best_epoch: int | None
    history: list[dict[str, Any]]


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Build (or load) models under Keras's dtype policy ``name``; restores the previous one.

    A policy is fixed per layer when the layer is made, so only construction needs it; a model
    loaded outside this context (inference) computes in float32 whatever it was trained in.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolve_precision(name))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(config: Config, learning_rate: float | None = None,
                steps_per_epoch: int | None = None) -> MultiTaskModel:
    """The untrained model of ``config``, compiled with Adam (:class:`FusedAdam`) and
    ``train.jit_compile`` / ``train.steps_per_execution`` (:func:`step_options`;
    ``steps_per_epoch`` caps the latter)."""
    d = config.data
    with precision_policy(config.train.precision):
        model = MultiTaskModel(
            spec=config.network_spec(),
            loss={"weights": dict(config.loss.weights), "uncertainty": config.loss.uncertainty,
                  "dice_smooth": config.loss.dice_smooth, "dice": config.loss.dice},
            preprocessing=data_preprocessing(d),
            name="mtl",
        )
        use_weight_gradient(model, config.train.weight_gradient)
        lr = config.train.learning_rate if learning_rate is None else learning_rate
        # Keras's Adam through TensorFlow's fused kernel; float16: wrapped in loss scaling
        model.compile(optimizer=FusedAdam(lr), **step_options(config.train, steps_per_epoch))
    return model


def step_options(train: Any, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """``model.compile``'s ``jit_compile`` and ``steps_per_execution`` from ``train.*``.

    With ``steps_per_epoch``, ``steps_per_execution`` is cut to its largest divisor: Keras runs
    whole executions, so one that did not divide the epoch would train on the next epoch's
    batches (and end the planned dataset early).
    """
    spe = int(train.steps_per_execution)
    if steps_per_epoch:
        spe = max(d for d in range(1, min(spe, steps_per_epoch) + 1) if steps_per_epoch % d == 0)
        if spe != train.steps_per_execution:
            log.info("train.steps_per_execution %d -> %d, the largest divisor of the %d steps "
                     "per epoch", train.steps_per_execution, spe, steps_per_epoch)
    return {"jit_compile": train.jit_compile, "steps_per_execution": spe}


@dataclass
class Start:
    """Where a training session reads and writes, and the epoch it continues from."""

    run: RunFolder  # the run folder (a new run's non-chief worker: its scratch folder)
    out: RunFolder  # where this process writes: the run folder, or a non-chief's scratch folder
    resume: bool
    chief: bool
    state: dict[str, Any]  # state.json of the run resumed; {"epoch": 0, "best": None} when new
    stopped: bool  # it stopped early and is not resumed with more epochs

    @property
    def epoch(self) -> int:
        """Epochs done: training continues with the next."""
        return int(self.state["epoch"])


@dataclass
class TrainingData:
    """The run's datasets, opened, checked and split, and the batch arithmetic of the strategy."""

    sources: list[Source]
    scale: Any  # mtl.distribute.scaling: replicas, global batch, learning rate
    steps: int  # steps per epoch
    card: dict[str, Any]  # the model card the datasets make
    skipped_at_preflight: list[Any]
    errors: LoadErrors  # items that failed to load while training


@dataclass
class Pipelines:
    """The tf.data input of the fit, from the epoch the run continues with."""

    train: Any
    val: Any | None
    val_steps: int | None
    fitting: bool  # False: every epoch is done, only the end of training is redone
    monitor: str  # train.monitor, less its val_ prefix when there is no validation


def train(
    config: Config,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    verbose: int | str = "auto",
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train per ``config`` into a new run folder, or continue ``run_dir`` with ``resume``.

    Under a multi-worker strategy every worker runs this; only the chief writes the run folder,
    the others write to a scratch folder ``<runs_dir>/.workers/<name>-worker<i>``.
    """
    started = time.perf_counter()  # what train.time_budget_minutes counts from
    if config.train.time_budget_minutes is not None and cluster_role().num_workers > 1:
        raise ConfigError("train.time_budget_minutes does not work across several workers (each "
                          "would time its own epochs): --set train.time_budget_minutes=null and "
                          "size train.epochs")
    # first: MultiWorkerMirroredStrategy needs a fresh runtime
    strategy = make_strategy(config.train.strategy)
    if config.train.init_from and not resume:  # refused before a run folder is made
        check_start_from(config)
    start = open_run(config, run_dir, resume)
    if already_finished(config, start):
        return TrainResult(start.run.path, start.epoch, start.state.get("best"),
                           start.state.get("best_epoch"), start.run.history())
    keras.utils.set_random_seed(config.seed + start.epoch)
    data = training_data(config, start, strategy, verbose)
    model, start = training_model(config, start, data, strategy)
    pipelines = input_pipelines(config, start, data, strategy)
    seconds = fit(config, start, data, pipelines, model, verbose, extra_callbacks, started)
    return finish(config, start, data, pipelines, model, seconds)


def open_run(config: Config, run_dir: Path | None, resume: bool) -> Start:
    """A new run folder (named after the run, with config.yaml), or on resume ``run_dir``,
    recovered from an interrupted epoch commit and checked; a non-chief worker writes to a
    scratch folder instead."""
    t = config.train
    role = cluster_role()
    if resume:
        if run_dir is None or not (Path(run_dir) / CONFIG).is_file():
            raise ConfigError(f"--resume needs an existing run folder with config.yaml: {run_dir}")
        if role.is_chief:  # an epoch commit cut short by a kill: finish or discard it
            note = recover(run_dir)
            if note:
                log.warning(note)
        run = RunFolder(run_dir)
        state = run.read_state()
        run.checked_history()
    else:
        state = {"epoch": 0, "best": None}
    if role.is_chief:
        if not resume:
            run = RunFolder.create(t.runs_dir, config.name)
            run.write_text(CONFIG, config.to_yaml())
        out = run
    else:
        out = RunFolder.scratch(
            Path(t.runs_dir) / ".workers" / f"{config.name}-worker{role.task_index}")
        if not resume:  # the chief's folder name is not known here: it is only read on resume
            run = out
    # early stopping ended it and it is not resumed with more epochs; or its budget is spent
    ceiling = planned_ceiling(state)
    stopped = bool(state.get("stopped_early") and t.epochs <= (ceiling or t.epochs)
                   or budget_spent(state, t.epochs, t.time_budget_minutes))
    return Start(run, out, resume, role.is_chief, state, stopped)


def already_finished(config: Config, start: Start) -> bool:
    """Whether a resumed run has nothing left to do: every epoch (or it stopped early) and the
    end of training done."""
    done = start.epoch >= config.train.epochs or start.stopped
    if done and finished(start.run.path, start.state):
        why = ""
        if start.stopped:
            why = (", stopped early" if start.state.get("stopped_early") else
                   ", train.time_budget_minutes is spent: resume with a larger one to go on")
        log.info("run %s already finished (%d epochs%s)", start.run.path, start.epoch, why)
        return True
    return False


def training_data(config: Config, start: Start, strategy: Any, verbose: int | str) -> TrainingData:
    """The strategy's batch and learning-rate scaling (distribution.json), the datasets opened,
    checked and split (splits.json, data_summary.json) and the model card they make."""
    t = config.train
    scale = scaling(strategy, t.batch_size, t.learning_rate, t.lr_scaling)
    log.info("distribution: %s", scale.describe())
    start.out.write_json("distribution.json",
                         {**scale.to_dict(), "precision": resolve_precision(t.precision),
                          "weight_gradient": resolve_weight_gradient(t.weight_gradient)})
    sources = open_sources(config)
    skipped_at_preflight = (
        preflight(sources, config.data.on_error, progress=verbose not in (0, 2) and start.chief)
        if config.data.preflight else []
    )
    copies = assign_splits(sources, config, start.out.path, reuse=start.resume,
                           saved_in=start.run.path)
    summary = data_summary(sources, copies, cv=config.data.cv, refit=config.data.refit)
    start.out.write_json(DATA_SUMMARY, summary)
    card = training_card(config.name, summary, {s.name: s.config.format for s in sources},
                         list(config.data.classes))
    steps = t.steps_per_epoch or steps_per_epoch(sources, "train", scale.global_batch)
    return TrainingData(sources, scale, steps, card, skipped_at_preflight, LoadErrors())


def training_model(config: Config, start: Start, data: TrainingData, strategy: Any
                   ) -> tuple[keras.Model, Start]:
    """The model to train, carrying the card: a resumed run's last.keras, else a new one. On
    resume, the run folder is checked against the epoch the loaded weights hold (the returned
    start continues from that epoch)."""
    t = config.train
    last = start.run.committed("last.keras")
    if start.resume and start.epoch and not last.is_file():
        raise ResumeError(f"{start.run / 'last.keras'}: cannot resume, the checkpoint of epoch "
                          f"{start.epoch} is missing; best.keras may still be usable, or "
                          "start a new run")
    with strategy.scope(), precision_policy(t.precision):
        if start.resume and last.is_file():
            model = load_checkpoint(last, start.run / "last.keras", t, data.steps)
        else:
            model = build_model(config, learning_rate=data.scale.learning_rate,
                                steps_per_epoch=data.steps)
            if t.init_from:
                try:
                    start_from(model, t.init_from, data.sources)
                except WarmStartError:
                    if not start.epoch:  # nothing trained yet: no half-made run is left
                        shutil.rmtree(start.run.path, ignore_errors=True)
                    raise
    # every file saved from here carries the card; temperatures are fitted when training ends
    model.card, model.calibration = data.card, None
    if start.resume:
        start = held_start(config, start, model, data.steps, last.is_file())
    return model, start


def check_start_from(config: Config) -> None:
    """Whether ``train.init_from`` names a model that can start this run (WarmStartError, a
    ConfigError, says why not), from its stored config alone."""
    from mtl.model.warm_start import check_init_from, resolve_init_path

    check_init_from(resolve_init_path(config.train.init_from), config.network_spec(),
                    data_preprocessing(config.data))


def start_from(model: keras.Model, init_from: str, sources: list[Source]) -> None:
    """``train.init_from``: the new model takes a trained model's weights
    (:func:`mtl.model.warm_start.warm_start`); says so in the log. Refused (WarmStartError)
    when the model's run trained on an item of this run's validation or test split."""
    from mtl.model.warm_start import resolve_init_path, used_held_out, warm_start

    path = resolve_init_path(init_from)
    leaked = used_held_out(path, sources, what=f"train.init_from: {path}",
                           against="this run's validation and test items")
    if leaked:
        raise WarmStartError(
            f"train.init_from: {path}'s run trained on {len(leaked)} patient(s) of this "
            f"run's validation and test splits (e.g. {', '.join(leaked[:3])}); its scores "
            "would not be honest. Use the same data.split and seed as that run (and, in a "
            "cross-validation, the same data.cv_folds and data.cv_fold), or another model")
    done = warm_start(model, keras.models.load_model(path))
    widened = (f"; {len(done['widened'])} input weights widened to {done['slices']} slices"
               if done["widened"] else "")
    log.info("weights from %s (%d weights%s)", path, done["weights"], widened)


def load_checkpoint(path: Path, shown: Path, train: Any, steps: int) -> keras.Model:
    """last.keras of a run to resume, compiled with this run's ``train.jit_compile``,
    ``steps_per_execution`` and ``weight_gradient`` (not those saved with it) and the same
    optimizer, so its state carries on; ``shown``: the name errors give the file."""
    try:
        model = keras.models.load_model(path)
    except Exception as exc:  # noqa: BLE001 - zip, HDF5 and Keras errors alike
        raise ResumeError(f"{shown}: cannot resume, the checkpoint cannot be loaded "
                          f"({describe(exc)}); best.keras may still be usable, or start a new "
                          "run") from None
    use_weight_gradient(model, train.weight_gradient)
    model.compile(optimizer=model.optimizer, **step_options(train, steps))
    return model


def held_start(config: Config, start: Start, model: keras.Model, steps: int, loaded: bool
               ) -> Start:
    """The start of a resumed run at the epoch the loaded weights have seen (state.json may be
    from an older mtl that did not commit an epoch's files together, or edited): the chief
    checks state.json, best.keras and history.csv against it and repairs them from history.csv."""
    held = held_epoch(model, start.state, steps) if loaded else 0
    state = start.state
    if start.chief:
        state, note = reconcile(start.run.path, state, start.run.history(), held,
                                config.train.monitor, config.train.monitor_mode, history_text)
        if note:
            log.warning(note)
    elif held != start.epoch:
        state = {**state, "epoch": held, "resume": None}
    if held != start.epoch:
        keras.utils.set_random_seed(config.seed + held)
    return replace(start, state=state)


def input_pipelines(config: Config, start: Start, data: TrainingData, strategy: Any) -> Pipelines:
    """The training pipeline from the epoch the run continues with (the plan of an epoch is a
    function of the seed and the epoch) and the validation pipeline."""
    t = config.train
    # not fitting: only the end of training is redone
    fitting = start.epoch < t.epochs and not start.stopped
    train_plan = plan_training(data.sources, seed=config.seed, steps=data.steps,
                               batch_size=data.scale.global_batch,
                               epochs=range(start.epoch, t.epochs if fitting else start.epoch + 1))
    encoder = SampleEncoder(config, augment=True, cache=config.data.cache)

    def build_train(shard: int, shards: int, batch: int):
        return make_dataset(data.sources, train_plan.shard(shard, shards), encoder,
                            batch_size=batch, on_error=config.data.on_error,
                            num_parallel_calls=config.data.num_parallel_calls,
                            workers=config.data.workers, errors=data.errors)

    train_ds = distributed_dataset(strategy, build_train, t.batch_size)
    val_ds, val_steps = validation_pipeline(config, data, strategy)
    monitor = t.monitor if val_ds is not None or not t.monitor.startswith("val_") else t.monitor[4:]
    return Pipelines(train_ds, val_ds, val_steps, fitting, monitor)


def validation_pipeline(config: Config, data: TrainingData, strategy: Any
                        ) -> tuple[Any | None, int | None]:
    """(the validation pipeline, its steps), or (None, ...) without validation. Distributed,
    every replica sees equal batches and every worker the same number of steps."""
    t, scale = config.train, data.scale
    val_plan = plan_split(data.sources, "val")
    val_steps = t.val_steps
    distributed = scale.replicas > 1 or scale.workers > 1
    if distributed:
        full = len(val_plan) // scale.global_batch
        if full == 0 and len(val_plan):
            log.warning("validation split (%d items) is smaller than one global batch (%d): "
                        "no validation", len(val_plan), scale.global_batch)
        val_steps = min(val_steps or full, full)
    if not (len(val_plan) and (val_steps or not distributed)):
        return None, val_steps
    encoder = SampleEncoder(config, augment=False)

    def build_val(shard: int, shards: int, batch: int):
        ds = make_dataset(data.sources, val_plan.shard(shard, shards), encoder, batch_size=batch,
                          on_error=config.data.on_error, drop_remainder=distributed,
                          num_parallel_calls=config.data.num_parallel_calls,
                          workers=config.data.workers, errors=data.errors)
        if val_steps:
            ds = ds.take(val_steps * (scale.replicas // scale.workers) if distributed else val_steps)
        return ds.cache() if config.data.cache_val else ds

    return distributed_dataset(strategy, build_val, t.batch_size), val_steps


def run_callbacks(config: Config, start: Start, learning_rate: float, monitor: str,
                  started: float | None = None) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule, early stopping, the time budget and, after them, the run
    recorder: it saves their decisions and restores their counters on resume. ``started``: when
    this session's training began (``time.perf_counter()``), what the time budget counts from."""
    t = config.train
    state = start.state if start.resume else {}
    plan = initial_plan(t.epochs, state, t.time_budget_minutes)
    if plan.epochs != t.epochs:
        log.info("time budget: %d of train.epochs=%d planned, from the epoch time of the last "
                 "session", plan.epochs, t.epochs)
    callbacks: list[keras.callbacks.Callback] = []
    if t.lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            CosineSchedule(learning_rate, plan, t.lr_min_fraction)))
    elif t.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode=t.monitor_mode, factor=0.5, patience=t.reduce_lr_patience,
            min_lr=1e-6, verbose=0))
    if t.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=t.monitor_mode, patience=t.early_stopping_patience))
    budget = None
    if t.time_budget_minutes is not None:
        kept = resumed_budget(state)
        budget = TimeBudget(t.time_budget_minutes, plan, t.epochs,
                            time.perf_counter() if started is None else started,
                            used_before=float(kept.get("seconds_used", 0.0)),
                            kept_estimate=kept.get("epoch_seconds"))
        callbacks.append(budget)
    callbacks.append(RunRecorder(start.out.path, monitor, t.monitor_mode,
                                 start.state.get("best") if start.resume else None, plan,
                                 state=start.state if start.resume else None,
                                 keep=[c for c in callbacks if c is not budget], budget=budget))
    return callbacks


def fit(config: Config, start: Start, data: TrainingData, pipelines: Pipelines,
        model: keras.Model, verbose: int | str,
        extra_callbacks: list[keras.callbacks.Callback] | None,
        started: float | None = None) -> float:
    """``model.fit`` over the epochs left (fewer where the time budget stops it), the run
    recorder committing each; returns seconds."""
    t = config.train
    if data.scale.replicas > 1 and config.model.sync_batchnorm:
        log.info("synchronized BatchNormalization in %d layers", synchronize_batchnorm(model))
    callbacks = run_callbacks(config, start, data.scale.learning_rate, pipelines.monitor, started)
    callbacks += extra_callbacks or []
    fitting_from = time.perf_counter()
    if pipelines.fitting:
        model.fit(
            pipelines.train,
            validation_data=pipelines.val,
            validation_steps=pipelines.val_steps if pipelines.val is not None else None,
            epochs=t.epochs,
            initial_epoch=start.epoch,
            steps_per_epoch=data.steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the epoch plan already fixes the order
        )
    return time.perf_counter() - fitting_from


def finish(config: Config, start: Start, data: TrainingData, pipelines: Pipelines,
           model: keras.Model, seconds: float) -> TrainResult:
    """The end of training: temperatures fitted and cards written into both models
    (:func:`finish_run_models`), then metrics.json."""
    out = start.out
    state = out.read_state()
    history = out.history()
    calibration = finish_run_models(out.path, model, data.sources, config, data.card, history,
                                    state, validated=pipelines.val is not None)
    summary = {
        "epochs_done": state["epoch"],
        "monitor": pipelines.monitor,
        "best": state.get("best"),
        "best_epoch": state.get("best_epoch"),
        "last": _finite(history[-1]) if history else None,
        "distribution": data.scale.to_dict(),
        "train_seconds_this_session": round(seconds, 1),
        "train_seconds_total": round(sum(float(r.get("seconds", 0)) for r in history), 1),
        "epochs_planned": state.get("epochs_planned"),
        "time_budget": resumed_budget(state) or None,
        # each skipped item once (adapters also list their load failures in adapter.skipped)
        **skip_report(data.sources, data.skipped_at_preflight, data.errors.items),
        "calibration": calibration,
    }
    out.write_json(METRICS, summary)
    return TrainResult(out.path, state["epoch"], state.get("best"), state.get("best_epoch"),
                       history)


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The saved config of a run, with overrides of ``train.*`` (e.g. more epochs), saved back.

    Anything else (data, classes, model, loss) is fixed by the saved model and splits.
    """
    fixed = [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith("train.")]
    if fixed:
        raise ConfigError(f"--resume accepts only train.* overrides (e.g. --epochs); got {fixed}")
    config = load_config(run_dir / CONFIG, overrides)
    if cluster_role().is_chief:
        RunFolder(run_dir).write_text(CONFIG, config.to_yaml())
    return config


__all__ = ["TrainResult", "build_model", "resume_config", "step_options", "train"]
