"""Inputs of ``mtl infer`` -> input items: files and folders expanded, DICOM grouped by series.

Nothing is decoded here: a file's kind comes from its name (DICOM also from its content, the
"DICM" magic) through :mod:`mtl.infer.formats`; DICOM headers are read to group a folder's files
into series.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any, Sequence

from mtl.data.imageio import describe_error
from mtl.infer.case import InputItem
from mtl.infer.formats import format_for_path, named_like_input, supported_files
from mtl.infer.formats.dicom import dicom_stem, group_series, series_name


def safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name or "case"


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def path_problem(path: Path) -> tuple[str | None, str | None]:
    """``("dir" | "file", None)`` for a folder or regular file (symbolic links followed), else
    ``(None, why)``: missing, a broken link, a symbolic link loop, a FIFO, socket or device."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symbolic link loop (too many levels of symbolic links)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(path):
                return None, f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
            return None, "no such file or directory"
        return None, f"cannot open ({exc.strerror or describe_error(exc)})"
    if stat.S_ISDIR(mode):
        return "dir", None
    if stat.S_ISREG(mode):
        return "file", None
    what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return None, f"not a regular file: {what}; give an image, volume or DICOM file, or a folder"


def discover(inputs: Sequence[str | Path]) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """Expand files and folders into input items; also (path, reason) of inputs that cannot be used.

    Folders are walked recursively (hidden entries skipped); images and NIfTI files become one
    case each, DICOM files are grouped into one case per series. Item names are unique (a
    numeric suffix is added on collision) and safe as folder names. What is neither a folder nor
    a regular file (a FIFO, a socket, a symbolic link loop or a broken link) is reported as such,
    and never opened (reading a FIFO would wait forever); inside folders only where its name
    says it is an input.
    """
    items: list[tuple[str, str, Path, tuple[Path, ...]]] = []
    failures: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        what, problem = path_problem(path)
        if problem is not None:
            failures.append((str(path), problem))
            continue
        if what == "file":
            fmt = format_for_path(path)
            if fmt is None:
                failures.append((str(path),
                                 f"unsupported file type (expected {supported_files()})"))
            elif fmt.groups_series:
                series, bad = group_series([path])
                failures += bad
                # one file given: the case is named after the file, not its folder
                items += [(fmt.stem(path), fmt.kind, path, files) for _uid, files in series]
            else:
                items.append((fmt.stem(path), fmt.kind, path, (path,)))
            continue
        found = 0
        dicoms: list[Path] = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=_natural_key)
            for name in sorted((f for f in files if not f.startswith(".")), key=_natural_key):
                file = Path(folder) / name
                problem = path_problem(file)[1]
                if problem is not None:  # never opened; reported where named like an input
                    if named_like_input(file):
                        failures.append((str(file), problem))
                        found += 1
                    continue
                fmt = format_for_path(file)
                if fmt is not None and fmt.groups_series:
                    dicoms.append(file)
                elif fmt is not None:
                    rel = file.relative_to(path)
                    items.append(("_".join((*rel.parent.parts, fmt.stem(rel))), fmt.kind, file,
                                  (file,)))
                    found += 1
        if dicoms:
            series, bad = group_series(dicoms)
            failures += bad
            by_folder: dict[Path, int] = {}
            for _uid, files in series:
                by_folder[files[0].parent] = by_folder.get(files[0].parent, 0) + 1
            for uid, files in series:
                folder = files[0].parent
                if len(files) == 1:  # a one-file "series": named like an image file
                    rel = files[0].relative_to(path)
                    name = "_".join((*rel.parent.parts, dicom_stem(rel)))
                else:
                    name = series_name(folder, uid, by_folder[folder], files)
                items.append((name, "dicom", folder, files))
                found += 1
        if not found and not dicoms:
            failures.append((str(path), "no images, NIfTI volumes or DICOM files found in folder"))
    used: set[str] = set()
    out: list[InputItem] = []
    for name, kind, source, files in items:
        base = safe_name(name)
        unique, k = base, 2
        while unique.lower() in used:
            unique, k = f"{base}-{k}", k + 1
        used.add(unique.lower())
        out.append(InputItem(unique, kind, source, files))
    return out, failures


__all__ = ["discover", "path_problem", "safe_name"]
