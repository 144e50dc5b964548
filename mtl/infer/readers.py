"""Inputs of ``mtl infer`` -> cases: 2-D slices plus the geometry needed to map results back.

Four kinds of input are read:

- ``image``: one PNG, JPEG, TIFF or BMP file. Read as the training adapters read images (EXIF
  orientation applied, colour -> ITU-R 601 luma, alpha composited onto black); 16-bit and float
  images keep their values. One slice; no spacing unless the caller provides it.
- ``nifti``: a ``.nii`` / ``.nii.gz`` volume, cut into 2-D slices along one array axis. Where
  the header gives the orientation, each slice is turned upright (transposed/mirrored, no
  resampling) as the training pictures are (:mod:`mtl.data.orientation`); results are turned
  back into the file's array order. The default axis is the axial one (the array axis closest to superior-inferior in the affine);
  ``axis`` may name an array axis (0, 1, 2) or ``axial``/``coronal``/``sagittal``.
- ``nrrd``: a ``.nrrd`` volume or a ``.nhdr`` header with its detached data file (3D Slicer's
  format), read with pynrrd; its ``space``, ``space directions`` and ``space origin`` give the
  geometry. Sliced and turned upright exactly as NIfTI volumes are.
- ``dicom``: the single-frame images of one DICOM series (one folder may hold several series),
  sorted along the slice normal. Modality LUT (rescale slope/intercept) applied.

A model whose input channels are named MR sequences (``channel_names`` in its preprocessing, e.g.
pre-contrast, FLAIR, post-contrast) gets them either from one multi-channel image (its channels,
as stored, in the model's order: :func:`load_case` with ``channels``) or from one file per
sequence (:func:`channel_item`, ``mtl infer --input NAME=FILE``): each is read as above, all must
share one geometry, and their slices are stacked in the model's order into (N, H, W, C). A grey
image or a single volume is refused with a message naming the sequences the model needs; no
grey copy is ever made.

Every case carries ``affine``: a 4x4 matrix from voxel indices *in the case's native array
order* to RAS+ millimetres (x to the patient's Right, y Anterior, z Superior), or None for 2-D
images. Native order is the NIfTI file's own array order (the NRRD file's axis order, fastest
first), and (slice, row, column) for DICOM.

Problems raise :class:`InputError` whose message starts with the offending file's path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mtl.data.imageio import ImageReadError, describe_error, read_channels, read_gray
from mtl.data.orientation import View, upright_transform

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})
NRRD_SUFFIXES = frozenset({".nrrd", ".nhdr"})
#: smallest accepted image side in pixels
MIN_SIDE = 8
AXIS_NAMES = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}
#: NIfTI spatial units -> millimetres
_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


class InputError(ValueError):
    """An input that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class InputItem:
    """One case to read (not read yet): its output name, kind and file(s)."""

    name: str
    kind: str  # "image" | "nifti" | "nrrd" | "dicom"
    source: Path  # the file, or the folder of a DICOM series
    paths: tuple[Path, ...]  # the file, or the files of a DICOM series
    #: one file per MR sequence (``--input NAME=FILE``), in the model's channel order: each
    #: (name, item) is read on its own and the slices are stacked (:func:`channel_item`)
    channels: tuple[tuple[str, "InputItem"], ...] | None = None


@dataclass
class Case:
    """A read input: its slices and the geometry needed to put results back where they belong.

    ``slices`` is (N, H, W) (or (N, H, W, C) for colour images): the 2-D images the model sees,
    in order. ``to_native`` turns an (N, H, W) stack of per-slice results back into the input's
    own array shape (``native_shape``).
    """

    name: str
    kind: str
    source: Path
    slices: np.ndarray
    native_shape: tuple[int, ...]
    slice_axis: int | None = None  # native axis the slices were cut along; None for images
    affine: np.ndarray | None = None  # native voxel index -> RAS+ mm
    orientation_known: bool = False
    spacing: tuple[float, float] | None = None  # in-plane (row, column) spacing in mm
    nifti: Any = None  # the nibabel image (header and affine for the output label volume)
    nrrd: dict[str, Any] | None = None  # NRRD geometry fields for the output mask (pynrrd)
    datasets: list[Any] | None = None  # pydicom datasets, in slice order
    warnings: list[str] = field(default_factory=list)
    #: the in-plane transform that turned the native slices into ``slices`` (upright)
    upright: View = field(default_factory=View)
    #: the MR sequences of ``slices``' last axis, in order (models with named channels)
    channel_names: tuple[str, ...] | None = None
    #: the channel overlays are drawn on (FLAIR where one is named so, else the first)
    display_channel: int = 0
    #: sequence name -> the file (or DICOM folder) it was read from, for one file per sequence
    channel_sources: dict[str, str] | None = None

    @property
    def display_name(self) -> str | None:
        """The sequence overlays are drawn on (None: the case has no named channels)."""
        return None if not self.channel_names else self.channel_names[self.display_channel]

    def shown(self, index: int) -> np.ndarray:
        """Slice ``index`` as pictures show it: the display channel of named sequences, else
        the slice itself."""
        image = self.slices[index]
        return image[..., self.display_channel] if self.channel_names else image

    def shown_slices(self) -> np.ndarray:
        """Every slice as pictures show it (see :meth:`shown`)."""
        return self.slices[..., self.display_channel] if self.channel_names else self.slices

    @property
    def n_slices(self) -> int:
        return int(self.slices.shape[0])

    @property
    def is_volume(self) -> bool:
        return self.kind in ("nifti", "nrrd", "dicom")

    def to_native(self, stack: np.ndarray) -> np.ndarray:
        """(N, H, W) per-slice array -> the input's own array shape and order."""
        if self.kind == "image":
            return stack[0]
        stack = self.native_slices(stack)
        if self.kind == "dicom":
            return stack
        axis = 2 if self.slice_axis is None else self.slice_axis
        volume = np.moveaxis(stack, 0, axis)
        return volume.reshape(self.native_shape)

    def native_slices(self, stack: np.ndarray) -> np.ndarray:
        """(N, H, W) per-slice results -> each slice in the file's own (rows, cols) order, i.e.
        undo the upright turn (slice order is unchanged)."""
        return self.upright.invert_stack(stack) if self.upright.moves_pixels else stack

    def native_image(self) -> np.ndarray:
        """The intensities in native order (grey: the display sequence of named channels,
        colour images reduced to their mean)."""
        slices = self.shown_slices()
        slices = slices if slices.ndim == 3 else slices.mean(axis=-1)
        return self.to_native(np.asarray(slices, dtype=np.float32))


