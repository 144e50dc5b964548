"""Pictures for people: mask overlays, contact sheets of tumor slices, Grad-CAM panels.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed), on a
black background: the scan in grey (0.5-99.5 percentile window), the tumor as a translucent red
fill with a yellow outline, and a header with the case's label and probabilities.

Slices of volumes are *shown* in the usual radiological orientation when the orientation is
known (axial: anterior up, patient's right on the viewer's left; coronal: superior up, right on
the left; sagittal: superior up, anterior on the left), with orientation letters at the edges.
The network sees volume slices in that same orientation (:mod:`mtl.data.orientation`), so
the slices drawn here are upright already and the view only labels the edges.

A slice is drawn at most :data:`DRAW_MAX_SIDE` pixels on its longest side: a larger one (a
50-megapixel PNG, say) is first reduced by an integer factor, the scan by block means and the
mask by "any tumor pixel in the block" (a small tumor stays visible), so drawing an overlay costs
the same few tens of megabytes whatever the input's size. The picture is 500 pixels wide, so
slices of normal size (up to 1024 pixels) are drawn exactly as before. Masks written to files
are never reduced: they stay in the input's geometry.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.data.orientation import View, view_for
from mtl.infer.writers import write_bytes

FILL_RGBA = (1.0, 0.1, 0.1, 0.38)
OUTLINE = "yellow"
FOOTER = "mtl research output - not a diagnosis"
#: ``mtl serve``'s page shows an overlay at most this wide (CSS px); the header text is sized
#: so that it is at least ``MIN_TEXT_PX`` high there, and at least that in the file itself
PAGE_WIDTH_PX = 600
MIN_TEXT_PX = 14


def header_text_px(width_px: float) -> float:
    """Font size (px) of an overlay's header for a picture ``width_px`` wide: it grows with the
    picture, so the text is >= MIN_TEXT_PX (with glyph margin) once scaled to the page."""
    return max(17.0, 1.2 * MIN_TEXT_PX * width_px / PAGE_WIDTH_PX)


def wrap_header(line: str, width_px: float, font_px: float, bold: bool = False) -> list[str]:
    """One header line wrapped to the picture's width (bold sans, else monospace), instead of
    widening the picture, which would shrink the text on the page."""
    import textwrap

    em = 0.72 if bold else 0.61  # advance per character, in em
    width = max(20, int(0.97 * width_px / (em * font_px)))
    return textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]


#: longest side (pixels) a slice is drawn at; larger slices are reduced first (module docstring)
DRAW_MAX_SIDE = 1024


def display_factor(shape: Sequence[int], max_side: int = DRAW_MAX_SIDE) -> int:
    """The integer reduction that brings a (rows, cols, ...) slice to at most ``max_side``."""
    return max(1, math.ceil(max(int(shape[0]), int(shape[1])) / max_side))


def _blocks(shape: Sequence[int], factor: int) -> tuple[int, int]:
    return -(-int(shape[0]) // factor), -(-int(shape[1]) // factor)


def reduce_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor`` x ``factor`` pixels (partial blocks at the edges are means of
    what they hold), as float32; channels are kept. Memory: the output's size, never a float
    copy of the input."""
    image = np.asarray(image)
    if factor <= 1:
        return image
    rows, cols = _blocks(image.shape, factor)
    out = np.zeros((rows, cols, *image.shape[2:]), np.float32)
    for dy in range(factor):
        for dx in range(factor):
            part = image[dy::factor, dx::factor]
            if part.size:
                view = out[: part.shape[0], : part.shape[1]]
                np.add(view, part, out=view, casting="unsafe")
    count_r = np.minimum(factor, image.shape[0] - factor * np.arange(rows)).astype(np.float32)
    count_c = np.minimum(factor, image.shape[1] - factor * np.arange(cols)).astype(np.float32)
    count = np.outer(count_r, count_c).reshape(rows, cols, *([1] * (image.ndim - 2)))
    out /= count
    return out


def reduce_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """Block maximum of ``mask > 0`` (bool): a block holding any tumor pixel is tumor."""
    mask = np.asarray(mask)
    if factor <= 1:
        return mask
    out = np.zeros(_blocks(mask.shape, factor), bool)
    for dy in range(factor):
        for dx in range(factor):
            part = mask[dy::factor, dx::factor]
            if part.size:
                view = out[: part.shape[0], : part.shape[1]]
                np.logical_or(view, part > 0, out=view)
    return out


