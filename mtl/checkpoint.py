"""Crash-consistent checkpoints of a run folder, and the state that makes a resume exact.

**One epoch, one commit.** The files an epoch changes (``history.csv``, ``last.keras``,
``best.keras`` when it improved, ``state.json``) are first written completely, and synced, into
``<run>/.pending/``; then ``.pending/COMMIT`` (the list of those files) is written atomically:
that rename is the commit point. Only then are the staged files renamed into place, and
``.pending`` removed. A process killed at any moment leaves one of two states, and
:func:`recover` (run before every resume and every commit) finishes both:

* no ``COMMIT``: the epoch never committed; the run folder still holds the previous epoch's
  files, untouched, and ``.pending`` is deleted;
* ``COMMIT`` present: every staged file is complete; the renames not yet done are done
  (renaming is idempotent: a file already moved is no longer in ``.pending``).

So the files of one epoch change together or not at all, whatever the kill point.

**What decides the next batch and update** and where each is kept: the weights, batch-norm
statistics, optimizer slots, step count and learning rate are in ``last.keras`` (saved with the
optimizer); the epoch's data plan and augmentation seeds are a function of ``(seed, epoch)``
(:func:`mtl.data.pipeline.plan_training`); the dropout random-generator states (not saved in a
``.keras`` file) and the counters of the plateau and early-stopping callbacks are in
``state.json`` (``resume``), written in the same commit. :func:`restore_resume_state` puts them
back, so a run resumed after its last finished epoch continues exactly as if never stopped.

:func:`reconcile` checks ``state.json``, ``history.csv``, ``last.keras`` and ``best.keras``
against each other on resume (for run folders written before commits existed, or edited by
hand) and repairs what it can from ``history.csv``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mtl.files import is_temporary, json_text, sync_path

log = logging.getLogger(__name__)

PENDING = ".pending"
COMMIT = "COMMIT"
#: members of a .keras file that change without the weights changing (card, date)
_UNWEIGHED = {"config.json", "metadata.json"}


# --------------------------------------------------------------------------- file operations
# Every change to a run folder goes through these five functions (the crash tests replace them
# to stop the process at each write point).


def _sync(path: Path) -> None:
    sync_path(path)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _save_model(model: Any, path: Path) -> None:
    model.save(path)
    _sync(path)


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    _sync(dst)


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _remove(path: Path) -> None:
    path.unlink()


# --------------------------------------------------------------------------- commit


class EpochCommit:
    """Stage the files of one epoch, then :meth:`commit` them all at once::

        commit = EpochCommit(run_dir, epoch=3)
        commit.text("state.json", text)
        commit.model("last.keras", model)
        commit.commit()
    """

    def __init__(self, run_dir: Path, epoch: int) -> None:
        self.run_dir = Path(run_dir)
        self.epoch = epoch
        note = recover(self.run_dir)  # a previous commit of this process cannot be pending
        if note:
            log.warning(note)
        self.pending = self.run_dir / PENDING
        self.pending.mkdir()
        self.names: list[str] = []

    def _add(self, name: str) -> Path:
        if name in self.names or "/" in name or name in (COMMIT, PENDING):
            raise ValueError(f"cannot stage {name!r}")
        self.names.append(name)
        return self.pending / name

    def text(self, name: str, text: str) -> None:
        _write(self._add(name), text.encode())

    def model(self, name: str, model: Any) -> Path:
        path = self._add(name)
        _save_model(model, path)
        return path

    def copy(self, name: str, staged: str) -> Path:
        """Stage ``name`` as a copy of the already staged file ``staged``."""
        path = self._add(name)
        _copy(self.pending / staged, path)
        return path

    def fingerprint(self, name: str) -> str | None:
        return fingerprint(self.pending / name)

    def commit(self) -> None:
        marker = self.pending / (COMMIT + ".tmp")
        _write(marker, json.dumps({"epoch": self.epoch, "files": self.names}).encode())
        _replace(marker, self.pending / COMMIT)  # the commit point
        _sync(self.pending)
        _apply(self.run_dir)


def _apply(run_dir: Path, names: list[str] | None = None) -> list[str]:
    """Move the staged files of a committed epoch into place; returns the names moved now."""
    pending = run_dir / PENDING
    if names is None:
        names = json.loads((pending / COMMIT).read_text())["files"]
    moved = []
    for name in names:
        if (pending / name).exists():
            _replace(pending / name, run_dir / name)
            moved.append(name)
    _sync(run_dir)
    _remove(pending / COMMIT)
    shutil.rmtree(pending)
    return moved


def recover(run_dir: Path) -> str | None:
    """Finish or discard an epoch commit that a killed process left in ``run_dir/.pending``.

    Returns one line saying what was done, or None when nothing was pending."""
    run_dir = Path(run_dir)
    pending = run_dir / PENDING
    # temporary files of single-file writes (mtl.files; and of older mtl versions' checkpoints)
    stale = sorted(p.name for p in run_dir.iterdir() if is_temporary(p.name) and p.is_file()) \
        if run_dir.is_dir() else []
    for name in stale:
        _remove(run_dir / name)
    removed = f"; removed unfinished temporary files {', '.join(stale)}" if stale else ""
    if not pending.exists() or (pending.is_dir() and not any(pending.iterdir())):
        if pending.exists():  # killed after the last rename: nothing left to do
            pending.rmdir()
        return f"{run_dir}: {removed[2:]}" if stale else None
    marker = pending / COMMIT
    if marker.is_file():  # past the commit point: every staged file is complete
        try:
            record = json.loads(marker.read_text())
            epoch, names = record["epoch"], list(record["files"])
        except (ValueError, KeyError, TypeError):  # written atomically: only a damaged disk
            epoch = "?"
            names = sorted(p.name for p in pending.iterdir() if p.name != COMMIT
                           and not p.name.endswith(".tmp"))
        moved = _apply(run_dir, names)
        return (f"{run_dir}: the checkpoint of epoch {epoch} was interrupted after it was "
                f"committed; finished it ({', '.join(moved) or 'nothing left to move'})"
                + removed)
    staged = sorted(p.name for p in pending.iterdir())
    shutil.rmtree(pending)
    return (f"{run_dir}: the checkpoint of an epoch was interrupted before it was committed; "
            f"discarded it ({', '.join(staged)}), the previous epoch's files are kept" + removed)


def committed(run_dir: Path, name: str) -> Path:
    """Where ``name`` of the last committed epoch is, for a reader that must not write the run
    folder (a non-chief worker): in ``.pending`` while a committed epoch is not yet moved."""
    staged = Path(run_dir) / PENDING / name
    if (Path(run_dir) / PENDING / COMMIT).is_file() and staged.is_file():
        return staged
    return Path(run_dir) / name


def fingerprint(path: Path) -> str | None:
    """Identifies the weights (and optimizer state) of a ``.keras`` file: the CRC-32 values the
    zip directory holds for its members, except the config (card, calibration) and metadata.
    Reads only the zip directory. None for a missing or unreadable file."""
    try:
        with zipfile.ZipFile(path) as archive:
            crcs = [f"{i.CRC:08x}" for i in archive.infolist() if i.filename not in _UNWEIGHED]
    except (OSError, zipfile.BadZipFile):
        return None
    return "-".join(crcs) or None


# --------------------------------------------------------------------------- resume state


def _seed_variables(model: Any) -> list[Any]:
    """The states of the model's random generators (dropout), in a fixed order."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _plain(value: Any) -> Any:
    """A callback attribute for JSON: numbers (non-finite ones as text), None, bool."""
    if isinstance(value, bool) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if isinstance(value, int) or (hasattr(value, "dtype") and "int" in str(value.dtype)):
        return int(number)
    return number if math.isfinite(number) else str(number)


