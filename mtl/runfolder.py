"""A run folder ``runs/<name>/``: its name, its files and their formats, in one place.

:class:`RunFolder` creates and names the folder (never over an existing run), writes its files
atomically (:mod:`mtl.files`) and reads and writes the files whose format it owns:

- ``state.json``: the last finished epoch, the best monitored value and what a resume needs
  (written with the epoch's other files by :class:`mtl.checkpoint.EpochCommit`);
- ``history.csv``: one row per finished epoch, ``epoch`` counted from 1 (files of older mtl
  versions that counted from 0 are shifted on reading);
- ``splits.json``: the patient-safe split of every dataset of the run, one entry per dataset::

      {"<dataset name>": {"format": "br35h", "root": "data/br35h",
                          "patients": {"train": 92, "val": 20, "test": 20},
                          "case_ids": {"train": ["1", "2", ...], "val": [...], "test": [...]}}}

Readers of ``state.json`` and ``history.csv`` take a committed epoch's files from
``.pending/`` while they are not yet moved (:func:`mtl.checkpoint.committed`), so a reader that
must not write the folder (a non-chief worker) sees the last committed epoch.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from mtl.checkpoint import committed
from mtl.config import ConfigError
from mtl.files import write_json, write_text

CONFIG = "config.yaml"
STATE = "state.json"
HISTORY = "history.csv"
SPLITS = "splits.json"
DATA_SUMMARY = "data_summary.json"
METRICS = "metrics.json"


class ResumeError(ConfigError):
    """A run folder that cannot be continued; the message names the file and what to do."""


def describe(exc: BaseException) -> str:
    """One line for an exception: its text, else its type."""
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


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


# --------------------------------------------------------------------------- history.csv


def history_text(rows: list[dict[str, Any]]) -> str:
    """history.csv's text for ``rows`` (columns: every key, in order of first appearance)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


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


def append_history(path: Path, row: dict[str, Any]) -> None:
    rows = read_history(path)
    rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
    write_text(path, history_text(rows))


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


# --------------------------------------------------------------------------- state.json


def read_state(run_dir: Path) -> dict[str, Any]:
    """state.json of the last committed epoch; ``{"epoch": 0, "best": None}`` before the first."""
    path = committed(run_dir, STATE)
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


# --------------------------------------------------------------------------- splits.json


def splits_entry(format: str, root: str | None, records: Sequence[Any],
                 splits: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """One dataset's entry of splits.json: ``records`` (with ``case_id`` and ``patient_id``)
    split into ``splits`` ({split: indices}); raises ValueError if a patient is in two splits."""
    from mtl.data.splits import check_no_leak

    check_no_leak(records, splits)
    return {
        "format": format,
        "root": root,
        "patients": {split: len({records[i].patient_id for i in idx})
                     for split, idx in splits.items()},
        "case_ids": {split: [records[i].case_id for i in idx] for split, idx in splits.items()},
    }


def read_splits(path: Path) -> dict[str, dict[str, Any]] | None:
    """splits.json: {dataset name: entry}, None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        for entry in content.values():
            if not all(isinstance(ids, list) for ids in entry["case_ids"].values()):
                raise TypeError("case ids are not lists")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a splits file ({describe(exc)})") from None
    return content


# --------------------------------------------------------------------------- the folder


class RunFolder:
    """A run folder: where its files are, and their atomic writes and readers.

    ``RunFolder.create(runs_dir, name)`` makes a new one; ``RunFolder(path)`` opens one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, runs_dir: str | Path, name: str) -> "RunFolder":
        """A new, empty ``<runs_dir>/<name>``, numbered ``<name>2``, ... if taken."""
        return cls(new_run_dir(runs_dir, name))

    @classmethod
    def scratch(cls, path: str | Path) -> "RunFolder":
        """A folder that may already exist (a non-chief worker's scratch folder)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(path)

    # ---- files
    def committed(self, name: str) -> Path:
        """``name`` of the last committed epoch (see :func:`mtl.checkpoint.committed`)."""
        return committed(self.path, name)

    def write_text(self, name: str, text: str) -> Path:
        return write_text(self.path / name, text)

    def write_json(self, name: str, obj: Any) -> Path:
        """``name`` in the run folder's JSON format (:func:`mtl.files.json_text`: no final
        newline, NaN allowed), replacing the file."""
        return write_json(self.path / name, obj, force=True, allow_nan=True, newline=False)

    def read_json(self, name: str) -> Any:
        """The JSON file ``name``, None when it does not exist."""
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def read_data_summary(self) -> dict[str, Any] | None:
        """data_summary.json of a run to resume (the near-copy counts found when it started),
        None when it does not exist; ResumeError names a damaged one."""
        path = self.path / DATA_SUMMARY
        try:
            summary = self.read_json(DATA_SUMMARY)
            if summary is not None and not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ResumeError(f"{path}: cannot resume, the file is damaged ({describe(exc)}); "
                              "delete it to resume without the near-copy counts it "
                              "recorded") from None
        return summary

    # ---- state.json, history.csv, splits.json
    def read_state(self) -> dict[str, Any]:
        return read_state(self.path)

    def write_state(self, state: dict[str, Any]) -> Path:
        return self.write_json(STATE, state)

    def history(self) -> list[dict[str, Any]]:
        return read_history(self.path / HISTORY)

    def checked_history(self) -> list[dict[str, Any]]:
        """The committed history.csv, checked for a resume (:func:`check_history`)."""
        return check_history(self.committed(HISTORY))

    def read_splits(self) -> dict[str, dict[str, Any]] | None:
        return read_splits(self.path / SPLITS)

    def write_splits(self, entries: Mapping[str, dict[str, Any]]) -> Path:
        """splits.json from {dataset name: :func:`splits_entry`}."""
        return self.write_json(SPLITS, dict(entries))


__all__ = ["CONFIG", "DATA_SUMMARY", "HISTORY", "METRICS", "ResumeError", "RunFolder", "SPLITS",
           "STATE", "append_history", "check_history", "describe", "history_text",
           "new_run_dir", "read_history", "read_splits", "read_state",
           "splits_entry"]
