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

Every file is written atomically (temporary file, then rename); the files of one epoch
(history.csv, last.keras, best.keras, state.json) are committed together (:mod:`mtl.checkpoint`),
so a run killed at any moment resumes from its last finished epoch with ``--resume``, exactly as
if it had not stopped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import keras

from mtl.checkpoint import (
    EpochCommit, committed, reconcile, recover, restore_resume_state, resume_state,
)
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
from mtl.data.preprocess import preprocessing_spec
from mtl.distribute import (
    cluster_role, distributed_dataset, make_strategy, scaling, synchronize_batchnorm,
)
from mtl.data.copies import check_groups_together, link_copies, split_jointly
from mtl.data.splits import check_no_leak, match_case_ids, split_records
from mtl.model.card import finish_run_models, training_card
from mtl.model.multitask import MultiTaskModel
from mtl.model.optimizers import FusedAdam
from mtl.plots import plot_history
from mtl.precision import resolve_precision

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- run folder


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs/<name>``, or ``<name>2``, ``<name>3``... so no run is ever overwritten."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = runs_dir / (name if k == 1 else f"{name}{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"too many runs named {name!r} in {runs_dir}")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class ResumeError(ConfigError):
    """A run folder that cannot be continued; the message names the file and what to do."""


def read_state(run_dir: Path) -> dict[str, Any]:
    path = committed(run_dir, "state.json")
    if not path.is_file():
        return {"epoch": 0, "best": None}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or state["epoch"] < 0:
            raise ValueError("no epoch count in it")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResumeError(f"{path}: cannot resume, the file is damaged ({describe(exc)}); "
                          "history.csv and last.keras say how far the run got") from None
    return state


