"""One reader/writer class per file format, chosen once from the input's kind.

========  ===================================  ==========================  ================
kind      reads                                writes (``--format``)       class
========  ===================================  ==========================  ================
image     PNG, JPEG, TIFF, BMP                 ``png``: mask.png           ``ImageFormat``
nifti     ``.nii``, ``.nii.gz``                ``nifti``: mask.nii.gz      ``NiftiFormat``
nrrd      ``.nrrd``, ``.nhdr`` (+ data file)   ``nrrd``: mask.nrrd         ``NrrdFormat``
dicom     a series of single-frame images      ``dicom-seg``: seg.dcm      ``DicomFormat``
========  ===================================  ==========================  ================

Each class reads its kind into a :class:`~mtl.infer.case.Case` and writes its mask format from
any case that carries the geometry it needs (a NIfTI mask from a DICOM series' affine, say),
as nnU-Net v2's ``imageio`` does. Adding a format is one module here and one entry in
:data:`REGISTRY`: what the rest of mtl says per format is read from the classes (the suffixes
discovery claims, ``--format`` names, the mask file names a ``--force`` rerun replaces, the
server's downloads, its ``links.masks`` keys and the suffixes it strips from an upload's name).
Still outside: ``mtl serve`` accepts an upload by its content (:mod:`mtl.serve.uploads`:
magic bytes and size checks per type), the API schema (``MaskLinks`` in :mod:`mtl.serve.app`)
names each ``links.masks`` key, :mod:`mtl.infer.discovery` groups DICOM files into series,
:func:`mtl.data.orientation.view_for` leaves DICOM slices as stored, and a format that carries
its own header to its mask keeps it in a field of :class:`~mtl.infer.case.Case` (as ``nifti``,
``nrrd`` and ``datasets`` do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mtl.infer.case import InputError, InputItem
from mtl.infer.formats.base import Format, MaskFile, slice_tag
from mtl.infer.formats.dicom import DicomFormat
from mtl.infer.formats.image import ImageFormat
from mtl.infer.formats.nifti import NiftiFormat
from mtl.infer.formats.nrrd import NrrdFormat

#: every format, in the order a file's kind is decided (by name; DICOM, last, also by content)
REGISTRY: tuple[Format, ...] = (ImageFormat(), NiftiFormat(), NrrdFormat(), DicomFormat())
#: kind of input -> its format
FORMATS: dict[str, Format] = {f.kind: f for f in REGISTRY}
#: ``--format`` name of a mask -> the format that writes it
MASK_FORMATS: dict[str, Format] = {f.mask_format: f for f in REGISTRY}
#: the ``--format`` names
MASK_FORMAT_NAMES: tuple[str, ...] = tuple(MASK_FORMATS)


def format_of(kind: str) -> Format:
    """The format of an input kind; InputError for an unknown kind."""
    try:
        return FORMATS[kind]
    except KeyError:
        raise InputError(f"unknown input kind {kind!r}") from None


def mask_writer(name: str) -> Format:
    """The format that writes the mask ``name`` (a ``--format`` name)."""
    return MASK_FORMATS[name]


def format_for_path(path: Path) -> Format | None:
    """The format that reads ``path`` (None: no format does)."""
    return next((f for f in REGISTRY if f.claims(path)), None)


def kind_of(path: Path) -> str | None:
    """"image", "nifti", "nrrd", "dicom" or None for a file path."""
    fmt = format_for_path(path)
    return None if fmt is None else fmt.kind


def named_like_input(path: Path) -> bool:
    """Whether a file's name (suffix) says it is an input mtl reads; the content is not read."""
    return any(f.named_like(path) for f in REGISTRY)


def parse_formats(text: str | None) -> tuple[str, ...] | None:
    """"png,nifti" -> ("png", "nifti"); empty/None -> None (each input's own format)."""
    if not text:
        return None
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    aliases = {alias: f.mask_format for f in REGISTRY for alias in f.aliases}
    values = tuple(aliases.get(v, v) for v in values)
    check_formats(values)
    return values


def check_formats(values: Sequence[str]) -> None:
    """ValueError naming the unknown mask format names among ``values``."""
    unknown = [v for v in values if v not in MASK_FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(MASK_FORMAT_NAMES)}")


# the next four read REGISTRY when called, not at import (a registry patched in a test is seen)


def mask_names() -> tuple[str, ...]:
    """The mask file names the formats write into a case folder, in registry order."""
    return tuple(dict.fromkeys(f.mask_name for f in REGISTRY))


def input_suffixes(*extra: str) -> tuple[str, ...]:
    """Every file name suffix a format reads (lower case) and ``extra``, longest first."""
    return tuple(sorted({*extra, *(s for f in REGISTRY for s in f.suffixes)},
                        key=lambda s: (-len(s), s)))


def link_formats() -> dict[str, Format]:
    """``mtl serve``: a result's ``links.masks`` key -> the format of that mask, in registry
    order (:attr:`Format.link_key`)."""
    return {f.link_key or f.mask_format: f for f in REGISTRY}


def supported_files() -> str:
    """"PNG, JPEG, TIFF, BMP, NIfTI .nii/.nii.gz, ... or DICOM": what the formats read."""
    names = [f.file_types for f in REGISTRY if f.file_types]
    return " or ".join(filter(None, (", ".join(names[:-1]), *names[-1:])))


def format_refusals(items: Sequence[InputItem], formats: Sequence[str] | None) -> list[str]:
    """Why requested mask formats cannot be written for some inputs (empty: all can).

    Decided from the inputs' kinds alone, so ``mtl infer`` refuses before any work starts.
    """
    problems = []
    for name in formats or ():
        writer = MASK_FORMATS[name]
        if writer.mask_kinds is None:
            continue
        unfit = [item for item in items if item.kind not in writer.mask_kinds]
        if unfit:
            shown = ", ".join(f"{item.source} ({item.kind})" for item in unfit[:5])
            more = f" and {len(unfit) - 5} more" if len(unfit) > 5 else ""
            problems.append(f"--format {name} needs {writer.mask_needs}; "
                            f"it cannot be written for {shown}{more}")
    return problems


__all__ = ["FORMATS", "Format", "MASK_FORMATS", "MASK_FORMAT_NAMES", "MaskFile", "REGISTRY",
           "check_formats", "format_for_path", "format_of", "format_refusals", "input_suffixes",
           "kind_of", "link_formats", "mask_names", "mask_writer", "named_like_input",
           "parse_formats", "slice_tag", "supported_files"]