# --------------------------------------------------------------------------- discovery


def _nifti_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 magic ("DICM" at byte 128) or a DICOM suffix."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def kind_of(path: Path) -> str | None:
    """"image", "nifti", "nrrd", "dicom" or None for a file path."""
    if _nifti_stem(path.name) is not None:
        return "nifti"
    if path.suffix.lower() in NRRD_SUFFIXES:
        return "nrrd"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if is_dicom_file(path):
        return "dicom"
    return None


def safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name or "case"


def _stem(path: Path) -> str:
    return _nifti_stem(path.name) or path.stem


def _dicom_stem(path: Path) -> str:
    """A DICOM file's name without a DICOM suffix (names like ``1.2.840.5`` are kept whole)."""
    return path.stem if path.suffix.lower() in DICOM_SUFFIXES else path.name


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


def _named_like_input(path: Path) -> bool:
    """Whether a file's name (suffix) says it is an input mtl reads; the content is not read."""
    suffix = path.suffix.lower()
    return (_nifti_stem(path.name) is not None or suffix in NRRD_SUFFIXES
            or suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES)


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
            kind = kind_of(path)
            if kind is None:
                failures.append((str(path), "unsupported file type (expected PNG, JPEG, TIFF, "
                                            "BMP, NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr or "
                                            "DICOM)"))
            elif kind == "dicom":
                series, bad = _group_dicom([path])
                failures += bad
                # one file given: the case is named after the file, not its folder
                items += [(_dicom_stem(path), "dicom", path, files) for _uid, files in series]
            else:
                items.append((_stem(path), kind, path, (path,)))
            continue
        found = 0
        dicoms: list[Path] = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=_natural_key)
            for name in sorted((f for f in files if not f.startswith(".")), key=_natural_key):
                file = Path(folder) / name
                problem = path_problem(file)[1]
                if problem is not None:  # never opened; reported where named like an input
                    if _named_like_input(file):
                        failures.append((str(file), problem))
                        found += 1
                    continue
                kind = kind_of(file)
                if kind == "dicom":
                    dicoms.append(file)
                elif kind is not None:
                    rel = file.relative_to(path)
                    items.append(("_".join((*rel.parent.parts, _stem(rel))), kind, file, (file,)))
                    found += 1
        if dicoms:
            series, bad = _group_dicom(dicoms)
            failures += bad
            by_folder: dict[Path, int] = {}
            for _uid, files in series:
                by_folder[files[0].parent] = by_folder.get(files[0].parent, 0) + 1
            for uid, files in series:
                folder = files[0].parent
                if len(files) == 1:  # a one-file "series": named like an image file
                    rel = files[0].relative_to(path)
                    name = "_".join((*rel.parent.parts, _dicom_stem(rel)))
                else:
                    name = _series_name(folder, uid, by_folder[folder], files)
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


def _series_name(folder: Path, uid: str, n_in_folder: int, files: Sequence[Path] = ()) -> str:
    if n_in_folder <= 1:
        return folder.name or "dicom"
    number = ""
    if files:
        try:
            import pydicom

            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            number = str(getattr(ds, "SeriesNumber", "") or "")
        except Exception:  # noqa: BLE001 - the name is cosmetic; reading errors surface later
            number = ""
    return f"{folder.name}_series{number or uid[-8:]}"


def _group_dicom(files: Iterable[Path]) -> tuple[list[tuple[str, tuple[Path, ...]]],
                                                 list[tuple[str, str]]]:
    """Group DICOM files by SeriesInstanceUID (header only); unreadable files are failures."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    failures: list[tuple[str, str]] = []
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
            failures.append((str(file), f"cannot read DICOM header ({describe_error(exc)})"))
            continue
        groups.setdefault(uid, []).append(file)
    return [(uid, tuple(paths)) for uid, paths in groups.items()], failures


# --------------------------------------------------------------------------- checks


def check_pixels(path: Path | str, array: np.ndarray, what: str = "image") -> None:
    """Reject empty, non-numeric, non-finite or constant pixel data, naming the file."""
    if array.size == 0:
        raise InputError(f"{path}: {what} is empty (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: {what} has unsupported pixel type {array.dtype}")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: {what} holds {bad} NaN or infinite values")
    lo, hi = np.min(array).item(), np.max(array).item()
    if lo == hi:
        raise InputError(f"{path}: {what} is constant (every value = {lo:g}); nothing to analyse")


def _check_side(path: Path, shape: tuple[int, ...]) -> None:
    if min(shape[:2]) < MIN_SIDE:
        raise InputError(f"{path}: image of shape {shape} is too small "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} pixels needed)")


# --------------------------------------------------------------------------- images


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W) array, read exactly as training reads it (:mod:`mtl.data.imageio`)."""
    try:
        return read_gray(path)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc


