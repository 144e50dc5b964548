"""Metrics per task, on NumPy arrays; scikit-learn and SciPy do the arithmetic they cover.

Every function takes only the items that label the task (callers select them with the task
weights) and returns plain JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats
from sklearn import metrics as skm


def _f(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


# --------------------------------------------------------------------------- presence


def presence_metrics(truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Binary tumor presence: accuracy, precision, recall (sensitivity), specificity, F1, AUC."""
    truth = np.asarray(truth).astype(int).ravel()
    prob = np.asarray(prob, float).ravel()
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(truth, pred, labels=[0, 1]).ravel()
    both = len(np.unique(truth)) == 2
    return {
        "n": int(len(truth)), "n_positive": int(tp + fn), "n_negative": int(tn + fp),
        "threshold": float(threshold),
        "accuracy": _f(skm.accuracy_score(truth, pred)),
        "precision": _f(skm.precision_score(truth, pred, zero_division=np.nan)),
        "recall": _f(skm.recall_score(truth, pred, zero_division=np.nan)),
        "specificity": _f(tn / (tn + fp)) if tn + fp else None,
        "f1": _f(skm.f1_score(truth, pred, zero_division=np.nan)),
        "roc_auc": _f(skm.roc_auc_score(truth, prob)) if both else None,
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def roc_points(truth: np.ndarray, prob: np.ndarray) -> dict[str, list[float]] | None:
    truth = np.asarray(truth).astype(int).ravel()
    if len(np.unique(truth)) < 2:
        return None
    fpr, tpr, thr = skm.roc_curve(truth, np.asarray(prob, float).ravel())
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.nan_to_num(thr, posinf=1.0).tolist()}


# --------------------------------------------------------------------------- type / grade