def _unplain(value: Any) -> Any:
    return float(value) if isinstance(value, str) else value


#: the attributes that carry a callback's decisions from one epoch to the next
CALLBACK_STATE = {
    "ReduceLROnPlateau": ("best", "wait", "cooldown_counter"),
    "EarlyStopping": ("best", "wait", "best_epoch", "stopped_epoch"),
}


def resume_state(model: Any, callbacks: Iterable[Any]) -> dict[str, Any]:
    """What decides the next batch and update besides ``last.keras`` and the epoch number."""
    import keras

    seeds = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_variables(model)]
    states = {}
    for cb in callbacks:
        fields = CALLBACK_STATE.get(type(cb).__name__)
        if fields:
            states[type(cb).__name__] = {f: _plain(getattr(cb, f, None)) for f in fields}
    return {"seed_generators": [[int(x) for x in s] for s in seeds], "callbacks": states}


def restore_resume_state(model: Any, callbacks: Sequence[Any], saved: dict[str, Any] | None,
                         where: str) -> list[str]:
    """Put back what :func:`resume_state` saved; returns what could not be restored (the resume
    is then not exact). Callback counters must be set after the callbacks' ``on_train_begin``
    (which resets them): see :class:`mtl.train.RunRecorder`."""
    if not saved:
        return [f"{where} has no random-generator or callback state (written by an older mtl)"]
    missing = []
    variables = _seed_variables(model)
    seeds = saved.get("seed_generators") or []
    if len(seeds) == len(variables):
        for variable, value in zip(variables, seeds):
            variable.assign(value)
    else:
        missing.append(f"{where}: {len(seeds)} random-generator states for {len(variables)} "
                       "generators in the model")
    for cb in callbacks:
        name = type(cb).__name__
        if name in CALLBACK_STATE:
            if name not in saved.get("callbacks", {}):
                missing.append(f"{where}: no saved state for {name}")
                continue
            for field, value in saved["callbacks"][name].items():
                setattr(cb, field, _unplain(value))
    return missing


