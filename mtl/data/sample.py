"""The sample dict that flows from an adapter to the loss, and the missing-label convention.

A sample is a plain dict::

    {
        "image":    np.ndarray, (H, W) or (H, W, C), any real dtype; the pipeline normalises it,
        "mask":     np.ndarray (H, W) uint8 in {0, 1}, or None when the dataset has no mask,
        "presence": 0 or 1, or None when unknown,
        "label":    a class name such as "glioma" or "no_tumor", or None when unknown,
        "case_id":  str, unique within its dataset,
        "meta":     dict: "dataset", "patient_id", "source" (path), and where known
                    "spacing" (row_mm, col_mm), "box" (x0, y0, x1, y1) in pixels, "grade", ...
    }

``None`` is the one way to say "this dataset does not label that task for this sample". It is
never replaced by a made-up value: the pipeline turns it into a per-task weight of 0, so the
sample contributes nothing to that task's loss or metric. A slice known to hold no tumor carries
``presence=0``, ``label="no_tumor"`` and an all-background mask, and all three count.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from mtl.tasks import TASKS

NO_TUMOR = "no_tumor"


class Sample(TypedDict):
    image: np.ndarray
    mask: np.ndarray | None
    presence: int | None
    label: str | None
    case_id: str
    meta: dict[str, Any]


def make_sample(
    image: np.ndarray,
    *,
    case_id: str,
    mask: np.ndarray | None = None,
    presence: int | None = None,
    label: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Build a checked sample dict. Raises ValueError naming the case on inconsistent input."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{case_id}: image must be (H, W) or (H, W, C), got shape {image.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{case_id}: mask shape {mask.shape} does not match image shape {image.shape[:2]}"
            )
        mask = (mask > 0).astype(np.uint8)
    if presence is not None:
        presence = int(bool(presence))
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{case_id}: label must be a class name or None, got {label!r}")
    return Sample(
        image=image,
        mask=mask,
        presence=presence,
        label=label,
        case_id=str(case_id),
        meta=dict(meta or {}),
    )


def labelled_tasks(sample: Sample) -> dict[str, bool]:
    """Which tasks this sample labels: {"presence": bool, "type": bool, "mask": bool}, one per
    task of :data:`mtl.tasks.TASKS` with a sample field of its own."""
    return {t.name: sample[t.sample_key] is not None for t in TASKS if t.sample_key is not None}
