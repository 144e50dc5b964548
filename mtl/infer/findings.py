"""Per-case findings from predicted masks and probabilities: pure NumPy, units in the names.

Index conventions: every index, centroid and bounding box is in the input's own *native* array
order: ``(row, col)`` for 2-D images, the file's ``(i, j, k)`` for NIfTI, ``(slice, row, col)``
for a DICOM series (slices sorted along the slice normal). ``slices`` are indices along the
slicing axis. World coordinates are RAS+ millimetres (x toward the patient's Right, y Anterior,
z Superior; DICOM's LPS x and y negated), from the input's affine.

Units: ``*_px`` pixels (voxels for volumes), ``*_mm2`` square millimetres, ``volume_ml``
millilitres (1 mL = 1000 mm³), probabilities in [0, 1]. ``tumor.pixels`` counts every tumor
pixel (voxel) of the case; ``tumor.area_px`` / ``area_mm2`` is the tumor's area on an image, or
its largest cross-section (on ``largest_slice``) for a volume.

Aggregation over a volume's slices (documented in the record itself):

- presence probability: the maximum over the slices that were run; ``presence.slice`` says where
  (every slice's own probability is in ``presence_per_slice``, null for slices not run);
- type probabilities: the mean of the slices' type probabilities weighted by each slice's tumor
  area in the final mask, or by the slices' presence probability when the mask is empty;
- hemisphere (volumes with a known orientation only): the side of the head midline that holds
  the tumor voxels, the midline being the centre of the head's left-right extent (intensity above
  10 % of the 1st-99th percentile range, 1st-99th percentile of positions); "both" when neither
  side holds 80 % of the tumor.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: a hemisphere holding at least this fraction of the tumor is reported alone
HEMISPHERE_MAJORITY = 0.8


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def pixel_area_mm2(affine: np.ndarray | None, slice_axis: int | None,
                   spacing: tuple[float, float] | None) -> float | None:
    """Area of one in-plane pixel in mm², from the affine (volumes) or the spacing (images)."""
    if affine is not None and slice_axis is not None:
        rows, cols = (a for a in range(3) if a != slice_axis)
        return float(np.linalg.norm(np.cross(affine[:3, rows], affine[:3, cols])))
    if spacing is not None:
        return float(spacing[0]) * float(spacing[1])
    return None


def voxel_volume_mm3(affine: np.ndarray | None) -> float | None:
    if affine is None:
        return None
    return float(abs(np.linalg.det(affine[:3, :3])))


def head_midline(image: np.ndarray, axis: int) -> float:
    """Index along ``axis`` of the centre of the head's extent (see module doc)."""
    finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, [1, 99])
    foreground = image > lo + 0.1 * (hi - lo)
    profile = foreground.sum(axis=tuple(a for a in range(image.ndim) if a != axis)).astype(float)
    if profile.sum() == 0:
        return (image.shape[axis] - 1) / 2
    cum = np.cumsum(profile) / profile.sum()
    first = int(np.searchsorted(cum, 0.01))
    last = int(np.searchsorted(cum, 0.99))
    return (first + last) / 2


def hemisphere(mask: np.ndarray, affine: np.ndarray, image: np.ndarray) -> dict[str, Any] | None:
    """Which side of the patient holds the tumor: {"side", "left_fraction", ...} or None if empty.

    Uses the affine's orientation codes (nibabel ``aff2axcodes``): the native axis whose code is
    L or R runs toward the patient's left (L) or right (R) as its index grows.
    """
    from nibabel.orientations import aff2axcodes

    if mask.ndim != 3 or not mask.any():
        return None
    codes = aff2axcodes(affine)
    lr_axis = next((i for i, c in enumerate(codes) if c in ("L", "R")), None)
    if lr_axis is None:
        return None
    midline = head_midline(image, lr_axis)
    # tumor voxels per index along the left-right axis (no array with one entry per voxel)
    counts = _axis_counts(mask, lr_axis)
    index = np.arange(len(counts), dtype=float)
    toward_left = counts[index > midline if codes[lr_axis] == "L" else index < midline].sum()
    on_midline = counts[index == midline].sum()
    left_fraction = (toward_left + 0.5 * on_midline) / counts.sum()
    if left_fraction >= HEMISPHERE_MAJORITY:
        side = "left"
    elif left_fraction <= 1 - HEMISPHERE_MAJORITY:
        side = "right"
    else:
        side = "both"
    return {
        "side": side,
        "left_fraction": _round(left_fraction),
        "left_right_axis": int(lr_axis),
        "axis_points_to": "patient left" if codes[lr_axis] == "L" else "patient right",
        "midline_index": _round(midline, 2),
    }