def load_image_case(item: InputItem, spacing: tuple[float, float] | None = None,
                    channels: Sequence[str] | None = None, hint: str | None = None) -> Case:
    """One image file. ``channels``: the model's named sequences: the image's own channels are
    kept (:func:`mtl.data.imageio.read_channels`) and must be exactly those, in that order."""
    path = item.paths[0]
    if channels:
        return _load_channel_image(item, spacing, list(channels), hint)
    image = read_image(path)
    if image.ndim != 2:
        raise InputError(f"{path}: image of shape {image.shape} is not 2-D")
    _check_side(path, image.shape)
    check_pixels(path, image)
    return Case(item.name, "image", item.source, image[None], image.shape, spacing=spacing)


def display_channel(names: Sequence[str]) -> int:
    """The channel pictures are drawn on: the one named FLAIR (any case), else the first."""
    lower = [str(n).lower() for n in names]
    for i, name in enumerate(lower):
        if name == "flair":
            return i
    for i, name in enumerate(lower):
        if "flair" in name:
            return i
    return 0


def sequence_hint(names: Sequence[str]) -> str:
    """How to give one file per sequence on ``mtl infer``'s command line."""
    return "one file per sequence: " + " ".join(f"--input {n}=FILE" for n in names)


def _needs(names: Sequence[str]) -> str:
    return (f"this model needs {len(names)} input channels, one per MR sequence: "
            f"{', '.join(names)} (in this order)")


def _load_channel_image(item: InputItem, spacing: tuple[float, float] | None,
                        names: list[str], hint: str | None) -> Case:
    path = item.paths[0]
    try:
        image = read_channels(path)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc
    found = image.shape[-1] if image.ndim == 3 else 1
    how = hint or sequence_hint(names)
    if found != len(names):
        what = "a grey image (1 channel)" if found == 1 else f"an image of {found} channels"
        raise InputError(f"{path}: {what}; {_needs(names)}. Give a {len(names)}-channel image "
                         f"in that order, or {how}")
    _check_side(path, image.shape)
    check_pixels(path, image)
    if found > 1 and all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, found)):
        raise InputError(f"{path}: its {found} channels are identical (a grey image saved as "
                         f"colour), not the sequences {', '.join(names)}; give {how}")
    return Case(item.name, "image", item.source, image[None], image.shape[:2], spacing=spacing,
                channel_names=tuple(names), display_channel=display_channel(names))


def refuse_single_volume(item: InputItem, names: Sequence[str], hint: str | None = None) -> None:
    """A volume given as one file to a model with named channels: it holds one sequence."""
    what = {"nifti": "a NIfTI volume", "nrrd": "a NRRD volume",
            "dicom": "a DICOM series"}.get(item.kind, f"a {item.kind} input")
    raise InputError(f"{item.source}: {what} holds one sequence; {_needs(names)}. Give "
                     f"{hint or sequence_hint(names)}")


# --------------------------------------------------------------------------- one file per sequence


def parse_channel_option(value: str) -> tuple[str, str]:
    """``NAME=PATH`` (``--input flair=a.nii.gz``) -> (name, path); ValueError if malformed."""
    name, sep, path = str(value).partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"--input {value!r}: give NAME=FILE, e.g. --input flair=flair.nii.gz")
    return name.strip(), path.strip()


def channel_item(pairs: Sequence[tuple[str, str | Path]],
                 names: Sequence[str] | None) -> InputItem:
    """One case from one file per MR sequence (``--input NAME=FILE``, repeated), in the
    model's channel order ``names``. Raises InputError (one line) for a model without named
    channels, an unknown or repeated name, a missing sequence, or a file that is not one image,
    volume or DICOM series. Names match the model's case-insensitively."""
    given = ", ".join(f"{n}={p}" for n, p in pairs)
    if not names:
        raise InputError(f"--input {given}: this model takes one grey image per slice, not "
                         "named MR sequences; give the files as plain inputs")
    names = list(names)
    lookup = {n.lower(): n for n in names}
    chosen: dict[str, Path] = {}
    for raw, path in pairs:
        name = lookup.get(str(raw).lower())
        if name is None:
            raise InputError(f"--input {raw}={path}: this model has no sequence {raw!r}; its "
                             f"inputs are {', '.join(names)}")
        if name in chosen:
            raise InputError(f"--input {raw}: given twice ({chosen[name]} and {path}); give one "
                             "file per sequence")
        chosen[name] = Path(path).expanduser()
    missing = [n for n in names if n not in chosen]
    if missing:
        raise InputError(f"--input: missing {', '.join(missing)}; {_needs(names)}; give "
                         + " ".join(f"--input {n}=FILE" for n in names))
    parts: list[tuple[str, InputItem]] = []
    for name in names:
        path = chosen[name]
        items, bad = discover([path])
        if bad:
            raise InputError(f"--input {name}={path}: {bad[0][1]}" if str(bad[0][0]) == str(path)
                             else f"--input {name}={path}: {bad[0][0]}: {bad[0][1]}")
        if len(items) != 1:
            raise InputError(f"--input {name}={path}: holds {len(items)} inputs "
                             f"({', '.join(i.name for i in items[:4])}"
                             f"{', ...' if len(items) > 4 else ''}); give one image, volume or "
                             "DICOM series per sequence")
        parts.append((name, items[0]))
    first = parts[display_channel(names)][1]
    stems = [item.name for _name, item in parts]
    return InputItem(_common_name(stems) or first.name, first.kind, first.source,
                     tuple(p for _n, item in parts for p in item.paths), channels=tuple(parts))