def type_metrics(truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Multi-class type/grade: confusion matrix, per-class P/R/F1, macro-F1, balanced accuracy.

    Classes absent from ``truth`` are reported with support 0 and left out of the macro
    averages (they have no recall to average).
    """
    truth = np.asarray(truth).astype(int).ravel()
    pred = np.asarray(probs).argmax(axis=1)
    labels = list(range(len(classes)))
    present = sorted(set(truth.tolist()))
    p, r, f1, support = skm.precision_recall_fscore_support(
        truth, pred, labels=labels, zero_division=0.0)
    return {
        "n": int(len(truth)),
        "classes": list(classes),
        "accuracy": _f(skm.accuracy_score(truth, pred)),
        "balanced_accuracy": _f(skm.balanced_accuracy_score(truth, pred)) if present else None,
        "macro_f1": _f(skm.f1_score(truth, pred, labels=present, average="macro", zero_division=0.0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion": skm.confusion_matrix(truth, pred, labels=labels).tolist(),
    }


# --------------------------------------------------------------------------- masks


def dice_iou(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks; both empty scores 1 (nothing to find, nothing found).

    Kept apart from the tensor Dice (``mtl.model.losses.dice``, whose ``smooth=0, empty=1`` is
    this convention): evaluation scores NumPy masks of any size without importing TensorFlow."""
    t, p = truth.ravel().astype(bool), pred.ravel().astype(bool)
    return (
        float(skm.f1_score(t, p, zero_division=1.0)),
        float(skm.jaccard_score(t, p, zero_division=1.0)),
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces (units of spacing).

    Directed distances come from Euclidean distance transforms (SciPy) of the other surface;
    the result is the larger of the two directed 95th percentiles (the MONAI/MedPy convention).
    NaN when either mask is empty.
    """
    t, p = truth.astype(bool), pred.astype(bool)
    if not t.any() or not p.any():
        return float("nan")
    st, sp = _surface(t), _surface(p)
    dist_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(dist_to_p[st], 95), np.percentile(dist_to_t[sp], 95)))


@dataclass
class MaskScores:
    """Per-image mask scores, aligned with the images they came from.

    ``tumor`` marks images whose true mask has a tumor; ``dice``, ``iou`` and ``hd95`` are
    NaN on the others (and HD95 also where the prediction is empty); ``pred_pixels`` counts
    predicted tumor pixels; ``pixel_area`` is mm^2 per pixel (NaN where unknown); ``hd95_unit``
    says whether HD95 is in mm or pixels; ``true_pixels`` counts true tumor pixels (NaN where
    not recorded), so Dice can be pooled over a patient's slices (:meth:`overlap`).
    """

    tumor: np.ndarray
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    pred_pixels: np.ndarray
    pixel_area: np.ndarray
    hd95_unit: str = "px"
    #: False where the image could not be scored (then left out of every summary)
    scored: np.ndarray | None = None
    true_pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scored is None:
            self.scored = np.ones(len(self.tumor), bool)
        if self.true_pixels is None:
            self.true_pixels = np.where(self.tumor, np.nan, 0.0)

    def overlap(self) -> np.ndarray:
        """Pixels both true and predicted, per image, from Dice and the two pixel counts
        (Dice = 2|T&P| / (|T| + |P|)); 0 on tumor-free images, NaN where not recorded."""
        total = self.pred_pixels + self.true_pixels
        return np.where(self.tumor, np.nan_to_num(self.dice) * total / 2, 0.0)

    def __len__(self) -> int:
        return len(self.tumor)

    def select(self, keep: np.ndarray) -> "MaskScores":
        keep = np.asarray(keep)
        return MaskScores(self.tumor[keep], self.dice[keep], self.iou[keep], self.hd95[keep],
                          self.pred_pixels[keep], self.pixel_area[keep], self.hd95_unit,
                          self.scored[keep], self.true_pixels[keep])

    def withhold(self, keep: np.ndarray) -> "MaskScores":
        """The scores had the prediction been emptied where ``keep`` is False (a mask rule):
        Dice and IoU 0 on tumor images, HD95 undefined, no predicted pixel."""
        drop = ~np.asarray(keep, bool)
        out = MaskScores(self.tumor.copy(), self.dice.copy(), self.iou.copy(), self.hd95.copy(),
                         self.pred_pixels.copy(), self.pixel_area.copy(), self.hd95_unit,
                         self.scored.copy(), self.true_pixels.copy())
        out.dice[drop & self.tumor] = 0.0
        out.iou[drop & self.tumor] = 0.0
        out.hd95[drop] = np.nan
        out.pred_pixels[drop] = 0
        return out

    @classmethod
    def empty(cls, n: int, hd95_unit: str = "px") -> "MaskScores":
        """``n`` unscored images (``scored`` False)."""
        nan = np.full(n, np.nan)
        return cls(np.zeros(n, bool), nan.copy(), nan.copy(), nan.copy(), np.zeros(n, np.int64),
                   nan.copy(), hd95_unit, np.zeros(n, bool), nan.copy())


def score_mask(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None
               ) -> tuple[bool, float, float, float, int]:
    """(tumor, Dice, IoU, HD95, predicted pixels) of one binary (H, W) mask pair.

    HD95 is in the units of ``spacing`` (pixels when None); Dice/IoU/HD95 are NaN when the
    true mask is empty."""
    t, p = np.asarray(truth) > 0, np.asarray(pred) > 0
    tumor = bool(t.any())
    n_pred = int(p.sum())
    if not tumor:
        return False, float("nan"), float("nan"), float("nan"), n_pred
    d, j = dice_iou(t, p)
    return True, d, j, hd95(t, p, spacing if spacing is not None else (1.0, 1.0)), n_pred


def mask_scores(truth: np.ndarray, prob: np.ndarray, spacing: np.ndarray,
                threshold: float = 0.5) -> MaskScores:
    """:class:`MaskScores` of (N, H, W[, 1]) true masks and probability maps at one size.

    ``spacing`` is (N, 2) mm per pixel, NaN where unknown: HD95 is in mm when every tumor
    image has a spacing, else in pixels."""
    truth = truth.reshape(len(truth), *truth.shape[1:3]) > 0.5
    pred = prob.reshape(len(prob), *prob.shape[1:3]) >= threshold
    spacing = np.asarray(spacing, float).reshape(len(truth), 2)
    tumor = truth.reshape(len(truth), -1).any(1)
    in_mm = bool(tumor.any()) and bool(np.isfinite(spacing[tumor]).all())
    out = MaskScores.empty(len(truth), "mm" if in_mm else "px")
    out.scored[:] = True
    for i, (t, p, sp) in enumerate(zip(truth, pred, spacing)):
        out.tumor[i], out.dice[i], out.iou[i], out.hd95[i], out.pred_pixels[i] = score_mask(
            t, p, sp if in_mm else None)
        out.true_pixels[i] = int(t.sum())
    out.pixel_area[:] = np.prod(spacing, axis=1)
    return out


def summarise_masks(scores: MaskScores, threshold: float = 0.5) -> dict:
    """Dice/IoU/HD95 over scored images with a tumor; false positives on those without."""
    scores = scores.select(scores.scored)
    tumor = scores.tumor.astype(bool)
    arr = np.stack([scores.dice[tumor], scores.iou[tumor], scores.hd95[tumor]], 1).reshape(-1, 3)
    fp_pixels = scores.pred_pixels[~tumor].astype(float)
    px_area = scores.pixel_area[~tumor]
    hd_ok = len(arr) and np.isfinite(arr[:, 2]).any()
    return {
        "n_tumor": int(tumor.sum()),
        "n_empty": int((~tumor).sum()),
        "threshold": float(threshold),
        "dice_mean": _f(np.mean(arr[:, 0])) if len(arr) else None,
        "dice_median": _f(np.median(arr[:, 0])) if len(arr) else None,
        "iou_mean": _f(np.mean(arr[:, 1])) if len(arr) else None,
        "iou_median": _f(np.median(arr[:, 1])) if len(arr) else None,
        "hd95_mean": _f(np.nanmean(arr[:, 2])) if hd_ok else None,
        "hd95_median": _f(np.nanmedian(arr[:, 2])) if hd_ok else None,
        "hd95_unit": scores.hd95_unit,
        "hd95_undefined": int(np.isnan(arr[:, 2]).sum()) if len(arr) else 0,
        "empty_fp_rate": _f(np.mean(fp_pixels > 0)) if len(fp_pixels) else None,
        "empty_fp_count": int((fp_pixels > 0).sum()),
        "empty_fp_area_px_mean": _f(np.mean(fp_pixels)) if len(fp_pixels) else None,
        "empty_fp_area_mm2_mean": (
            _f(np.mean(fp_pixels * px_area)) if len(fp_pixels) and np.isfinite(px_area).all() else None
        ),
        "per_image_dice": arr[:, 0].tolist(),
        "per_image_iou": arr[:, 1].tolist(),
        "per_image_hd95": [None if np.isnan(v) else float(v) for v in arr[:, 2]],
    }


def mask_metrics(
    truth: np.ndarray, prob: np.ndarray, spacing: np.ndarray, threshold: float = 0.5
) -> dict:
    """Per-image Dice/IoU/HD95 over images with a tumor; false-positive area on images without.

    ``truth`` and ``prob`` are (N, H, W[, 1]); ``spacing`` is (N, 2) mm per pixel, NaN where
    unknown. HD95 is in mm when every tumor image has a spacing, else in pixels.
    """
    return summarise_masks(mask_scores(truth, prob, spacing, threshold), threshold)


def box_metrics(box: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Box-only location: does the predicted tumor fall in the box?

    ``hit``: the centroid of the predicted mask lies inside the box; an empty prediction is a
    miss. ``inside_fraction``: share of the predicted tumor area inside the box.
    """
    box = box.reshape(len(box), *box.shape[1:3]) > 0.5
    pred = prob.reshape(len(prob), *prob.shape[1:3]) >= threshold
    hits, inside = [], []
    for b, p in zip(box, pred):
        if not p.any():
            hits.append(0.0)
            continue
        r, c = (int(round(v)) for v in ndimage.center_of_mass(p))
        hits.append(float(b[r, c]))
        inside.append(float((p & b).sum() / p.sum()))
    return {
        "n": int(len(box)),
        "hit_rate": _f(np.mean(hits)) if hits else None,
        "empty_prediction_rate": _f(np.mean(~pred.reshape(len(pred), -1).any(1))) if len(pred) else None,
        "inside_fraction_mean": _f(np.mean(inside)) if inside else None,
        "per_image_hit": hits,
    }


# --------------------------------------------------------------------------- calibration


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> dict:
    """Expected calibration error over equal-width confidence bins, and the bins themselves.

    For presence, pass the tumor probability and the truth (0/1); for type, the top-class
    probability and whether the top class is right.
    """
    confidence = np.asarray(confidence, float).ravel()
    correct = np.asarray(correct, float).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for k in range(n_bins):
        sel = which == k
        if not sel.any():
            continue
        conf, acc = confidence[sel].mean(), correct[sel].mean()
        ece += sel.mean() * abs(acc - conf)
        bins.append({"low": float(edges[k]), "high": float(edges[k + 1]), "n": int(sel.sum()),
                     "confidence": float(conf), "accuracy": float(acc)})
    return {"ece": float(ece) if len(confidence) else None, "n_bins": n_bins, "bins": bins}


# --------------------------------------------------------------------------- uncertainty


def bootstrap_ci(
    statistic: Callable[..., float], *arrays: np.ndarray, n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of ``statistic(*arrays)``, resampling items jointly (SciPy)."""
    arrays = tuple(np.asarray(a) for a in arrays)
    if len(arrays[0]) < 2 or n_resamples <= 0:
        return None
    result = stats.bootstrap(
        arrays, statistic, paired=True, vectorized=False, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", random_state=seed,
    )
    low, high = result.confidence_interval
    if np.isnan(low) or np.isnan(high):
        return None
    return float(low), float(high)


def cluster_bootstrap_ci(
    statistic: Callable[..., float], *arrays: np.ndarray, groups: Sequence[str] | np.ndarray,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI that resamples whole groups (patients), not items.

    Items of one patient (or near-duplicate slices of one scan) are not independent: resampling
    them one by one gives intervals that are too narrow. Each resample draws as many groups as
    there are, with replacement, and takes all items of each drawn group (the cluster bootstrap,
    Field & Welsh 2007). With one item per group it is the ordinary bootstrap.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    groups = np.asarray(groups)
    if len(groups) != len(arrays[0]):
        raise ValueError(f"{len(groups)} group ids for {len(arrays[0])} items")
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(groups) else []
    if len(members) < 2 or n_resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for r in range(n_resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        values[r] = statistic(*(a[idx] for a in arrays))
    alpha = (1.0 - confidence) / 2
    low, high = np.nanpercentile(values, [100 * alpha, 100 * (1 - alpha)])
    if np.isnan(low) or np.isnan(high):
        return None
    return float(low), float(high)
