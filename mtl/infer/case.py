"""What every part of ``mtl infer`` passes around: an input not read yet (:class:`InputItem`),
a read input (:class:`Case`), the error that names a bad file (:class:`InputError`) and the
pixel checks every reader applies.

A case's ``kind`` names its format (:mod:`mtl.infer.formats`), which knows how results go back
into the input's own array order (:meth:`Case.to_native`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.orientation import View

#: smallest accepted image side in pixels
MIN_SIDE = 8


class InputError(ValueError):
    """An input that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class InputItem:
    """One case to read (not read yet): its output name, kind and file(s)."""

    name: str
    kind: str  # "image" | "nifti" | "nrrd" | "dicom" (a key of mtl.infer.formats.FORMATS)
    source: Path  # the file, or the folder of a DICOM series
    paths: tuple[Path, ...]  # the file, or the files of a DICOM series
    #: one file per MR sequence (``--input NAME=FILE``), in the model's channel order: each
    #: (name, item) is read on its own and the slices are stacked
    #: (:func:`mtl.infer.channels.channel_item`)
    channels: tuple[tuple[str, "InputItem"], ...] | None = None


@dataclass
class Case:
    """A read input: its slices and the geometry needed to put results back where they belong.

    ``slices`` is (N, H, W) (or (N, H, W, C) for colour images): the 2-D images the model sees,
    in order. ``to_native`` turns an (N, H, W) stack of per-slice results back into the input's
    own array shape (``native_shape``).

    Every case carries ``affine``: a 4x4 matrix from voxel indices *in the case's native array
    order* to RAS+ millimetres (x to the patient's Right, y Anterior, z Superior), or None for
    2-D images. Native order is the NIfTI file's own array order (the NRRD file's axis order,
    fastest first), and (slice, row, column) for DICOM.
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
    def format(self) -> Any:
        """The reader/writer of this case's kind (:mod:`mtl.infer.formats`)."""
        from mtl.infer.formats import format_of

        return format_of(self.kind)

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
        return self.format.is_volume

    def to_native(self, stack: np.ndarray) -> np.ndarray:
        """(N, H, W) per-slice array -> the input's own array shape and order."""
        return self.format.to_native(self, stack)

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


def check_side(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse images (slices) smaller than :data:`MIN_SIDE` on a side."""
    if min(shape[:2]) < MIN_SIDE:
        raise InputError(f"{path}: image of shape {shape} is too small "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} pixels needed)")


__all__ = ["Case", "InputError", "InputItem", "MIN_SIDE", "check_pixels", "check_side"]