# --------------------------------------------------------------------------- consistency


def history_best(rows: Sequence[dict[str, Any]], monitor: str, mode: str
                 ) -> tuple[float | None, int | None]:
    """Best monitored value and its epoch over history rows, with the rule of the run recorder:
    the first non-NaN value, then only strict improvements."""
    best, best_epoch = None, None
    for row in rows:
        value = row.get(monitor)
        if not isinstance(value, (int, float)):
            continue
        value = float(value)
        if best is None or math.isnan(best):
            better = not math.isnan(value)
        else:
            better = value < best if mode == "min" else value > best
        if better:
            best, best_epoch = value, int(row["epoch"])
    return best, best_epoch


def reconcile(run_dir: Path, state: dict[str, Any], history: list[dict[str, Any]],
              held_epoch: int, monitor: str, mode: str,
              write_history: Callable[[list[dict[str, Any]]], str]
              ) -> tuple[dict[str, Any], str | None]:
    """Check ``state.json`` and ``best.keras`` against ``history.csv`` and the epoch that
    ``last.keras`` holds (``held_epoch``), and repair the run folder, in one commit, where they
    disagree. Returns the state to continue from and one line saying what was repaired (None
    when all agreed). ``write_history``: rows -> the text of history.csv."""
    run_dir = Path(run_dir)
    monitor = state.get("monitor") or monitor
    mode = state.get("mode") or mode
    rows = [r for r in history if int(r["epoch"]) <= held_epoch]
    best, best_epoch = history_best(rows, monitor, mode)
    files = dict(state.get("files") or {})
    last_print = fingerprint(run_dir / "last.keras")
    best_print = fingerprint(run_dir / "best.keras")
    problems: list[str] = []
    if int(state.get("epoch", 0)) != held_epoch:
        problems.append(f"state.json said epoch {state.get('epoch', 0)}, last.keras holds epoch "
                        f"{held_epoch}")
    if len(history) != len(rows):
        problems.append(f"history.csv had {len(history)} rows")
    elif len(rows) < held_epoch:
        # rows cannot be made up: keep going, the curves just miss them
        log.warning("%s: history.csv has %d rows for %d finished epochs", run_dir / "history.csv",
                    len(rows), held_epoch)
        best, best_epoch = state.get("best"), state.get("best_epoch")
    best_known = files.get("best.keras")
    best_wrong = best_epoch is not None and "best_epoch" in state and (
        state.get("best_epoch") != best_epoch or best_print is None
        or (best_known is not None and best_known != best_print))
    copy_best = False
    if best_wrong:
        if best_epoch == held_epoch and last_print is not None:
            copy_best = True
            problems.append(f"best.keras did not hold history.csv's best epoch {best_epoch} "
                            f"({monitor} {best:.6g}): copied from last.keras")
        else:
            # the weights of that epoch are gone; best.keras keeps the epoch it holds
            kept = state.get("best_epoch")
            problems.append(f"history.csv's best epoch is {best_epoch} ({monitor} {best:.6g}) "
                            f"but its weights were not kept; best.keras stays at epoch {kept}")
            best_epoch = kept
            kept_row = next((r for r in rows if r["epoch"] == kept), None)
            best = float(kept_row[monitor]) if kept_row and kept_row.get(monitor) is not None \
                else state.get("best")
    if not problems:
        return state, None
    new_state = {**state, "epoch": held_epoch, "best": best, "best_epoch": best_epoch,
                 "monitor": monitor, "mode": mode}
    new_state["files"] = {"last.keras": last_print,
                          "best.keras": last_print if copy_best else best_print}
    if files.get("last.keras") is None or files.get("last.keras") != last_print:
        new_state.pop("resume", None)  # saved with another last.keras than this one
    commit = EpochCommit(run_dir, held_epoch)
    commit.text("history.csv", write_history(rows))
    if copy_best:
        _copy(run_dir / "last.keras", commit._add("best.keras"))
    commit.text("state.json", json_text(new_state))
    commit.commit()
    return new_state, f"{run_dir}: repaired from history.csv: " + "; ".join(problems)


__all__ = ["EpochCommit", "committed", "fingerprint", "history_best", "reconcile", "recover",
           "restore_resume_state", "resume_state"]
