"""Atomic file writes: the one primitive every part of mtl writes files through.

A file is written to a hidden temporary name in its destination folder (``.tmp-<hex>-<name>``,
keeping the name's suffixes, so writers that infer the format from the name work) and then moved
into place in one step, so a crash never leaves a half-written file under the real name. With
``sync`` the data is flushed to disk before the move (what a checkpoint needs to survive a power
cut). Without ``force`` the move is a hard link that fails if the destination exists (no race
between check and write).

A process killed mid-write can leave a temporary file behind; :func:`is_temporary` recognises
the names (and those of older mtl versions, ``<name>.tmp`` and ``<stem>.tmp.keras``) so a run
folder's recovery can remove them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: prefix of the temporary names :func:`atomic_write` uses
TMP_PREFIX = ".tmp-"


class OutputExistsError(FileExistsError):
    """An output file exists and overwriting was not allowed."""


def sync_path(path: str | Path) -> None:
    """fsync a file or folder (folders: where the file system allows it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # e.g. a directory on a file system that cannot sync one
        pass
    finally:
        os.close(fd)


def temporary_name(path: str | Path) -> Path:
    """A fresh temporary path next to ``path``, keeping its name (and so its suffixes)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of an atomic write (of this or an older mtl)."""
    return (name.startswith(TMP_PREFIX) or name.endswith(".tmp")
            or name.endswith(".tmp.keras"))


def atomic_write(path: str | Path, write: Callable[[Path], None], *, force: bool = False,
                 sync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then move it into place.

    The temporary file is removed if writing fails. Raises OutputExistsError if ``path`` exists
    and ``force`` is false. ``sync``: fsync the file before the move and the folder after it.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists; use --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if sync:
            sync_path(tmp)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile
            except FileExistsError:
                raise OutputExistsError(f"{path}: exists; use --force to overwrite") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise OutputExistsError(f"{path}: exists; use --force to overwrite") from None
                os.replace(tmp, path)
        if sync:
            sync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes(path: str | Path, data: bytes, *, force: bool = False,
                sync: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), force=force, sync=sync)


def write_text(path: str | Path, text: str, *, force: bool = True, sync: bool = False) -> Path:
    """``text`` (UTF-8) to ``path``, atomically; replaces an existing file unless ``force`` is
    false."""
    return write_bytes(path, text.encode("utf-8"), force=force, sync=sync)


def write_json(path: str | Path, obj: Any, *, force: bool = False) -> Path:
    text = json.dumps(obj, indent=1, default=json_default, allow_nan=False) + "\n"
    return write_bytes(path, text.encode("utf-8"), force=force)


def save_model(model: Any, path: str | Path, *, force: bool = True, sync: bool = False) -> Path:
    """``model.save`` to a ``.keras`` path, atomically (the temporary name ends in ``.keras``
    too, as Keras requires)."""
    return atomic_write(path, lambda tmp: model.save(tmp), force=force, sync=sync)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays and paths."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["OutputExistsError", "TMP_PREFIX", "atomic_write", "is_temporary", "json_default",
           "save_model", "sync_path", "temporary_name", "write_bytes", "write_json",
           "write_text"]
