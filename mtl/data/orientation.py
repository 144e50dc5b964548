"""Which way up a slice is: the one in-plane transform shared by the network's input and the display.

The training images are 2-D pictures in the usual radiological orientation (axial: anterior up,
the patient's right on the viewer's left; coronal: superior up, right on the left; sagittal:
superior up, anterior on the left). A slice cut from a volume in its file's array order can be
transposed or mirrored relative to that, depending on the affine. So volumes whose orientation
is known are turned upright *before* the network sees them (:func:`upright_transform`), and every
per-slice result is turned back (:meth:`View.invert_stack`) before it is written into the input's
array order. The overlay then draws the same upright slice, labelling its edges.

DICOM slices are stored for display already (rows and columns as a viewer shows them), so they
are only labelled; images carry no orientation and are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class View:
    """How to show a native (rows, cols) slice: transpose, then flips; edge letters if known."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    letters: tuple[str, str, str, str] | None = None  # top, bottom, left, right
    pixel_aspect: float = 1.0  # height / width of a displayed pixel

    @property
    def moves_pixels(self) -> bool:
        return self.transpose or self.flip_rows or self.flip_cols

    def pixels_only(self) -> "View":
        """The pixel transform alone (no letters, square pixels)."""
        return View(self.transpose, self.flip_rows, self.flip_cols)

    def labels_only(self) -> "View":
        """The letters and pixel aspect alone: for slices already turned by this view."""
        return replace(self, transpose=False, flip_rows=False, flip_cols=False)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """One (rows, cols[, channels]) slice -> as shown."""
        return self.apply_stack(array[None])[0]

    def apply_stack(self, stack: np.ndarray) -> np.ndarray:
        """(N, rows, cols[, channels]) slices -> as shown, each turned the same way."""
        out = np.swapaxes(stack, 1, 2) if self.transpose else stack
        if self.flip_rows:
            out = out[:, ::-1]
        if self.flip_cols:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)

    def invert_stack(self, stack: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`apply_stack`: shown slices -> the native (rows, cols) order."""
        out = stack[:, :, ::-1] if self.flip_cols else stack
        if self.flip_rows:
            out = out[:, ::-1]
        if self.transpose:
            out = np.swapaxes(out, 1, 2)
        return np.ascontiguousarray(out)


def view_for(kind: str, affine: np.ndarray | None, slice_axis: int | None,
             orientation_known: bool) -> View:
    """The display transform of a case's *native* slices (identity for images and DICOM)."""
    if affine is None or slice_axis is None:
        return View()
    from nibabel.orientations import aff2axcodes

    rows, cols = (a for a in range(3) if a != slice_axis)
    row_mm = float(np.linalg.norm(affine[:3, rows]))
    col_mm = float(np.linalg.norm(affine[:3, cols]))
    if not orientation_known:
        return View(pixel_aspect=row_mm / col_mm)
    codes = aff2axcodes(affine)
    code_r, code_c = codes[rows], codes[cols]
    if kind == "dicom":  # stored for display already; just label the edges
        return View(letters=(_OPPOSITE[code_r], code_r, _OPPOSITE[code_c], code_c),
                    pixel_aspect=row_mm / col_mm)
    # vertical: the superior-inferior axis if in plane, else anterior-posterior
    vertical_is_c = code_c in "SI" or (code_r not in "SI" and code_c in "AP")
    v_code, h_code = (code_c, code_r) if vertical_is_c else (code_r, code_c)
    v_mm, h_mm = (col_mm, row_mm) if vertical_is_c else (row_mm, col_mm)
    down = "I" if v_code in "SI" else "P"
    right = "L" if h_code in "LR" else "P"
    return View(
        transpose=vertical_is_c,
        flip_rows=v_code != down,
        flip_cols=h_code != right,
        letters=(_OPPOSITE[down], down, _OPPOSITE[right], right),
        pixel_aspect=v_mm / h_mm,
    )


def upright_transform(kind: str, affine: np.ndarray | None, slice_axis: int | None,
                      orientation_known: bool) -> View:
    """The pixel transform that turns a volume's native slices upright for the network (identity
    where the orientation is unknown, and for DICOM and images)."""
    return view_for(kind, affine, slice_axis, orientation_known).pixels_only()


def display_view(case) -> View:
    """How to draw ``case.slices``: letters and pixel aspect; the pixels are turned already when
    the case was read upright (``case.upright``)."""
    view = view_for(case.kind, case.affine, case.slice_axis, case.orientation_known)
    return view.labels_only() if case.upright.moves_pixels else view


__all__ = ["View", "display_view", "upright_transform", "view_for"]