def _axis_counts(mask: np.ndarray, axis: int) -> np.ndarray:
    """Nonzero voxels per index along ``axis`` (memory: that axis' length, not the mask's)."""
    return np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))


def compact_ranges(indices: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> "3-5,9"."""
    out: list[str] = []
    values = sorted(int(i) for i in indices)
    start = prev = None
    for v in values + [None]:  # type: ignore[list-item]
        if start is not None and (v is None or v != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ",".join(out)


def mask_rule_note(pred: Any, rule: str) -> dict[str, Any]:
    """What the mask rule did to a case (:func:`mtl.infer.predict.apply_mask_rule`)."""
    withheld = np.zeros(0, np.int64) if pred.withheld is None else np.asarray(pred.withheld)
    slices = [int(i) for i in np.flatnonzero(withheld)]
    return {
        "rule": rule,
        "meaning": ("a slice's mask is kept only where its presence decision is yes"
                    if rule == "presence" else "the mask head's pixels, whatever presence says"),
        "withheld_pixels": int(withheld.sum()),
        "withheld_slices": slices,
    }


def case_findings(
    *,
    mask: np.ndarray,
    presence: np.ndarray,
    type_probs: np.ndarray,
    classes: Sequence[str],
    presence_threshold: float = 0.5,
    slice_axis: int | None = None,
    affine: np.ndarray | None = None,
    orientation_known: bool = False,
    spacing: tuple[float, float] | None = None,
    image: np.ndarray | None = None,
) -> dict[str, Any]:
    """The findings of one case.

    ``mask``: the final 0/1 mask in native order (2-D for an image, 3-D for a volume, a
    singleton 4th axis allowed); ``presence`` (N,) and ``type_probs`` (N, K) per slice in slice
    order, NaN on slices not run; ``affine``: native index -> RAS+ mm (volumes); ``spacing``:
    (row, col) mm of an image when known; ``image``: native intensities (hemisphere midline).
    """
    mask = np.asarray(mask) > 0
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
        image = None if image is None else np.asarray(image).reshape(mask.shape)
    presence = np.asarray(presence, dtype=np.float64).reshape(-1)
    type_probs = np.asarray(type_probs, dtype=np.float64).reshape(len(presence), -1)
    run = np.isfinite(presence)
    is_volume = mask.ndim == 3

    # -- areas per slice
    if is_volume:
        axis = 2 if slice_axis is None else slice_axis
        per_slice = mask.sum(axis=tuple(a for a in range(3) if a != axis)).astype(np.int64)
    else:
        per_slice = np.array([int(mask.sum())], np.int64)
    px_mm2 = pixel_area_mm2(affine, slice_axis if is_volume else None, spacing)
    voxels = int(mask.sum())

    # -- presence
    p_slice = int(np.nanargmax(np.where(run, presence, -np.inf))) if run.any() else None
    p_value = float(presence[p_slice]) if p_slice is not None else float("nan")
    decision = bool(p_value > presence_threshold) if p_slice is not None else False

    # -- type
    weights = per_slice.astype(np.float64) * run
    rule = "tumor area"
    if weights.sum() == 0:
        weights = np.where(run, np.nan_to_num(presence), 0.0)
        rule = "presence probability"
    if weights.sum() == 0:
        weights = run.astype(np.float64)
        rule = "equal"
    probs = (np.nan_to_num(type_probs) * weights[:, None]).sum(0) / max(weights.sum(), 1e-12)
    label = classes[int(np.argmax(probs))] if len(classes) else None

    # -- tumor geometry
    tumor: dict[str, Any] = {
        "pixels": voxels,
        "area_px": None, "area_mm2": None, "largest_slice": None, "volume_ml": None,
        "centroid": None, "centroid_ras_mm": None, "bbox_min": None, "bbox_max": None,
        "slices": [], "per_slice": [], "hemisphere": None,
    }
    if is_volume:
        largest = int(np.argmax(per_slice))
        tumor["area_px"] = int(per_slice[largest])
        tumor["largest_slice"] = largest if voxels else None
        vox_mm3 = voxel_volume_mm3(affine)
        tumor["volume_ml"] = _round(voxels * vox_mm3 / 1000.0, 6) if vox_mm3 is not None else None
    else:
        tumor["area_px"] = voxels
    tumor["area_mm2"] = _round(tumor["area_px"] * px_mm2, 3) if px_mm2 is not None else None
    if voxels:
        # from per-axis counts: the mean/min/max of every tumor voxel's index, without an
        # array of those indices (24 bytes per tumor voxel)
        counts = [_axis_counts(mask, k) for k in range(mask.ndim)]
        centroid = np.array([np.dot(np.arange(len(c), dtype=np.float64), c) / voxels
                             for c in counts])
        tumor["centroid"] = [_round(c, 2) for c in centroid]
        tumor["bbox_min"] = [int(np.flatnonzero(c)[0]) for c in counts]
        tumor["bbox_max"] = [int(np.flatnonzero(c)[-1]) for c in counts]
        if affine is not None and is_volume:
            world = affine @ np.append(centroid, 1.0)
            tumor["centroid_ras_mm"] = [_round(v, 2) for v in world[:3]]
        tumor["slices"] = [int(i) for i in np.flatnonzero(per_slice)]
        tumor["per_slice"] = [
            {"slice": int(i), "area_px": int(per_slice[i]),
             "area_mm2": _round(per_slice[i] * px_mm2, 3) if px_mm2 is not None else None}
            for i in np.flatnonzero(per_slice)
        ] if is_volume else []
        if is_volume and orientation_known and affine is not None and image is not None:
            tumor["hemisphere"] = hemisphere(mask, affine, np.asarray(image, np.float32))

    warnings = []
    if decision and not voxels:
        warnings.append("the presence head says tumor but the mask is empty")
    if not decision and voxels:
        warnings.append(f"the presence head says no tumor but the mask marks {voxels} pixels")
    return {
        "presence": {
            "probability": _round(p_value),
            "decision": decision,
            "threshold": presence_threshold,
            "slice": p_slice if is_volume else None,
            "rule": "maximum over slices" if is_volume else "single image",
        },
        "type": {
            "label": label,
            "probabilities": {c: _round(p) for c, p in zip(classes, probs)},
            "rule": f"mean over slices weighted by {rule}" if is_volume else "single image",
        },
        "tumor": tumor,
        "pixel_area_mm2": _round(px_mm2, 6) if px_mm2 is not None else None,
        "presence_per_slice": [_round(p) for p in presence] if is_volume else None,
        "slices_run": int(run.sum()),
        "slices_skipped": [int(i) for i in np.flatnonzero(~run)] if is_volume else [],
        "warnings": warnings,
    }


def csv_row(record: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """Flatten a findings record (with ``case``, ``source``, ``kind``) into one CSV row."""
    f = record.get("findings") or {}
    presence = f.get("presence") or {}
    type_ = f.get("type") or {}
    tumor = f.get("tumor") or {}
    hemi = tumor.get("hemisphere") or {}

    def joined(values: Any) -> str:
        return "" if values is None else " ".join(str(v) for v in values)

    row = {
        "case": record.get("case"),
        "status": record.get("status", "ok"),
        "kind": record.get("kind"),
        "source": record.get("source"),
        "presence_probability": presence.get("probability"),
        "presence": presence.get("decision"),
        "label": type_.get("label"),
    }
    for c in classes:
        row[f"p_{c}"] = (type_.get("probabilities") or {}).get(c)
    row.update({
        "tumor_pixels": tumor.get("pixels"),
        "area_px": tumor.get("area_px"),
        "area_mm2": tumor.get("area_mm2"),
        "largest_slice": tumor.get("largest_slice"),
        "volume_ml": tumor.get("volume_ml"),
        "centroid": joined(tumor.get("centroid")),
        "centroid_ras_mm": joined(tumor.get("centroid_ras_mm")),
        "bbox_min": joined(tumor.get("bbox_min")),
        "bbox_max": joined(tumor.get("bbox_max")),
        "tumor_slices": compact_ranges(tumor.get("slices") or []),
        "hemisphere": hemi.get("side"),
        "warnings": "; ".join(record.get("warnings", []) + f.get("warnings", [])),
        "error": record.get("error", ""),
        "outputs": record.get("folder", ""),
    })
    return row


__all__ = ["HEMISPHERE_MAJORITY", "case_findings", "compact_ranges", "csv_row", "head_midline",
           "hemisphere", "pixel_area_mm2", "voxel_volume_mm3"]