def _load_sequence_image(name: str, item: InputItem,
                         spacing: tuple[float, float] | None) -> Case:
    """One sequence's image (``--input NAME=FILE``): grey, or colour whose channels are all
    the same (a grey scan saved as RGB); a colour image with different channels is refused
    rather than mixed into grey."""
    path = item.paths[0]
    try:
        image = read_channels(path)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc
    if image.ndim == 3:
        if not all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, image.shape[-1])):
            raise InputError(f"--input {name}={path}: an image of {image.shape[-1]} different "
                             "channels; give one grey image per sequence (a multi-channel "
                             "image holding every sequence is given alone, without --input)")
        image = image[..., 0]
    _check_side(path, image.shape)
    check_pixels(path, image)
    return Case(item.name, "image", item.source, image[None], image.shape, spacing=spacing)


def _common_name(names: Sequence[str]) -> str:
    """The common start of the sequences' case names (``BraTS_001_flair``, ``BraTS_001_t1ce``
    -> ``BraTS_001``), without trailing separators; "" when they share nothing useful."""
    prefix = os.path.commonprefix([n for n in names])
    return safe_name(prefix.rstrip("._- ")) if len(prefix.rstrip("._- ")) >= 2 else ""


def _geometry(case: Case) -> str:
    return "x".join(str(s) for s in case.native_shape)


#: mm: two sequences' affines may differ by this much (rounding in headers)
AFFINE_TOLERANCE_MM = 0.01


def stack_channels(item: InputItem, cases: Sequence[tuple[str, Case]]) -> Case:
    """Cases of one file per sequence (model order) -> one case whose slices are (N, H, W, C).
    They must be of one kind and one geometry (shape, and for volumes the affine within
    :data:`AFFINE_TOLERANCE_MM`); the case keeps the display sequence's geometry, header and
    DICOM data sets (masks are written in it)."""
    names = [n for n, _c in cases]
    kinds = {c.kind for _n, c in cases}
    if len(kinds) > 1:
        shown = ", ".join(f"{n} is {c.kind} ({c.source})" for n, c in cases)
        raise InputError(f"--input: the sequences must be files of one kind: {shown}")
    ref_name, ref = cases[0]
    for name, case in cases[1:]:
        if case.native_shape != ref.native_shape or case.slices.shape[:3] != ref.slices.shape[:3]:
            raise InputError(f"--input: the sequences differ in shape: {ref_name} is "
                             f"{_geometry(ref)} ({ref.source}), {name} is {_geometry(case)} "
                             f"({case.source}); they must share one voxel grid (co-registered "
                             "and resampled alike)")
        if (case.affine is None) != (ref.affine is None) or (
                case.affine is not None
                and not np.allclose(case.affine, ref.affine, rtol=0, atol=AFFINE_TOLERANCE_MM)):
            def where(c: Case) -> str:
                return ("no position in space" if c.affine is None
                        else str(np.round(c.affine[:3], 3).tolist()))
            raise InputError(f"--input: the sequences are not on one grid: the affine of {name} "
                             f"({case.source}: {where(case)}) differs from {ref_name}'s "
                             f"({ref.source}: {where(ref)}) by more than {AFFINE_TOLERANCE_MM} "
                             "mm; co-register and resample them alike")
        if case.slice_axis != ref.slice_axis or case.upright != ref.upright:
            raise InputError(f"--input: {name} ({case.source}) is sliced differently from "
                             f"{ref_name} ({ref.source})")
    shown = display_channel(names)
    base = cases[shown][1]
    slices = np.stack([c.slices for _n, c in cases], axis=-1)
    warnings = [f"{n}: {w}" for n, c in cases for w in c.warnings]
    return Case(item.name, base.kind, base.source, np.ascontiguousarray(slices),
                base.native_shape, slice_axis=base.slice_axis, affine=base.affine,
                orientation_known=base.orientation_known, spacing=base.spacing,
                nifti=base.nifti, nrrd=base.nrrd, datasets=base.datasets, warnings=warnings,
                upright=base.upright, channel_names=tuple(names), display_channel=shown,
                channel_sources={n: str(c.source) for n, c in cases})


# --------------------------------------------------------------------------- NIfTI


