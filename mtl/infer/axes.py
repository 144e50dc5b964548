"""Which array axis a volume is cut along (``--axis``), and the cutting itself.

``axis`` is an array axis (0, 1, 2) or ``axial``/``coronal``/``sagittal``: the array axis
closest to superior-inferior, anterior-posterior or left-right in the affine (axis 2 when the
orientation is unknown).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtl.infer.case import MIN_SIDE, InputError

AXIS_NAMES = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}


def format_axis(value: str) -> int | str:
    """Parse a --axis value: 0/1/2 or axial/coronal/sagittal; ValueError otherwise."""
    value = str(value).strip().lower()
    if value in ("0", "1", "2"):
        return int(value)
    if value in AXIS_NAMES:
        return value
    raise ValueError(f"axis must be 0, 1, 2, axial, coronal or sagittal, got {value!r}")


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


def cut_slices(path: Path, volume: np.ndarray, affine: np.ndarray, slice_axis: int
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


__all__ = ["AXIS_NAMES", "axis_from_option", "cut_slices", "format_axis"]
