"""Look at a dataset through its adapter: label counts, and a picture of a few samples.

:func:`summarize` works on records only (no pixels), so it is cheap even for large sets. A record
counts as box-labelled when its adapter sets ``extra["has_box"]`` (the figshare adapter does).
:func:`write_mosaic` loads a random handful of samples and draws them with their mask outline
(red) and box (yellow).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.data.sample import Sample

UNKNOWN = "unknown"


def _count(values: list[Any]) -> dict[str, int]:
    """Counts keyed by str(value), None shown as "unknown", sorted by key."""
    counts = Counter(UNKNOWN if v is None else str(v) for v in values)
    return dict(sorted(counts.items()))


def task_counts(records: list[Record]) -> dict[str, int]:
    """How many records label each task: presence, type, mask, box."""
    return {
        "presence": sum(r.presence is not None for r in records),
        "type": sum(r.label is not None for r in records),
        "mask": sum(r.has_mask for r in records),
        "box": sum(bool(r.extra.get("has_box")) for r in records),
    }


def summarize(adapter: Adapter) -> dict[str, Any]:
    """Counts of a dataset, JSON-ready.

    Keys: dataset, root, n_items, n_patients, labels (per label, None as "unknown"), presence
    (per value), tasks (records labelling presence / type / mask / box), skipped (count and
    [{"source", "reason"}]).
    """
    records = adapter.records()
    return {
        "dataset": adapter.name,
        "root": str(adapter.root),
        "n_items": len(records),
        "n_patients": len({r.patient_id for r in records}),
        "labels": _count([r.label for r in records]),
        "presence": _count([r.presence for r in records]),
        "tasks": task_counts(records),
        "skipped": {
            "count": len(adapter.skipped),
            "items": [{"source": s, "reason": why} for s, why in adapter.skipped],
        },
    }


def _pick(records: list[Record], n: int, seed: int) -> list[Record]:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(records), size=min(n, len(records)), replace=False)
    return [records[i] for i in sorted(chosen)]


def _title(sample: Sample) -> str:
    if sample["label"] is not None:
        what = sample["label"]
    elif sample["presence"] is not None:
        what = "tumor, type ?" if sample["presence"] else "no tumor"
    else:
        what = "?"
    return f"{sample['case_id']}\n{what}"


def _draw(ax: Any, sample: Sample) -> None:
    image = sample["image"]
    ax.imshow(image, cmap=None if image.ndim == 3 else "gray", interpolation="nearest")
    mask = sample["mask"]
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    box = sample["meta"].get("box")
    if box is not None:
        x0, y0, x1, y1 = box
        # pixel-edge coordinates -> imshow's pixel-centre axes: edges sit at -0.5
        corner = (x0 - 0.5, y0 - 0.5)
        ax.add_patch(
            Rectangle(corner, x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=0.8)
        )
    ax.set_title(_title(sample), fontsize=7)


def write_mosaic(adapter: Adapter, path: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write a PNG grid of ``n`` random samples (fixed by ``seed``) with mask outlines and boxes.

    Items that fail to load are left out when the adapter has ``on_error="skip"`` (the adapter
    records them in ``skipped``); otherwise the DataError propagates.
    """
    records = _pick(adapter.records(), n, seed)
    samples: list[Sample] = []
    for record in records:
        try:
            samples.append(adapter.load(record))
        except DataError:
            if adapter.on_error != "skip":
                raise
    cols = max(1, math.ceil(math.sqrt(len(samples))))
    rows = max(1, math.ceil(len(samples) / cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, sample in zip(axes.ravel(), samples):
        _draw(ax, sample)
    fig.suptitle(f"{adapter.name}: {len(samples)} of {len(adapter.records())} items", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