def axis_from_option(axis: int | str, affine: np.ndarray | None) -> int:
    """An array axis (0-2) from an int or "axial"/"coronal"/"sagittal" and the affine."""
    if isinstance(axis, int) or str(axis).isdigit():
        value = int(axis)
        if value not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {value}")
        return value
    key = str(axis).lower()
    if key not in AXIS_NAMES:
        raise ValueError(f"axis must be 0, 1, 2, axial, coronal or sagittal, got {axis!r}")
    if affine is None:
        return 2
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(affine)
    for index, code in enumerate(codes):
        if code is not None and code in AXIS_NAMES[key]:
            return index
    return 2


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel logs the header fixes it makes through Python's last-resort handler; mute that."""
    from nibabel.imageglobals import logger

    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _header_problems(path: Path, img: Any) -> list[str]:
    """Problems nibabel silently repairs, as warnings; zero/non-finite voxel sizes are errors."""
    from nibabel.openers import ImageOpener

    header_class = type(img.header)
    try:
        with ImageOpener(str(path)) as fh:
            raw = fh.read(header_class.template_dtype.itemsize)
        problems = header_class.diagnose_binaryblock(raw)
        raw_header = header_class(raw, check=False)
        ndim = int(np.clip(raw_header["dim"][0], 1, 7))
        pixdim = np.asarray(raw_header["pixdim"][1 : 1 + min(3, ndim)], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read NIfTI header ({describe_error(exc)})") from exc
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise InputError(f"{path}: broken NIfTI header: voxel sizes (pixdim) {pixdim.tolist()} "
                         "must be non-zero numbers")
    return [f"NIfTI header repaired on reading: {line}" for line in problems.splitlines() if line]


def _cut_slices(path: Path, volume: np.ndarray, affine: np.ndarray, slice_axis: int
                ) -> tuple[tuple[float, float], np.ndarray]:
    """A 3-D array -> (in-plane spacing in mm, (N, rows, cols) slices along ``slice_axis``)."""
    rows, cols = (a for a in range(3) if a != slice_axis)
    if min(volume.shape[rows], volume.shape[cols]) < MIN_SIDE:
        raise InputError(f"{path}: slices of {volume.shape[rows]}x{volume.shape[cols]} voxels "
                         f"along axis {slice_axis} are too small")
    spacing = (float(np.linalg.norm(affine[:3, rows])), float(np.linalg.norm(affine[:3, cols])))
    slices = np.moveaxis(volume, slice_axis, 0)
    if slices.dtype.kind == "f":
        slices = slices.astype(np.float32, copy=False)
    return spacing, slices


def load_nifti_case(item: InputItem, axis: int | str = "axial") -> Case:
    """A NIfTI volume -> slices along ``axis``; broken headers and data raise InputError."""
    import nibabel as nib

    path = item.paths[0]
    try:
        with _quiet_nibabel():  # header problems are reported below, not printed
            img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
        raise InputError(f"{path}: cannot read NIfTI header ({describe_error(exc)})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    warnings = _header_problems(path, img)
    shape = tuple(int(s) for s in img.shape)
    if not shape or min(shape) <= 0:
        raise InputError(f"{path}: broken NIfTI header: dimensions {shape} must be positive")
    if len(shape) == 4 and shape[3] == 1:
        volume_shape = shape[:3]
    elif len(shape) == 3:
        volume_shape = shape
    elif len(shape) == 2:
        volume_shape = shape + (1,)
    else:
        raise InputError(f"{path}: NIfTI of shape {shape} is not a 3-D volume "
                         "(a single 2-D or 3-D image is expected)")
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: broken NIfTI header: the affine is not finite and invertible "
                         f"({np.round(affine, 4).tolist()})")
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(f"{path}: broken NIfTI header: voxel sizes {zooms.tolist()} must be > 0")
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise InputError(f"{path}: cannot read NIfTI data, the file may be truncated "
                         f"({describe_error(exc)})") from exc
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: NIfTI pixel type {data.dtype} is not supported (grey only)")
    check_pixels(path, data, "volume")
    data = data.reshape(volume_shape)
    codes_known = int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0
    unit = img.header.get_xyzt_units()[0] or "unknown"
    scale = _UNIT_TO_MM.get(unit, 1.0)
    affine_mm = affine.copy()
    affine_mm[:3, :] *= scale
    try:
        slice_axis = 2 if len(shape) == 2 else axis_from_option(
            axis, affine_mm if codes_known else None)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if not codes_known:
        warnings.append("NIfTI has no qform/sform orientation: hemisphere not reported"
                        + ("" if axis in (0, 1, 2) else f"; sliced along array axis {slice_axis}"))
    spacing, slices = _cut_slices(path, data, affine_mm, slice_axis)
    return Case(item.name, "nifti", item.source, np.ascontiguousarray(slices), shape,
                slice_axis=slice_axis, affine=affine_mm, orientation_known=codes_known,
                spacing=spacing, nifti=img, warnings=warnings)


# --------------------------------------------------------------------------- NRRD

#: NRRD ``space`` -> signs that turn its coordinates into RAS+ (None: not anatomical)
_NRRD_SPACE_TO_RAS: dict[str, tuple[float, float, float] | None] = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
    "scanner-xyz": None, "3d-right-handed": None, "3d-left-handed": None,
}
#: NRRD ``space units`` -> millimetres
_NRRD_UNIT_TO_MM = {"mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "cm": 10.0, "m": 1000.0,
                    "um": 0.001, "micron": 0.001, "microns": 0.001, "": 1.0}
