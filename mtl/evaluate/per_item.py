"""``predictions.csv`` of an evaluation: one row per item, for error analysis outside mtl.

The headline metrics average over items; this file keeps each item's own prediction and score,
so a reader can sort by Dice, find the tumors the presence gate blanked, or pick a threshold in
a spreadsheet. Every value is what the metrics were computed from: calibrated probabilities,
and the mask as ``mtl infer`` exports it (source geometry, mask rule and options applied).
An unlabelled task leaves its cells empty, never a fake 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mtl.evaluate.predict import SplitPredictions

#: the leading columns; then ``p_<class>`` per class, then the mask columns
COLUMNS = ("dataset", "case_id", "patient", "presence_true", "presence_prob", "presence_called",
           "label_true", "label_pred")
MASK_COLUMNS = ("mask_scored", "tumor_px_true", "tumor_px_pred", "dice", "iou", "hd95",
                "hd95_unit")


def _cell(value: Any) -> Any:
    """A CSV cell: empty for None / NaN; floats in the shortest text that reads back to the
    same value of their own precision (float32 probabilities as float32: 0.3, not
    0.30000001192092896), so a threshold swept on them decides as ``mtl evaluate`` did."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(float(value)) else str(value)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _count(value: Any) -> int | None:
    """A pixel count as an integer (None where not recorded)."""
    return int(value) if np.isfinite(value) else None


def prediction_rows(pred: SplitPredictions, classes: list[str], presence_threshold: float,
                    mask_rule: str = "presence") -> list[dict[str, Any]]:
    """One dict per item of ``pred``: truths (empty where unlabelled), calibrated
    probabilities, the decisions at ``presence_threshold`` and the exported mask's scores
    under ``mask_rule`` (empty where the mask was not scored; Dice and IoU also on tumor-free
    items, HD95 also where no mask was predicted)."""
    w, t, o = pred.weights, pred.targets, pred.outputs
    n = len(pred.case_ids)
    presence = o["presence"].reshape(n) if "presence" in o else np.full(n, np.nan)
    types = o.get("type")
    native = pred.native_under(mask_rule, presence_threshold)
    patients = pred.patient_ids if len(pred.patient_ids) == n else [""] * n
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "dataset": pred.source_names[i], "case_id": pred.case_ids[i],
            "patient": patients[i].split("/", 1)[-1] if patients[i] else "",
            "presence_true": int(t["presence"][i].reshape(-1)[0] > 0.5)
            if w["presence"][i] > 0 else None,
            "presence_prob": presence[i],
            # the decision the presence metrics count (>=; the mask gate keeps p > threshold)
            "presence_called": bool(presence[i] >= presence_threshold)
            if not math.isnan(float(presence[i])) else None,
            "label_true": classes[int(t["type"][i])] if w["type"][i] > 0 else None,
            "label_pred": classes[int(np.argmax(types[i]))] if types is not None else None,
        }
        for k, name in enumerate(classes):
            row[f"p_{name}"] = types[i, k] if types is not None else None
        if native is not None and native.scored[i]:
            row.update({"mask_scored": True, "tumor_px_true": _count(native.true_pixels[i]),
                        "tumor_px_pred": _count(native.pred_pixels[i]), "dice": native.dice[i],
                        "iou": native.iou[i], "hd95": native.hd95[i],
                        "hd95_unit": native.hd95_unit})
        else:
            row.update({"mask_scored": False, **{c: None for c in MASK_COLUMNS[1:]}})
        rows.append(row)
    return rows


def write_predictions_csv(pred: SplitPredictions, classes: list[str], path: Path,
                          presence_threshold: float, mask_rule: str = "presence") -> Path:
    """Write :func:`prediction_rows` to ``path`` (columns :data:`COLUMNS`, ``p_<class>``,
    :data:`MASK_COLUMNS`), replacing it; returns ``path``."""
    from mtl.infer.writers import write_csv

    fields = [*COLUMNS, *(f"p_{c}" for c in classes), *MASK_COLUMNS]
    rows = [{k: _cell(row.get(k)) for k in fields}
            for row in prediction_rows(pred, classes, presence_threshold, mask_rule)]
    return write_csv(path, rows, force=True)