def for_display(image: np.ndarray, mask: np.ndarray | None = None,
                heat: np.ndarray | None = None, max_side: int = DRAW_MAX_SIDE
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The slice, its mask and heat map reduced together to at most ``max_side`` pixels (the
    factor is the image's; arrays of normal size come back unchanged)."""
    factor = display_factor(np.shape(image), max_side)
    if factor == 1:
        return image, mask, heat
    return (reduce_mean(image, factor), None if mask is None else reduce_any(mask, factor),
            None if heat is None else reduce_mean(heat, factor))


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
    image, mask, heat = for_display(image, mask, heat)
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


def render_overlay(path: str | Path, image: np.ndarray, mask: np.ndarray | None, *,
                   force: bool = False, **options: Any) -> Path:
    """:func:`overlay_png` written to ``path`` (atomically; ``force``: over an existing file)."""
    return write_bytes(path, overlay_png(image, mask, **options), force=force)


def overlay_png(
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    lines: Sequence[str],
    view: View = View(),
    heat: np.ndarray | None = None,
    heat_title: str = "Grad-CAM",
    model_line: str | None = None,
) -> bytes:
    """One PNG: the slice with the mask outline and fill, a text header; with ``heat``, a second
    panel showing the Grad-CAM heat map over the slice. ``model_line`` (the model card's one
    line, :func:`mtl.model.card.card_line`) goes into the footer and the PNG's ``Model`` text."""
    from matplotlib.figure import Figure

    panels = 1 if heat is None else 2
    pw, ph = _panel_size(np.asarray(image).shape[:2], view)
    fig_w = pw * panels  # the header and the footer's model line wrap to the picture's width
    model_rows = _wrap_model_line(model_line, fig_w)
    footer = 0.25 + MODEL_ROW_IN * len(model_rows)
    font_px = header_text_px(fig_w * 100)
    # (text, bold) per wrapped line: the first given line is the bold title
    rows = [(text, k == 0) for k, line in enumerate(lines)
            for text in wrap_header(line, fig_w * 100, font_px, bold=k == 0)]
    line_h = 1.3 * font_px / 100  # inches
    header = line_h * len(rows) + 0.15
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
    for k, (text, bold) in enumerate(rows):
        fig.text(0.01, 1 - (0.08 + line_h * k) / total_h, text, color="white", va="top",
                 ha="left", fontsize=font_px * 0.72, fontweight="bold" if bold else None,
                 family=None if bold else "monospace")
    fig.text(0.99, 0.06 / total_h, FOOTER, color="0.6", fontsize=9, ha="right", va="bottom")
    _model_footer(fig, model_rows, 0.25, total_h)
    return _png_bytes(fig, model_line)


def _png_bytes(fig: Any, model_line: str | None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="black", metadata=_png_text(model_line))
    return buffer.getvalue()


#: footer rows of the model card's line: font (pt) and row height (inches)
MODEL_FONT_PT, MODEL_ROW_IN = 9.0, 0.17


def _wrap_model_line(model_line: str | None, width_in: float) -> list[str]:
    """The model card's line wrapped to ``width_in`` (sans 9 pt, about 0.6 em a character)."""
    import textwrap

    if not model_line:
        return []
    width = max(30, int(0.95 * width_in * 72 / (0.6 * MODEL_FONT_PT)))
    return textwrap.wrap(model_line, width, subsequent_indent="  ", break_on_hyphens=False)


def _model_footer(fig, rows: list[str], bottom_in: float, total_in: float) -> None:
    """The model card's line above the disclaimer, top row first; orange for a demo model."""
    demo = any("not for real scans" in row for row in rows) or (
        bool(rows) and rows[0].startswith("model: demo model"))
    for k, row in enumerate(reversed(rows)):
        fig.text(0.01, (bottom_in + MODEL_ROW_IN * k) / total_in, row,
                 color="orange" if demo else "0.75", fontsize=MODEL_FONT_PT, ha="left",
                 va="bottom", fontweight="bold" if demo else None)


def _png_text(model_line: str | None) -> dict[str, str] | None:
    if not model_line:
        return None
    return {"Model": model_line.encode("latin-1", "replace").decode("latin-1")}


def render_contact_sheet(path: str | Path, images: Sequence[np.ndarray],
                         masks: Sequence[np.ndarray], captions: Sequence[str], *,
                         force: bool = False, **options: Any) -> Path:
    """:func:`contact_sheet_png` written to ``path`` (atomically)."""
    return write_bytes(path, contact_sheet_png(images, masks, captions, **options), force=force)


def contact_sheet_png(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    title: str,
    view: View = View(),
    max_cells: int = 36,
    model_line: str | None = None,
) -> bytes:
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
    cw, rh = pw + gap, ph + cap + gap
    fig_w = max(cols * cw, 0.4 + 0.09 * len(title))
    model_rows = _wrap_model_line(model_line, fig_w)
    header, footer = 0.45, 0.22 + MODEL_ROW_IN * len(model_rows)
    fig_h = rows * rh + header + footer
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
    _model_footer(fig, model_rows, 0.22, fig_h)
    return _png_bytes(fig, model_line)


__all__ = ["DRAW_MAX_SIDE", "View", "contact_sheet_png", "display_factor", "for_display",
           "overlay_png", "reduce_any", "reduce_mean", "render_contact_sheet", "render_overlay",
           "view_for", "window"]