def describe(exc: BaseException) -> str:
    """One line for an exception: its text, else its type."""
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def check_history(path: Path) -> list[dict[str, Any]]:
    """history.csv of a run to resume: rows numbered 1, 2, 3... with numeric losses."""
    try:
        rows = read_history(path)
    except (csv.Error, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ResumeError(f"{path}: cannot resume, the file is damaged ({describe(exc)})") from None
    for i, row in enumerate(rows, start=1):
        if row.get("epoch") != i or not isinstance(row.get("loss"), (int, float)):
            raise ResumeError(f"{path}: cannot resume, row {i} is damaged (expected epoch {i} "
                              f"with a numeric loss, got {str(row)[:120]})")
    return rows


# --------------------------------------------------------------------------- splits


def assign_splits(sources: list[Source], config: Config, run_dir: Path, reuse: bool,
                  saved_in: Path | None = None) -> dict[str, Any] | None:
    """Patient-safe splits of every source, saved to (or, on resume, read from) splits.json.

    With ``data.link_copies`` (default) the sources are split together: near-copies in any
    source of the run share a split with each other and with their patient groups
    (:mod:`mtl.data.copies`). Returns the copy counts for ``data_summary.json``: found now, or
    on resume those the run's ``data_summary.json`` recorded (None when linking is off).
    """
    path = run_dir / "splits.json"
    source_path = (saved_in or run_dir) / "splits.json"
    saved = json.loads(source_path.read_text()) if reuse and source_path.is_file() else None
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
        summary_path = (saved_in or run_dir) / "data_summary.json"
        if summary_path.is_file():  # the counts found when the run started
            copies = json.loads(summary_path.read_text()).get("_near_copies")
    elif config.data.link_copies:
        links = link_copies(sources)
        parts = split_jointly(sources, links, config.data.split, seed=config.seed)
        check_groups_together(links, parts)
        for source, split in zip(sources, parts):
            source.splits = split
        copies = links.summary()
        log.info("near-copies: %d cross-dataset groups (%d items); %d split groups",
                 copies["cross_dataset_groups"], copies["items_in_cross_dataset_groups"],
                 copies["split_groups"])
    else:
        for source in sources:
            source.splits = split_records(source.records, config.data.split, seed=config.seed)
    out: dict[str, Any] = {}
    for source in sources:
        check_no_leak(source.records, source.splits)
        out[source.name] = {
            "format": source.config.format,
            "root": source.config.root,
            "patients": {
                split: len({source.records[i].patient_id for i in idx})
                for split, idx in source.splits.items()
            },
            "case_ids": {
                split: [source.records[i].case_id for i in idx]
                for split, idx in source.splits.items()
            },
        }
    write_atomic(path, json.dumps(out, indent=1))
    return copies


def data_summary(sources: list[Source], copies: dict[str, Any] | None = None) -> dict[str, Any]:
    """Items and labelled tasks per source and split; ``copies``: near-copy counts, under
    ``"_near_copies"`` (see :meth:`mtl.data.copies.CopyLinks.summary`)."""
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
    return summary


# --------------------------------------------------------------------------- callback


class RunRecorder(keras.callbacks.Callback):
    """Commits history.csv, last.keras, best.keras and state.json together every epoch
    (:class:`mtl.checkpoint.EpochCommit`), then redraws the curves.

    It must come after the callbacks in ``keep`` (learning-rate plateau, early stopping) in the
    fit's list, so that what it saves includes their decisions at the end of the epoch, and so
    that on resume it restores their counters after their ``on_train_begin`` reset them.
    ``state``: the state.json of the run being resumed (``best``, ``best_epoch`` and the
    ``resume`` states are carried on from it)."""

    def __init__(self, run_dir: Path, monitor: str, mode: str, best: float | None,
                 epochs: int, state: dict[str, Any] | None = None,
                 keep: list[keras.callbacks.Callback] | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.epochs = epochs
        self.monitor = monitor
        self.mode = mode
        self.best = best
        self.state = dict(state or {})
        self.keep = list(keep or [])
        self._t0 = time.perf_counter()
        self._lr: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state.get("epoch"):  # resuming: the generators and counters of that epoch
            missing = restore_resume_state(self.model, self.keep, self.state.get("resume"),
                                           str(self.run_dir / "state.json"))
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
        rows = [r for r in read_history(self.run_dir / "history.csv") if int(r["epoch"]) < done]
        # cumulative optimizer steps after each epoch: which epoch a last.keras holds
        steps = (list(self.state.get("optimizer_steps") or []) + [None] * done)[:epoch]
        commit = EpochCommit(self.run_dir, done)
        commit.text("history.csv", history_text(rows + [row]))
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
        commit.text("state.json", json.dumps(state, indent=1))
        commit.commit()
        self.best, self.state = best, state
        plot_history(self.run_dir / "history.csv", self.run_dir / "plots" / "curves.png")

    def on_train_end(self, logs: dict | None = None) -> None:
        state = read_state(self.run_dir)
        if self.model.stop_training and state.get("epoch", 0) < self.epochs:
            # early stopping: the run is finished unless it is resumed with more epochs
            state["stopped_early"] = True
            write_atomic(self.run_dir / "state.json", json.dumps(state, indent=1))


def history_text(rows: list[dict[str, Any]]) -> str:
    """history.csv's text for ``rows`` (columns: every key, in order of first appearance)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def append_history(path: Path, row: dict[str, Any]) -> None:
    rows = read_history(path)
    rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
    write_atomic(path, history_text(rows))


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.csv as rows of numbers; ``epoch`` counts from 1 (files written when it counted
    from 0 are shifted on reading, so a resumed old run continues with the right numbers)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    if rows and rows[0].get("epoch") == 0:
        for row in rows:
            row["epoch"] += 1
    return rows


def _number(text: str | None) -> int | float | str | None:
    """A history.csv cell: int, float, None for an empty cell, else the text."""
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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
        metrics = json.loads((run_dir / "metrics.json").read_text())
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


def cosine_learning_rate(epoch: int, _current: float = 0.0, *, base: float, epochs: int,
                         min_fraction: float) -> float:
    """The learning rate of a 0-based epoch: half a cosine from base down to base * min_fraction,
    reached by the last planned epoch. A function of the epoch alone, so resume needs no state."""
    progress = epoch / max(epochs - 1, 1)
    return float(base * (min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))))


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
            preprocessing=preprocessing_spec(d.image_size, d.channels, d.intensity_percentiles,
                                             d.channel_names),
            name="mtl",
        )
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
    t = config.train
    strategy = make_strategy(t.strategy)  # first: MultiWorkerMirroredStrategy needs a fresh runtime
    role = cluster_role()
    if resume:
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume needs an existing run folder with config.yaml: {run_dir}")
        if role.is_chief:  # an epoch commit cut short by a kill: finish or discard it
            note = recover(run_dir)
            if note:
                log.warning(note)
    state = read_state(run_dir) if resume else {"epoch": 0, "best": None}
    if resume:
        check_history(committed(run_dir, "history.csv"))
    if role.is_chief:
        if not resume:
            run_dir = new_run_dir(t.runs_dir, config.name)
            write_atomic(run_dir / "config.yaml", config.to_yaml())
        write_dir = run_dir
    else:
        write_dir = Path(t.runs_dir) / ".workers" / f"{config.name}-worker{role.task_index}"
        write_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # the chief's folder name is not known here: it is only read on resume
            run_dir = write_dir
    initial_epoch = int(state["epoch"])
    stopped = state.get("stopped_early") and t.epochs <= state.get("epochs_planned", t.epochs)
    if (initial_epoch >= t.epochs or stopped) and finished(run_dir, state):
        log.info("run %s already finished (%d epochs%s)", run_dir, initial_epoch,
                 ", stopped early" if stopped else "")
        return TrainResult(run_dir, initial_epoch, state.get("best"), state.get("best_epoch"),
                           read_history(run_dir / "history.csv"))

    keras.utils.set_random_seed(config.seed + initial_epoch)
    scale = scaling(strategy, t.batch_size, t.learning_rate, t.lr_scaling)
    log.info("distribution: %s", scale.to_dict())
    write_atomic(write_dir / "distribution.json", json.dumps(
        {**scale.to_dict(), "precision": resolve_precision(t.precision)}, indent=1))
    sources = open_sources(config)
    skipped_at_preflight = (
        preflight(sources, config.data.on_error, progress=verbose not in (0, 2) and role.is_chief)
        if config.data.preflight else []
    )
    copies = assign_splits(sources, config, write_dir, reuse=resume, saved_in=run_dir)
    summary_data = data_summary(sources, copies)
    write_atomic(write_dir / "data_summary.json", json.dumps(summary_data, indent=1))
    card = training_card(config.name, summary_data, {s.name: s.config.format for s in sources},
                         list(config.data.classes))

    steps = t.steps_per_epoch or steps_per_epoch(sources, "train", scale.global_batch)
    last_path = committed(run_dir, "last.keras") if resume else None
    if resume and initial_epoch and not last_path.is_file():
        raise ResumeError(f"{run_dir / 'last.keras'}: cannot resume, the checkpoint of epoch "
                          f"{initial_epoch} is missing; best.keras may still be usable, or "
                          "start a new run")
    with strategy.scope(), precision_policy(t.precision):
        if resume and last_path.is_file():
            try:
                model = keras.models.load_model(last_path)
            except Exception as exc:  # noqa: BLE001 - zip, HDF5 and Keras errors alike
                raise ResumeError(f"{run_dir / 'last.keras'}: cannot resume, the checkpoint "
                                  f"cannot be loaded ({describe(exc)}); best.keras may still "
                                  "be usable, or start a new run") from None
            # this run's train.jit_compile and steps_per_execution, not those saved with the
            # model; the same optimizer, so its state carries on
            model.compile(optimizer=model.optimizer, **step_options(t, steps))
        else:
            model = build_model(config, learning_rate=scale.learning_rate, steps_per_epoch=steps)
    # every file saved from here carries the card; temperatures are fitted when training ends
    model.card, model.calibration = card, None
    if resume:
        # which epoch the saved weights have seen (state.json may be from an older mtl that
        # did not commit an epoch's files together, or edited), then state.json, best.keras
        # and history.csv checked against it and repaired from history.csv
        held = held_epoch(model, state, steps) if last_path.is_file() else 0
        if role.is_chief:
            state, note = reconcile(run_dir, state, read_history(run_dir / "history.csv"), held,
                                    t.monitor, t.monitor_mode, history_text)
            if note:
                log.warning(note)
        elif held != initial_epoch:
            state = {**state, "epoch": held, "resume": None}
        if held != initial_epoch:
            initial_epoch = held
            keras.utils.set_random_seed(config.seed + initial_epoch)
    errors = LoadErrors()
    fitting = initial_epoch < t.epochs and not stopped  # else only the end of training is redone
    train_plan = plan_training(sources, seed=config.seed, steps=steps,
                               batch_size=scale.global_batch,
                               epochs=range(initial_epoch, t.epochs if fitting else initial_epoch + 1))
    encoder = SampleEncoder(config, augment=True, cache=config.data.cache)

    def build_train(shard: int, shards: int, batch: int):
        return make_dataset(sources, train_plan.shard(shard, shards), encoder, batch_size=batch,
                            on_error=config.data.on_error,
                            num_parallel_calls=config.data.num_parallel_calls,
                            workers=config.data.workers, errors=errors)

    train_ds = distributed_dataset(strategy, build_train, t.batch_size)
    val_plan = plan_split(sources, "val")
    val_ds, val_steps = None, t.val_steps
    distributed = scale.replicas > 1 or scale.workers > 1
    if distributed:
        # every replica must see equal batches and every worker the same number of steps
        full = len(val_plan) // scale.global_batch
        if full == 0 and len(val_plan):
            log.warning("validation split (%d items) is smaller than one global batch (%d): "
                        "no validation", len(val_plan), scale.global_batch)
        val_steps = min(val_steps or full, full)
    if len(val_plan) and (val_steps or not distributed):
        val_encoder = SampleEncoder(config, augment=False)

        def build_val(shard: int, shards: int, batch: int):
            ds = make_dataset(sources, val_plan.shard(shard, shards), val_encoder, batch_size=batch,
                              on_error=config.data.on_error, drop_remainder=distributed,
                              num_parallel_calls=config.data.num_parallel_calls,
                              workers=config.data.workers, errors=errors)
            if val_steps:
                ds = ds.take(val_steps * (scale.replicas // scale.workers) if distributed else val_steps)
            return ds.cache() if config.data.cache_val else ds

        val_ds = distributed_dataset(strategy, build_val, t.batch_size)
    monitor = t.monitor if val_ds is not None or not t.monitor.startswith("val_") else t.monitor[4:]

    if scale.replicas > 1 and config.model.sync_batchnorm:
        log.info("synchronized BatchNormalization in %d layers", synchronize_batchnorm(model))

    callbacks: list[keras.callbacks.Callback] = []
    if t.lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            partial(cosine_learning_rate, base=scale.learning_rate, epochs=t.epochs,
                    min_fraction=t.lr_min_fraction)))
    elif t.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode=t.monitor_mode, factor=0.5, patience=t.reduce_lr_patience,
            min_lr=1e-6, verbose=0))
    if t.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=t.monitor_mode, patience=t.early_stopping_patience))
    # after the schedulers: it saves their decisions and restores their counters on resume
    callbacks.append(RunRecorder(write_dir, monitor, t.monitor_mode,
                                 state.get("best") if resume else None, t.epochs,
                                 state=state if resume else None, keep=list(callbacks)))
    callbacks += extra_callbacks or []

    started = time.perf_counter()
    if fitting:
        model.fit(
            train_ds,
            validation_data=val_ds,
            validation_steps=val_steps if val_ds is not None else None,
            epochs=t.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the epoch plan already fixes the order
        )
    elapsed = time.perf_counter() - started
    state = read_state(write_dir)
    history = read_history(write_dir / "history.csv")
    calibration = finish_run_models(write_dir, model, sources, config, card, history, state,
                                    validated=val_ds is not None)
    summary = {
        "epochs_done": state["epoch"],
        "monitor": monitor,
        "best": state.get("best"),
        "best_epoch": state.get("best_epoch"),
        "last": _finite(history[-1]) if history else None,
        "distribution": scale.to_dict(),
        "train_seconds_this_session": round(elapsed, 1),
        "train_seconds_total": round(sum(float(r.get("seconds", 0)) for r in history), 1),
        # each skipped item once (adapters also list their load failures in adapter.skipped)
        **skip_report(sources, skipped_at_preflight, errors.items),
        "calibration": calibration,
    }
    write_atomic(write_dir / "metrics.json", json.dumps(summary, indent=1))
    return TrainResult(write_dir, state["epoch"], state.get("best"), state.get("best_epoch"), history)


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The saved config of a run, with overrides of ``train.*`` (e.g. more epochs), saved back.

    Anything else (data, classes, model, loss) is fixed by the saved model and splits.
    """
    fixed = [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith("train.")]
    if fixed:
        raise ConfigError(f"--resume accepts only train.* overrides (e.g. --epochs); got {fixed}")
    config = load_config(run_dir / "config.yaml", overrides)
    if cluster_role().is_chief:
        write_atomic(run_dir / "config.yaml", config.to_yaml())
    return config


__all__ = ["ResumeError", "TrainResult", "build_model", "new_run_dir", "resume_config",
           "step_options", "train"]