#: header fields of a NRRD that describe where its voxels are (copied to the mask)
NRRD_GEOMETRY_FIELDS = ("space", "space dimension", "space directions", "space origin",
                        "space units", "kinds", "spacings", "thicknesses", "axis mins",
                        "axis maxs", "centers", "centerings", "measurement frame")


def _nrrd_space(header: dict[str, Any]) -> tuple[str | None, tuple[float, ...] | None]:
    space = str(header.get("space", "") or "").strip().lower()
    time = space.endswith("-time") or space in ("rast", "last", "lpst")
    base = space[:-5] if space.endswith("-time") else (space[:3] if time else space)
    return (space or None), _NRRD_SPACE_TO_RAS.get(base)


def load_nrrd_case(item: InputItem, axis: int | str = "axial") -> Case:
    """A NRRD volume (``.nrrd``, or ``.nhdr`` + data file) -> slices along ``axis``, as NIfTI.

    Native order is the file's axis order (fastest axis first, as pynrrd's Fortran order and
    nibabel's NIfTI order); ``affine`` maps it to RAS+ mm from ``space directions`` and
    ``space origin``. Non-spatial axes of size 1 (``kinds: list``, a "none" direction) are
    dropped; the mask is written with the same geometry fields (:data:`NRRD_GEOMETRY_FIELDS`).
    """
    import nrrd

    path = item.paths[0]
    try:
        opened = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open NRRD ({exc.strerror or describe_error(exc)})") \
            from exc
    with opened as fh:
        try:
            header = nrrd.read_header(fh)
        except StopIteration as exc:  # no line at all
            raise InputError(f"{path}: cannot read NRRD header (the file is empty)") from exc
        except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, ...
            raise InputError(f"{path}: cannot read NRRD header ({describe_error(exc)})") from exc
        try:
            data = nrrd.read_data(header, fh, str(path), index_order="F")
        except FileNotFoundError as exc:  # a .nhdr whose data file is missing
            raise InputError(f"{path}: cannot read NRRD data: {exc.strerror or 'no such file'}: "
                             f"{exc.filename}") from exc
        except nrrd.NRRDError as exc:
            problem = "the file may be truncated" if str(exc).startswith("Size of the data") \
                else "broken NRRD header"
            raise InputError(f"{path}: cannot read NRRD data, {problem} "
                             f"({describe_error(exc)})") from exc
        except Exception as exc:  # noqa: BLE001 - ValueError, zlib.error, EOFError...
            raise InputError(f"{path}: cannot read NRRD data, the file may be truncated or "
                             f"corrupt ({describe_error(exc)})") from exc
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: NRRD pixel type {data.dtype} is not supported (grey only)")
    warnings: list[str] = []
    space, signs = _nrrd_space(header)
    ndim = data.ndim
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64)
        if directions.ndim != 2 or directions.shape[0] != ndim:
            raise InputError(f"{path}: broken NRRD header: 'space directions' has "
                             f"{directions.shape[0] if directions.ndim else 0} entries for "
                             f"{ndim} axes")
        spatial = [i for i in range(ndim) if np.all(np.isfinite(directions[i]))]
    else:
        kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * ndim)]
        spatial = [i for i in range(ndim) if kinds[i] in ("domain", "space", "???", "none")]
    other = [i for i in range(ndim) if i not in spatial]
    if any(data.shape[i] != 1 for i in other) or not 2 <= len(spatial) <= 3:
        raise InputError(f"{path}: NRRD of sizes {list(data.shape)} with {len(spatial)} spatial "
                         "axes is not a grey 2-D or 3-D volume (vector, colour and time data "
                         "are not supported)")
    if other:
        warnings.append(f"NRRD axes {other} (size 1, not spatial) dropped")
        data = data.reshape([data.shape[i] for i in spatial])
    shape = tuple(int(s) for s in data.shape)
    if min(shape) <= 0:
        raise InputError(f"{path}: broken NRRD header: sizes {list(shape)} must be positive")
    check_pixels(path, data, "volume")
    # geometry: index (spatial axes) -> space coordinates, then -> RAS+ mm
    linear = np.eye(3)
    origin = np.zeros(3)
    orientation_known = False
    if directions is not None:
        dirs = directions[spatial][:, :3]
        if dirs.shape[1] < 3:  # a 2-D space: embed in 3-D
            dirs = np.pad(dirs, ((0, 0), (0, 3 - dirs.shape[1])))
        linear[:, : len(spatial)] = dirs.T
        raw_origin = header.get("space origin")
        if raw_origin is not None:
            raw_origin = np.asarray(raw_origin, dtype=np.float64)[:3]
            if not np.all(np.isfinite(raw_origin)):
                raise InputError(f"{path}: broken NRRD header: 'space origin' "
                                 f"{raw_origin.tolist()} is not finite")
            origin[: len(raw_origin)] = raw_origin
        orientation_known = signs is not None
        units = [str(u).strip().lower() for u in header.get("space units", []) or []]
        scales = [_NRRD_UNIT_TO_MM.get(u) for u in units]
        if any(s is None for s in scales):
            warnings.append(f"NRRD space units {units} not understood: millimetres assumed")
        elif scales and len(set(scales)) == 1:
            linear *= scales[0]
            origin *= scales[0]
    else:
        spacings = header.get("spacings")
        if spacings is not None:
            values = np.asarray(spacings, dtype=np.float64)[spatial]
            linear[np.arange(len(spatial)), np.arange(len(spatial))] = np.where(
                np.isfinite(values) & (values > 0), values, 1.0)
    if len(spatial) == 2:  # one slice: the third column is the unit normal
        normal = np.cross(linear[:, 0], linear[:, 1])
        norm = float(np.linalg.norm(normal))
        linear[:, 2] = normal / norm if norm > 0 else (0.0, 0.0, 1.0)
    if not np.all(np.isfinite(linear)) or abs(np.linalg.det(linear)) < 1e-12:
        raise InputError(f"{path}: broken NRRD header: 'space directions' "
                         f"{np.round(directions, 4).tolist() if directions is not None else None}"
                         " are not independent vectors")
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    if orientation_known:
        affine = np.diag([*signs, 1.0]) @ affine
    else:
        warnings.append(f"NRRD space {space or '(none)'} is not an anatomical one (RAS, LAS, LPS): "
                        "hemisphere not reported"
                        + ("" if axis in (0, 1, 2) else "; sliced along array axis 2"))
    volume = data if data.ndim == 3 else data[..., None]
    try:
        slice_axis = 2 if data.ndim == 2 else axis_from_option(
            axis, affine if orientation_known else None)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    spacing, slices = _cut_slices(path, volume, affine, slice_axis)
    geometry = {k: header[k] for k in NRRD_GEOMETRY_FIELDS if k in header}
    for key in ("space directions", "kinds", "spacings", "thicknesses", "axis mins",
                "axis maxs", "centers", "centerings"):
        if key in geometry and other:  # keep the entries of the spatial axes only
            value = geometry[key]
            geometry[key] = (np.asarray(value)[spatial] if isinstance(value, np.ndarray)
                             else [value[i] for i in spatial])
    return Case(item.name, "nrrd", item.source, np.ascontiguousarray(slices), shape,
                slice_axis=slice_axis, affine=affine, orientation_known=orientation_known,
                spacing=spacing, nrrd=geometry, warnings=warnings)


