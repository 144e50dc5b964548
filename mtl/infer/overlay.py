"""Pictures for people: mask overlays, contact sheets of tumor slices, Grad-CAM panels.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed), on a
black background: the scan in grey (0.5-99.5 percentile window), the tumor as a translucent red
fill with a yellow outline, and a header with the case's label and probabilities.

Slices of volumes are *shown* in the usual radiological orientation when the orientation is
known (axial: anterior up, patient's right on the viewer's left; coronal: superior up, right on
the left; sagittal: superior up, anterior on the left), with orientation letters at the edges.
This is display only: the model, masks and findings use the input's own array order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mtl.infer.writers import atomic_write

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
FILL_RGBA = (1.0, 0.1, 0.1, 0.38)
OUTLINE = "yellow"
FOOTER = "mtl research output - not a diagnosis"


@dataclass(frozen=True)
class View:
    """How to show a native (rows, cols) slice: transpose, then flips; edge letters if known."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    letters: tuple[str, str, str, str] | None = None  # top, bottom, left, right
    pixel_aspect: float = 1.0  # height / width of a displayed pixel

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.swapaxes(array, 0, 1) if self.transpose else array
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def view_for(kind: str, affine: np.ndarray | None, slice_axis: int | None,
             orientation_known: bool) -> View:
    """The display transform for slices of a case (identity for images and DICOM)."""
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


def window(image: np.ndarray) -> np.ndarray:
    """Grey image scaled to [0, 1] between its 0.5 and 99.5 percentiles."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0, 1)


def _draw_slice(ax, image: np.ndarray, mask: np.ndarray | None, view: View,
                heat: np.ndarray | None = None, font: float = 9) -> None:
    grey = view.apply(window(image))
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              aspect=view.pixel_aspect)
    if heat is not None:
        ax.imshow(view.apply(heat), cmap="jet", vmin=0, vmax=1, alpha=0.45,
                  interpolation="bilinear", aspect=view.pixel_aspect)
    if mask is not None and np.any(mask):
        m = view.apply(np.asarray(mask) > 0)
        fill = np.zeros((*m.shape, 4), np.float32)
        fill[m] = FILL_RGBA
        ax.imshow(fill, interpolation="nearest", aspect=view.pixel_aspect)
        ax.contour(m.astype(np.float32), levels=[0.5], colors=OUTLINE, linewidths=1.0)
    if view.letters:
        top, bottom, left, right = view.letters
        style = dict(color="white", fontsize=font, fontweight="bold", transform=ax.transAxes)
        ax.text(0.5, 0.985, top, ha="center", va="top", **style)
        ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)
        ax.text(0.012, 0.5, left, ha="left", va="center", **style)
        ax.text(0.988, 0.5, right, ha="right", va="center", **style)
    ax.set_axis_off()


def _panel_size(shape: tuple[int, int], view: View, long_side_in: float = 5.0) -> tuple[float, float]:
    h, w = (shape[1], shape[0]) if view.transpose else shape[:2]
    h = h * view.pixel_aspect
    scale = long_side_in / max(h, w)
    return w * scale, h * scale


def render_overlay(
    path: str | Path,
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    lines: Sequence[str],
    view: View = View(),
    heat: np.ndarray | None = None,
    heat_title: str = "Grad-CAM",
    force: bool = False,
) -> Path:
    """One PNG: the slice with the mask outline and fill, a text header; with ``heat``, a second
    panel showing the Grad-CAM heat map over the slice."""
    from matplotlib.figure import Figure

    panels = 1 if heat is None else 2
    pw, ph = _panel_size(np.asarray(image).shape[:2], view)
    header = 0.28 * len(lines) + 0.2
    footer = 0.25
    # wide enough for the text (monospace 9 pt advances 0.075 in per character; bold 10 pt more)
    text_w = min(16.0, 0.4 + 0.085 * max((len(line) for line in lines), default=0))
    fig_w = max(pw * panels, text_w)
    fig = Figure(figsize=(fig_w, ph + header + footer), facecolor="black", dpi=100)
    total_h = ph + header + footer
    bottom, height = footer / total_h, ph / total_h
    left = (fig_w - pw * panels) / 2 / fig_w
    ax = fig.add_axes((left, bottom, pw / fig_w, height))
    _draw_slice(ax, image, mask, view)
    if heat is not None:
        ax2 = fig.add_axes((left + pw / fig_w, bottom, pw / fig_w, height))
        _draw_slice(ax2, image, None, view, heat=heat)
        ax2.set_title(heat_title, color="white", fontsize=9, pad=3)
    for k, line in enumerate(lines):
        fig.text(0.01, 1 - (0.12 + 0.28 * k) / total_h, line, color="white", va="top",
                 ha="left", fontsize=10 if k == 0 else 9, fontweight="bold" if k == 0 else None,
                 family="monospace" if k else None)
    fig.text(0.99, 0.08 / total_h, FOOTER, color="0.6", fontsize=7, ha="right", va="bottom")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png",
                                                      facecolor="black"), force=force)


def render_contact_sheet(
    path: str | Path,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    title: str,
    view: View = View(),
    max_cells: int = 36,
    force: bool = False,
) -> Path:
    """A grid of slices with their masks, one caption each. More than ``max_cells`` slices are
    subsampled evenly (the title says so)."""
    from matplotlib.figure import Figure

    n = len(images)
    if n == 0:
        raise ValueError("a contact sheet needs at least one slice")
    chosen = list(range(n))
    if n > max_cells:
        chosen = sorted({int(round(i)) for i in np.linspace(0, n - 1, max_cells)})
        title += f"  ({len(chosen)} of {n} slices shown)"
    cols = min(6, math.ceil(math.sqrt(len(chosen))))
    rows = math.ceil(len(chosen) / cols)
    pw, ph = _panel_size(np.asarray(images[0]).shape[:2], view, long_side_in=2.4)
    cap, gap = 0.24, 0.12  # caption height, space between cells (inches)
    header, footer = 0.45, 0.22
    cw, rh = pw + gap, ph + cap + gap
    fig_w, fig_h = max(cols * cw, 0.4 + 0.09 * len(title)), rows * rh + header + footer
    fig = Figure(figsize=(fig_w, fig_h), facecolor="black", dpi=100)
    for cell, i in enumerate(chosen):
        r, c = divmod(cell, cols)
        top = fig_h - header - r * rh
        left = c * cw + gap / 2
        ax = fig.add_axes((left / fig_w, (top - cap - ph) / fig_h, pw / fig_w, ph / fig_h))
        _draw_slice(ax, images[i], masks[i], view, font=7)
        fig.text((left + pw / 2) / fig_w, (top - 0.03) / fig_h, captions[i], color="white",
                 ha="center", va="top", fontsize=8)
    fig.text(0.01, 1 - 0.1 / fig_h, title, color="white", va="top", ha="left", fontsize=10,
             fontweight="bold")
    fig.text(0.99, 0.05 / fig_h, FOOTER, color="0.6", fontsize=7, ha="right", va="bottom")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png",
                                                      facecolor="black"), force=force)


__all__ = ["View", "render_contact_sheet", "render_overlay", "view_for", "window"]
