"""The reader/writer of one file format: what every format class says about itself and does.

A :class:`Format` reads one kind of input into a :class:`~mtl.infer.case.Case` (``read``) and
writes the tumor mask in its own file format from a case and its results (``write_mask``),
using the geometry the case carried from reading (a NIfTI header, NRRD geometry fields, the
DICOM data sets, or the affine alone). Masks come back as bytes (:class:`MaskFile`); whoever
called decides where they go (``mtl infer``: files in a case folder; ``mtl serve``: downloads
kept in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.infer.case import Case, InputItem


@dataclass(frozen=True)
class MaskFile:
    """One mask file: its name inside a case folder, its bytes and their media type."""

    name: str
    data: bytes
    media_type: str
    #: the ``--format`` name of the format that wrote it
    format: str = ""


def slice_tag(index: int, n: int) -> str:
    """``slice_007``: the 0-based array index, zero-padded to at least 3 digits."""
    return f"slice_{index:0{max(3, len(str(n - 1)))}d}"


class Format:
    """One file format: reading inputs of ``kind`` and writing masks of ``mask_format``.

    Subclasses set the attributes and implement :meth:`read` and :meth:`write_bytes`; the
    registry (:mod:`mtl.infer.formats`) holds one instance of each.
    """

    #: the kind of input this class reads ("image", "nifti", ...; ``InputItem.kind``)
    kind: str = ""
    #: the kind in messages ("a NIfTI volume")
    what: str = ""
    #: file name suffixes it reads (lower case)
    suffixes: tuple[str, ...] = ()
    #: a volume (cut into slices) rather than one 2-D image
    is_volume: bool = True
    #: how ``findings.json`` names the native index order of this kind
    index_order: str = ""
    #: the ``--format`` name of the mask it writes, other spellings accepted for it
    mask_format: str = ""
    aliases: tuple[str, ...] = ()
    #: the mask's file name, its media type, and its name in "... not written" notes
    mask_name: str = ""
    media_type: str = "application/octet-stream"
    mask_label: str = ""
    #: input kinds that can ever get this mask (None: every kind), and what it needs in words;
    #: ``mtl infer`` refuses a --format before any work when an input's kind cannot give it
    mask_kinds: tuple[str, ...] | None = None
    mask_needs: str = ""
    #: the masks ``mtl serve`` offers for an upload of this kind (``--format`` names)
    downloads: tuple[str, ...] = ()
    #: ``mtl serve``: the mask's name in a "no ... download" note, and the note's reason where
    #: a case of this kind cannot give its mask (None: nothing is said)
    download_title: str = ""
    missing_download: str | None = None
    #: ``mtl serve``: a failure to make this mask leaves its download out with a note (the
    #: others still work) rather than failing the request
    optional_download: bool = False
    #: ``mtl serve``: the mask's key in a result's ``links.masks`` (empty: ``mask_format``), and
    #: whether it may be the result's ``links.mask`` (the first present, in registry order)
    link_key: str = ""
    mask_link: bool = True
    #: the files of this kind in the message that refuses an unsupported file ("PNG, JPEG")
    file_types: str = ""
    #: what a volume of this kind goes without when no mask in patient geometry can be written
    geometry_mask: str = "mask volume"
    #: files of this kind are grouped into one case per series (DICOM)
    groups_series: bool = False

    # ------------------------------------------------------------------ reading

    def named_like(self, path: Path) -> bool:
        """Whether the file's name says it is of this format (nothing is read)."""
        return path.suffix.lower() in self.suffixes

    def claims(self, path: Path) -> bool:
        """Whether ``path`` is read by this format (by name; DICOM also by content)."""
        return self.named_like(path)

    def stem(self, path: Path) -> str:
        """The case name a file of this format gives (its name without the suffix)."""
        return path.stem

    def read(self, item: InputItem, *, axis: int | str = "axial",
             pixel_spacing: tuple[float, float] | None = None) -> Case:
        """Read one input item of this kind (not turned upright); raises InputError."""
        raise NotImplementedError

    def to_native(self, case: Case, stack: np.ndarray) -> np.ndarray:
        """(N, H, W) per-slice results -> the input's own array shape and order (a volume cut
        along ``case.slice_axis``)."""
        stack = case.native_slices(stack)
        axis = 2 if case.slice_axis is None else case.slice_axis
        volume = np.moveaxis(stack, 0, axis)
        return volume.reshape(case.native_shape)

    def no_geometry(self, case: Case) -> str:
        """Why a volume of this kind has no patient geometry for its mask, in words."""
        return "the input has no position and orientation in patient space"

    # ------------------------------------------------------------------ writing

    def cannot_write(self, case: Case) -> str | None:
        """Why this format's mask cannot be written for ``case`` (None: it can)."""
        return None

    def write_bytes(self, case: Case, stack: np.ndarray, native: np.ndarray,
                    notes: list[str]) -> bytes:
        """The mask file's bytes. ``stack``: the (N, H, W) 0/1 mask in slice order as the
        network saw the slices; ``native``: the same in the input's own array order
        (``case.to_native(stack)``); ``notes`` receives what was repaired or left out."""
        raise NotImplementedError

    def write_mask(self, case: Case, stack: np.ndarray, native: np.ndarray,
                   notes: list[str] | None = None) -> list[MaskFile]:
        """The mask file(s) of ``case`` in this format (see :meth:`write_bytes`)."""
        data = self.write_bytes(case, stack, native, [] if notes is None else notes)
        return [MaskFile(self.mask_name, data, self.media_type, self.mask_format)]


class LabelVolumeFormat(Format):
    """A volume format whose mask is a label volume (NIfTI, NRRD): written in the input's own
    geometry of this format where the case has it (``case.<kind>``: a NIfTI image, NRRD
    fields), else from the case's affine (a DICOM series or a volume of the other format)."""

    mask_kinds = ("nifti", "dicom", "nrrd")  # needs a 3-D geometry
    mask_needs = "a volume (a 2-D image has no 3-D geometry)"

    @staticmethod
    def load(item: InputItem, axis: int | str) -> Case:
        raise NotImplementedError

    def read(self, item: InputItem, *, axis: int | str = "axial",
             pixel_spacing: tuple[float, float] | None = None) -> Case:
        return self.load(item, axis)

    def cannot_write(self, case: Case) -> str | None:
        if getattr(case, self.kind) is None and case.affine is None:
            return f"a {case.kind} input has no 3-D geometry"
        return None


__all__ = ["Format", "LabelVolumeFormat", "MaskFile", "slice_tag"]