# --------------------------------------------------------------------------- DICOM


def load_dicom_case(item: InputItem) -> Case:
    """The single-frame images of one series, sorted along the slice normal."""
    import pydicom

    datasets = []
    for path in item.paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: cannot read DICOM ({describe_error(exc)})") from exc
        if "PixelData" not in ds:
            raise InputError(f"{path}: DICOM object has no pixel data "
                             f"(SOP class {getattr(ds, 'SOPClassUID', '?')})")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{path}: multi-frame DICOM is not supported; "
                             "give a series of single-frame images")
        datasets.append(ds)
    first = datasets[0]
    iop = getattr(first, "ImageOrientationPatient", None)
    positions = [getattr(ds, "ImagePositionPatient", None) for ds in datasets]
    warnings: list[str] = []
    orientation_known = iop is not None and all(p is not None for p in positions)
    if orientation_known:
        iop = np.asarray(iop, dtype=np.float64)
        for ds in datasets[1:]:
            other = getattr(ds, "ImageOrientationPatient", None)
            if other is None or not np.allclose(np.asarray(other, float), iop, atol=1e-4):
                raise InputError(f"{ds.filename}: ImageOrientationPatient differs within the "
                                 "series; a series of parallel slices is expected")
        normal = np.cross(iop[:3], iop[3:])
        depth = [float(np.dot(np.asarray(p, float), normal)) for p in positions]
        order = np.argsort(depth, kind="stable")
        sorted_depth = np.asarray(depth)[order]
        if len(order) > 1 and np.min(np.diff(sorted_depth)) < 1e-4:
            raise InputError(_same_position_message(item, datasets, order, sorted_depth))
    else:
        order = np.argsort([int(getattr(ds, "InstanceNumber", 0) or 0) for ds in datasets],
                           kind="stable")
        warnings.append("no ImagePositionPatient/ImageOrientationPatient: slices ordered by "
                        "InstanceNumber, orientation unknown")
    datasets = [datasets[i] for i in order]
    arrays = []
    for ds in datasets:
        try:
            arr = np.asarray(ds.pixel_array)
            from pydicom.pixels import apply_modality_lut

            arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{ds.filename}: cannot decode DICOM pixel data "
                             f"({describe_error(exc)})") from exc
        if arr.ndim != 2:
            raise InputError(f"{ds.filename}: pixel data of shape {arr.shape} is not a 2-D "
                             "grey image")
        if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
            arr = arr.max() - arr
        arrays.append(arr)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"{item.source}: images of different sizes {sorted(shapes)} in one series")
    stack = np.stack(arrays)
    _check_side(Path(datasets[0].filename), stack.shape[1:])
    check_pixels(item.source, stack, "series")
    spacing = None
    if getattr(first, "PixelSpacing", None) is not None:
        spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    affine = None
    if orientation_known and spacing is not None:
        affine = _dicom_affine(datasets, iop, spacing, warnings)
    elif orientation_known:
        warnings.append("no PixelSpacing: sizes in pixels only")
        orientation_known = False
    return Case(item.name, "dicom", item.source, stack, stack.shape, slice_axis=0,
                affine=affine, orientation_known=orientation_known and affine is not None,
                spacing=spacing, datasets=datasets, warnings=warnings)


