"""Atomic file writes: the one primitive every part of mtl writes files through.

A file is written to a hidden temporary name in its destination folder (``.tmp-<hex>-<name>``,
keeping the name's suffixes, so writers that infer the format from the name work) and then moved
into place in one step, so a crash never leaves a half-written file under the real name.
Without ``force`` the move is a hard link that fails if the destination exists (no race between
check and write). (A checkpoint's files are also synced to disk: :mod:`mtl.checkpoint` stages and
commits them with its own file operations, and uses :func:`sync_path` from here.)

:func:`json_text` is the format of every JSON file mtl writes (one-space indent, NumPy values
and paths through :func:`json_default`); :func:`write_json` writes it.

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


def safe_file_name(text: str, fallback: str = "file") -> str:
    """``text`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by
    ``_`` (``fallback`` when empty): safe as one file or folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or fallback


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


def atomic_write(path: str | Path, write: Callable[[Path], None], *, force: bool = False
                 ) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then move it into place.

    The temporary file is removed if writing fails. Raises OutputExistsError if ``path`` exists
    and ``force`` is false.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists; use --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
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
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes(path: str | Path, data: bytes, *, force: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), force=force)


def write_text(path: str | Path, text: str, *, force: bool = True) -> Path:
    """``text`` (UTF-8) to ``path``, atomically; replaces an existing file unless ``force`` is
    false."""
    return write_bytes(path, text.encode("utf-8"), force=force)


def json_text(obj: Any, *, allow_nan: bool = True) -> str:
    """The text of mtl's JSON files: one-space indent, NumPy values and paths as
    :func:`json_default` makes them, no final newline; ``allow_nan`` false: NaN and infinities
    raise ValueError instead of being written as ``NaN``."""
    return json.dumps(obj, indent=1, default=json_default, allow_nan=allow_nan)


def write_json(path: str | Path, obj: Any, *, force: bool = False, allow_nan: bool = False,
               newline: bool = True) -> Path:
    """:func:`json_text` of ``obj`` to ``path``, atomically, ending in a newline unless
    ``newline`` is false; see :func:`atomic_write` for ``force``."""
    text = json_text(obj, allow_nan=allow_nan)
    return write_text(path, text + "\n" if newline else text, force=force)


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
           "json_text", "sync_path", "temporary_name", "write_bytes", "write_json", "write_text"]
