"""Models whose input channels are named MR sequences (``channel_names`` in their
preprocessing, e.g. pre-contrast, FLAIR, post-contrast): the sequences from one multi-channel
image (its channels, as stored, in the model's order) or from one file per sequence
(:func:`channel_item`, ``mtl infer --input NAME=FILE``), each read by its format; all must share
one geometry, and their slices are stacked in the model's order into (N, H, W, C). A grey image
or a single volume is refused with a message naming the sequences the model needs; no grey copy
is ever made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mtl.data.context import context_names, on_either_side, stack_context
from mtl.data.imageio import ImageReadError, read_channels
from mtl.infer.case import Case, InputError, InputItem, check_pixels, check_side
from mtl.infer.discovery import discover, safe_name
from mtl.infer.formats import FORMATS


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


def overlay_index(sequences: Sequence[str] | None, k: int = 0) -> int:
    """The input channel pictures are drawn on: the display sequence (:func:`display_channel`)
    of the slice itself, never of a neighbour (``k`` context slices per side); 0 for a model
    without named sequences."""
    return k * len(sequences) + display_channel(sequences) if sequences else 0


def sequence_hint(names: Sequence[str]) -> str:
    """How to give one file per sequence on ``mtl infer``'s command line."""
    return "one file per sequence: " + " ".join(f"--input {n}=FILE" for n in names)


def _needs(names: Sequence[str]) -> str:
    return (f"this model needs {len(names)} input channels, one per MR sequence: "
            f"{', '.join(names)} (in this order)")


def load_channel_image(item: InputItem, spacing: tuple[float, float] | None,
                       names: list[str], hint: str | None) -> Case:
    """One image holding the model's named sequences as its channels
    (:func:`mtl.data.imageio.read_channels`): exactly those, in that order."""
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
    check_side(path, image.shape)
    check_pixels(path, image)
    if found > 1 and all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, found)):
        raise InputError(f"{path}: its {found} channels are identical (a grey image saved as "
                         f"colour), not the sequences {', '.join(names)}; give {how}")
    return Case(item.name, "image", item.source, image[None], image.shape[:2], spacing=spacing,
                channel_names=tuple(names), display_channel=display_channel(names))


def refuse_single_volume(item: InputItem, names: Sequence[str], hint: str | None = None) -> None:
    """A volume given as one file to a model with named channels: it holds one sequence."""
    fmt = FORMATS.get(item.kind)
    what = fmt.what if fmt is not None else f"a {item.kind} input"
    raise InputError(f"{item.source}: {what} holds one sequence; {_needs(names)}. Give "
                     f"{hint or sequence_hint(names)}")


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


def load_sequence_image(name: str, item: InputItem,
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
    check_side(path, image.shape)
    check_pixels(path, image)
    return Case(item.name, "image", item.source, image[None], image.shape, spacing=spacing)


def with_context(case: Case, k: int, hint: str | None = None) -> Case:
    """A case of named sequences with each slice's ``k`` neighbours on either side added as
    channels (:func:`mtl.data.context.stack_context`), for a model trained with
    ``data.context_slices: k``. A single 2-D image has no neighbouring slices: it is refused
    with a message saying what to give instead (the model never sees made-up neighbours).
    The volume's end slices stand in for neighbours beyond its ends, as in training."""
    if not k:
        return case
    names = list(case.channel_names or ())
    if not case.is_volume:
        raise InputError(
            f"{case.source}: a single 2-D image; this model reads each slice together with the "
            f"{on_either_side(k)} of it in its volume (channels "
            f"{', '.join(context_names(names, k))}), which one image does not hold. Give the "
            f"volume: {hint or sequence_hint(names)}, each a NIfTI, NRRD or DICOM series")
    if case.n_slices < 2:
        raise InputError(
            f"{case.source}: a volume of one slice; this model reads each slice together with "
            f"the {on_either_side(k)} of it, which it does not hold. "
            f"Give the whole volume: {hint or sequence_hint(names)}")
    shown = overlay_index(names, k)  # the slice itself, never a neighbour
    case.slices = stack_context(case.slices, k)
    case.channel_names = tuple(context_names(names, k))
    case.display_channel = shown
    return case


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


__all__ = ["AFFINE_TOLERANCE_MM", "channel_item", "display_channel", "load_channel_image",
           "load_sequence_image", "overlay_index", "parse_channel_option", "refuse_single_volume",
           "sequence_hint", "stack_channels", "with_context"]