def _same_position_message(item: InputItem, datasets: list[Any], order: np.ndarray,
                           sorted_depth: np.ndarray) -> str:
    """One line naming the files of a series that share a slice position (and its folders)."""
    groups: list[list[str]] = []
    for k in range(1, len(order)):
        if sorted_depth[k] - sorted_depth[k - 1] < 1e-4:
            a, b = str(datasets[order[k - 1]].filename), str(datasets[order[k]].filename)
            if groups and groups[-1][-1] == a:
                groups[-1].append(b)
            else:
                groups.append([a, b])
    shown = "; ".join(" = ".join(g) for g in groups[:3])
    more = f" (and {len(groups) - 3} more positions)" if len(groups) > 3 else ""
    folders = sorted({str(Path(p).parent) for p in item.paths})
    hint = ("is it a multi-echo, multi-phase or duplicated series?" if len(folders) == 1 else
            f"the series (one SeriesInstanceUID) has files in {len(folders)} folders "
            f"({', '.join(folders[:4])}{', ...' if len(folders) > 4 else ''}); "
            "a copy of the series? give each folder separately")
    return (f"{item.source}: images of the series at the same position: {shown}{more}; {hint}")


def _dicom_affine(datasets: list[Any], iop: np.ndarray, spacing: tuple[float, float],
                  warnings: list[str]) -> np.ndarray:
    """(slice, row, column) index -> RAS+ mm, from the DICOM patient (LPS) geometry."""
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column / increasing row
    ipp = np.asarray([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    if len(ipp) > 1:
        step = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
        gaps = np.linalg.norm(np.diff(ipp, axis=0), axis=1)
        if np.ptp(gaps) > 0.01 * max(float(np.median(gaps)), 1e-6):
            warnings.append(f"slice spacing is not uniform ({gaps.min():.3g}-{gaps.max():.3g} mm); "
                            "volumes use the mean spacing")
    else:
        thickness = float(getattr(datasets[0], "SpacingBetweenSlices", 0) or 0) or float(
            getattr(datasets[0], "SliceThickness", 0) or 0) or 1.0
        step = np.cross(row_dir, col_dir) * thickness
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = row_dir * spacing[1]
    lps[:3, 3] = ipp[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# --------------------------------------------------------------------------- dispatch


def load_case(item: InputItem, *, axis: int | str = "axial",
              pixel_spacing: tuple[float, float] | None = None, upright: bool = True,
              channels: Sequence[str] | None = None, hint: str | None = None) -> Case:
    """Read one input item. Raises InputError naming the file on any problem.

    ``upright``: turn a volume's slices upright where its orientation is known (the default,
    what the network was trained on); False keeps the file's array order. ``channels``: the
    model's named input sequences (None: a grey model): one multi-channel image holding them in
    that order, or an item of one file per sequence (:func:`channel_item`); a single volume or
    a grey image is refused. ``hint``: how to give one file per sequence, for that message
    (default: ``mtl infer``'s ``--input NAME=FILE``)."""
    if item.channels is not None:
        names = [n for n, _i in item.channels]
        if channels is not None and [n.lower() for n in names] != [n.lower() for n in channels]:
            raise InputError(f"{item.source}: sequences {names} given, the model needs "
                             f"{list(channels)}")
        cases = [(name, _load_sequence_image(name, part, pixel_spacing) if part.kind == "image"
                  else load_case(part, axis=axis, pixel_spacing=pixel_spacing, upright=upright))
                 for name, part in item.channels]
        return stack_channels(item, cases)
    if channels:
        if item.kind != "image":
            refuse_single_volume(item, channels, hint)
        return load_image_case(item, pixel_spacing, channels, hint)
    if item.kind == "image":
        return load_image_case(item, pixel_spacing)
    if item.kind == "nifti":
        case = load_nifti_case(item, axis)
    elif item.kind == "nrrd":
        case = load_nrrd_case(item, axis)
    elif item.kind == "dicom":
        case = load_dicom_case(item)
    else:
        raise InputError(f"{item.source}: unknown input kind {item.kind!r}")
    return turn_upright(case) if upright else case


def turn_upright(case: Case) -> Case:
    """The case with its slices turned upright (see :mod:`mtl.data.orientation`); ``to_native``
    turns results back. Cases of unknown orientation, DICOM and images are returned as they are."""
    if case.kind == "image" or case.upright.moves_pixels:
        return case
    transform = upright_transform(case.kind, case.affine, case.slice_axis, case.orientation_known)
    if not transform.moves_pixels:
        return case
    case.slices = transform.apply_stack(case.slices)
    case.upright = transform
    return case


def format_axis(value: str) -> int | str:
    """Parse a --axis value: 0/1/2 or axial/coronal/sagittal."""
    value = str(value).strip().lower()
    if value in ("0", "1", "2"):
        return int(value)
    if value in AXIS_NAMES:
        return value
    raise ValueError(f"axis must be 0, 1, 2, axial, coronal or sagittal, got {value!r}")


__all__ = [
    "Case", "InputError", "InputItem", "axis_from_option", "channel_item", "check_pixels",
    "discover", "display_channel", "format_axis", "is_dicom_file", "kind_of", "load_case",
    "load_dicom_case", "load_image_case", "load_nifti_case", "load_nrrd_case",
    "parse_channel_option", "path_problem", "read_image", "refuse_single_volume",
    "sequence_hint", "stack_channels", "turn_upright",
]

