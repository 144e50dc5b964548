"""Patient-level type/grade: slice predictions aggregated per patient, scored over patients.

A grade (or a tumor type) is a property of the patient, not of one slice. For every dataset of
the evaluated split whose patients have more than one slice and whose tumor slices carry one
label per patient, the slices of each patient are combined into one prediction:

**Rule (presence-weighted mean).** Over *every* evaluated slice of the patient (whatever its
label: the rule uses predictions only, as it would on a new scan) take the type head's
probabilities of the tumor classes (``no_tumor`` left out, renormalised to sum to 1) and average
them, each slice weighted by its predicted (calibrated) presence probability, so slices the
network sees no tumor in hardly count. When a patient's weights sum to less than
:data:`WEIGHT_FLOOR` (every slice called tumor-free) the plain mean is used. The predicted
class is the arg-max; the true class is the tumor label the patient's tumor slices share.
Patients with no labelled tumor slice (e.g. no grade on record) are left out and counted.

A dataset where some patient's tumor slices carry two different labels is skipped (and the
report says so): it has no patient-level truth.

Scores per dataset: accuracy and ROC-AUC over patients (two tumor classes: the AUC of the
second class's probability, e.g. P(G3); more: the one-vs-rest macro AUC over the classes the
patients have), each with a percentile bootstrap 95% CI that resamples patients
(:func:`patient_bootstrap`), and next to them the slice-level Dice on the dataset's tumor slices
and the patient-level Dice (:func:`patient_dice`: one Dice per patient over all its evaluated
slices, tumor-free ones included, i.e. a volumetric Dice when the slices form a volume, the unit
published LGG results such as Buda et al. 2019 report).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from sklearn import metrics as skm

from mtl.data.sample import NO_TUMOR
from mtl.evaluate.metrics import MaskScores, cluster_bootstrap_ci, mask_scores, summarise_masks
from mtl.evaluate.predict import SplitPredictions

#: a patient whose presence weights sum below this gets the plain mean of its slices
WEIGHT_FLOOR = 1e-6

RULE = ("presence-weighted mean over every evaluated slice of the patient of the type head's "
        "tumor-class probabilities (no_tumor left out, renormalised), weight = predicted "
        f"presence probability (plain mean when the weights sum below {WEIGHT_FLOOR:g}); "
        "predicted class = arg-max; true class = the label the patient's tumor slices share")


# --------------------------------------------------------------------------- aggregation


def tumor_probabilities(type_probs: np.ndarray, tumor_index: list[int]) -> np.ndarray:
    """(N, K) probabilities of the tumor classes ``tumor_index`` of (N, C) type-head outputs,
    renormalised to sum to 1 (uniform where they are all 0)."""
    p = np.nan_to_num(np.asarray(type_probs, float)[:, tumor_index], nan=0.0)
    total = p.sum(1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / len(tumor_index)), where=total > 0)


def aggregate_patients(patients: np.ndarray | list[str], presence: np.ndarray,
                       tumor_probs: np.ndarray) -> dict[str, Any]:
    """The presence-weighted mean of ``tumor_probs`` per patient (module docstring).

    Returns ``patients`` (sorted unique ids), ``probs`` (P, K), ``n_slices`` (P,),
    ``weight_sum`` (P,) and ``fallback`` (P,): True where the plain mean was used."""
    patients = np.asarray(patients)
    weight = np.clip(np.nan_to_num(np.asarray(presence, float).reshape(-1), nan=0.0), 0.0, None)
    ids, inverse = np.unique(patients, return_inverse=True)
    k = tumor_probs.shape[1]
    probs = np.empty((len(ids), k))
    n_slices = np.bincount(inverse, minlength=len(ids))
    weight_sum = np.bincount(inverse, weights=weight, minlength=len(ids))
    fallback = weight_sum < WEIGHT_FLOOR
    for g in range(len(ids)):
        rows = inverse == g
        w = np.ones(int(rows.sum())) if fallback[g] else weight[rows]
        probs[g] = np.average(tumor_probs[rows], axis=0, weights=w)
    return {"patients": ids.tolist(), "probs": probs, "n_slices": n_slices,
            "weight_sum": weight_sum, "fallback": fallback}


def patient_labels(patients: np.ndarray | list[str], labels: np.ndarray
                   ) -> tuple[dict[str, int], dict[str, list[int]]]:
    """({patient: label}, {patient: sorted labels} of patients with more than one) from
    per-slice labels; a label < 0 means the slice carries no tumor label."""
    seen: dict[str, set[int]] = {}
    for patient, label in zip(np.asarray(patients).tolist(), np.asarray(labels).tolist()):
        if label >= 0:
            seen.setdefault(patient, set()).add(int(label))
    one = {p: next(iter(v)) for p, v in seen.items() if len(v) == 1}
    conflicts = {p: sorted(v) for p, v in seen.items() if len(v) > 1}
    return one, conflicts


# --------------------------------------------------------------------------- scores


def patient_auc(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC-AUC of per-patient class probabilities (P, K) against class indices ``truth``.

    K == 2: AUC of the second class's probability. K > 2: one-vs-rest AUC averaged (macro) over
    the classes present in ``truth``. None when fewer than two classes are present."""
    truth = np.asarray(truth, int)
    present = np.unique(truth)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(skm.roc_auc_score(truth == 1, probs[:, 1]))
    indicator = (truth[:, None] == present[None, :]).astype(int)
    return float(skm.roc_auc_score(indicator, probs[:, present], average="macro"))


def patient_accuracy(truth: np.ndarray, probs: np.ndarray) -> float:
    """Share of patients whose arg-max class is their true class."""
    return float(np.mean(np.asarray(truth, int) == np.asarray(probs).argmax(1)))


def patient_bootstrap(truth: np.ndarray, probs: np.ndarray, n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap CIs of patient-level accuracy and ROC-AUC.

    Each resample draws as many patients as there are, with replacement (fixed ``seed``). For
    the AUC, resamples that lack one of the classes present among all the patients are skipped
    (the AUC is undefined there, or would average over other classes); how many were used is
    returned. A CI is None with fewer than two patients, no resamples, or (AUC) none usable."""
    truth, probs = np.asarray(truth, int), np.asarray(probs, float)
    out: dict[str, Any] = {"n_resamples": int(max(n_resamples, 0)), "confidence": confidence,
                           "seed": seed, "accuracy_ci95": None, "roc_auc_ci95": None,
                           "roc_auc_resamples_used": 0}
    n = len(truth)
    if n < 2 or n_resamples <= 0:
        return out
    present = np.unique(truth)
    rng = np.random.default_rng(seed)
    acc, auc = np.empty(n_resamples), []
    for r in range(n_resamples):
        idx = rng.integers(0, n, n)
        t, p = truth[idx], probs[idx]
        acc[r] = patient_accuracy(t, p)
        if len(present) >= 2 and len(np.unique(t)) == len(present):
            auc.append(patient_auc(t, p))
    q = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    out["accuracy_ci95"] = [float(v) for v in np.percentile(acc, q)]
    out["roc_auc_resamples_used"] = len(auc)
    if auc:
        out["roc_auc_ci95"] = [float(v) for v in np.percentile(auc, q)]
    return out


def patient_roc(truth: np.ndarray, probs: np.ndarray, classes: list[str]
                ) -> dict[str, dict[str, list[float]]]:
    """ROC curve points per curve: ``P(<second class>)`` for two classes, else one
    one-vs-rest curve per class present in ``truth`` (empty with fewer than two)."""
    truth = np.asarray(truth, int)
    present = np.unique(truth)
    if len(present) < 2:
        return {}
    pairs = [(f"P({classes[1]})", 1)] if len(classes) == 2 else [
        (f"{classes[c]} vs rest", int(c)) for c in present]
    curves = {}
    for name, c in pairs:
        fpr, tpr, _ = skm.roc_curve(truth == c, probs[:, c])
        curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return curves


# --------------------------------------------------------------------------- per dataset


def patient_dice(patients: np.ndarray | list[str], scores: MaskScores
                 ) -> tuple[list[str], np.ndarray] | None:
    """One Dice per patient over all its slices: 2 sum|T&P| / (sum|T| + sum|P|), pooling the
    pixels of every slice (predicted pixels on tumor-free slices count against it). Patients
    without a true tumor pixel are left out. None when the true pixel counts were not
    recorded."""
    tumor = np.asarray(scores.tumor, bool)
    true = np.where(tumor, scores.true_pixels, 0.0)
    if np.isnan(true).any():
        return None
    patients = np.asarray(patients)
    overlap, pred = scores.overlap(), np.asarray(scores.pred_pixels, float)
    ids, values = [], []
    for patient in sorted(set(patients.tolist())):
        here = patients == patient
        t, p, o = true[here].sum(), pred[here].sum(), overlap[here].sum()
        if t > 0:
            ids.append(patient)
            values.append(2 * o / (t + p))
    return ids, np.asarray(values, float)


def _slice_dice(pred: SplitPredictions, in_dataset: np.ndarray, threshold: float,
                mask_rule: str, n_resamples: int, seed: int,
                presence_threshold: float | None = None) -> dict[str, Any] | None:
    """Dice over the dataset's tumor slices, as the overall mask metrics score them (source
    image geometry, ``mask_rule`` applied with ``presence_threshold``, None: ``threshold``),
    with a CI resampling patients; beside it the per-patient Dice (:func:`patient_dice`) with
    a CI over patients."""
    w, t = pred.weights, pred.targets
    labelled = in_dataset & (w["mask"] > 0)
    patients = np.asarray(pred.patient_ids)
    per_patient = len(patients) == len(labelled)
    if pred.native is not None:
        gate = threshold if presence_threshold is None else presence_threshold
        scores, geometry = pred.native_under(mask_rule, gate), "source image"
        sel = labelled & scores.scored
        scores = scores.select(sel)
    else:
        sel = labelled
        if not sel.any():
            return None
        scores, geometry = mask_scores(t["mask"][sel], pred.outputs["mask"][sel],
                                       t["spacing"][sel], threshold), "network input"
    patients = patients[sel] if per_patient else patients
    summary = summarise_masks(scores, threshold)
    tumor = scores.tumor.astype(bool)
    if not tumor.any():
        return None
    dice = scores.dice[tumor]
    ci = (cluster_bootstrap_ci(np.mean, dice, groups=patients[tumor], n_resamples=n_resamples,
                               seed=seed) if per_patient else None)
    out = {"dice_mean": summary["dice_mean"], "dice_median": summary["dice_median"],
           "n_tumor_slices": int(tumor.sum()),
           "n_patients": int(len(set(patients[tumor].tolist()))) if len(patients) else None,
           "dice_ci95": list(ci) if ci else None, "geometry": geometry, "mask_rule": mask_rule}
    pooled = patient_dice(patients, scores) if per_patient else None
    if pooled is not None and len(pooled[1]):
        ids, values = pooled
        pci = cluster_bootstrap_ci(np.mean, values, groups=np.asarray(ids),
                                   n_resamples=n_resamples, seed=seed)
        out["patient_dice"] = {
            "rule": "one Dice per patient pooling the pixels of all its evaluated slices",
            "mean": float(values.mean()), "median": float(np.median(values)),
            "ci95": list(pci) if pci else None, "n_patients": len(ids),
            "per_patient": {i.split("/", 1)[-1]: float(v) for i, v in zip(ids, values)}}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def patient_sentence(name: str, entry: dict[str, Any]) -> str:
    """One plain sentence on what the dataset's patient-level numbers can and cannot show."""
    n = entry["n_patients"]
    counts = ", ".join(f"{v} {k}" for k, v in entry["n_patients_per_class"].items())
    auc, ci = entry["roc_auc"], entry["roc_auc_ci95"]
    acc_ci = entry["accuracy_ci95"]
    head = f"On {name}, the patient-level numbers rest on {n} patients ({counts})"
    if auc is None:
        return head + ": with a single class among them the ROC-AUC is undefined, and the " \
                      "accuracy only says how often that one class is predicted."
    if ci is None:
        return head + f": ROC-AUC {auc:.2f} without a confidence interval (too few patients " \
                      "or no resamples), so it cannot be told apart from chance."
    smallest = min(entry["n_patients_per_class"].values())
    acc = (f" and accuracy {_pct(entry['accuracy'])} ({_pct(acc_ci[0])} to {_pct(acc_ci[1])})"
           if acc_ci else "")
    verdict = (f"so these {n} patients cannot show that the ranking beats chance (0.5 lies "
               "inside the interval)" if ci[0] <= 0.5 else
               "so the ranking beats chance on these patients, but the interval is too wide to "
               "say by how much" if ci[1] - ci[0] > 0.2 else
               "so the ranking beats chance on these patients; patients from other sites and "
               "scanners may still differ")
    step = f"; one patient more or less right moves the accuracy by {100 / n:.0f} points"
    small = f", and the smallest class has only {smallest}" if smallest < 10 else ""
    return (head + f": ROC-AUC {auc:.2f} with a 95% CI of {ci[0]:.2f} to {ci[1]:.2f} "
            f"({ci[1] - ci[0]:.2f} wide){acc}, {verdict}{step}{small}.")


def patient_level(pred: SplitPredictions, classes: list[str], *, threshold: float = 0.5,
                  n_resamples: int = 2000, seed: int = 0, mask_rule: str = "presence",
                  presence_threshold: float | None = None) -> dict[str, Any] | None:
    """The ``patient_level`` section of metrics.json (module docstring), or None when no
    dataset of ``pred`` has patient-level labels to score. ``threshold``: of mask pixels;
    ``presence_threshold`` (None: ``threshold``): the one the mask rule gates with."""
    tumor_index = [i for i, c in enumerate(classes) if c != NO_TUMOR]
    if (len(tumor_index) < 2 or "type" not in pred.outputs
            or len(pred.patient_ids) != len(pred.case_ids) or not pred.case_ids):
        return None
    tumor_classes = [classes[i] for i in tumor_index]
    w, t, o = pred.weights, pred.targets, pred.outputs
    patients = np.asarray(pred.patient_ids)
    names = np.asarray(pred.source_names)
    position = {c: k for k, c in enumerate(tumor_index)}
    # per slice: index of its tumor label among the tumor classes, -1 where it has none
    slice_label = np.array([position.get(int(c), -1) if wt > 0 else -1
                            for c, wt in zip(t["type"].reshape(-1), w["type"])], int)
    presence = (o["presence"].reshape(-1) if "presence" in o
                else np.ones(len(pred.case_ids)))
    probs_all = tumor_probabilities(o["type"], tumor_index)
    datasets: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    not_applicable: dict[str, str] = {}
    for name in sorted(set(names.tolist())):
        here = names == name
        truth_of, conflicts = patient_labels(patients[here], slice_label[here])
        if conflicts:
            some = sorted(conflicts)[:3]
            skipped[name] = (f"{len(conflicts)} patient(s) with tumor slices of different "
                             "labels, e.g. " + "; ".join(
                                 f"{p.split('/', 1)[-1]}: "
                                 + ", ".join(tumor_classes[c] for c in conflicts[p])
                                 for p in some))
            continue
        if not truth_of:
            not_applicable[name] = "no tumor slice with a type/grade label"
            continue
        agg = aggregate_patients(patients[here], presence[here], probs_all[here])
        keep = np.array([p in truth_of for p in agg["patients"]])
        if agg["n_slices"][keep].max() < 2:
            not_applicable[name] = "one slice per patient: patient level equals slice level"
            continue
        ids = [p for p, k in zip(agg["patients"], keep) if k]
        truth = np.array([truth_of[p] for p in ids], int)
        probs = agg["probs"][keep]
        boot = patient_bootstrap(truth, probs, n_resamples=n_resamples, seed=seed)
        per_class = {c: int((truth == k).sum()) for k, c in enumerate(tumor_classes)}
        entry = {
            "classes": tumor_classes,
            "n_patients": len(ids),
            "n_patients_per_class": {c: v for c, v in per_class.items() if v},
            "n_slices": int(agg["n_slices"][keep].sum()),
            "patients_without_tumor_label": int((~keep).sum()),
            "accuracy": patient_accuracy(truth, probs),
            "accuracy_ci95": boot["accuracy_ci95"],
            "roc_auc": patient_auc(truth, probs),
            "roc_auc_of": (f"P({tumor_classes[1]})" if len(tumor_classes) == 2
                           else "one-vs-rest, macro over the classes present"),
            "roc_auc_ci95": boot["roc_auc_ci95"],
            "roc_auc_resamples_used": boot["roc_auc_resamples_used"],
            "n_resamples": boot["n_resamples"],
            "presence_weight_fallback": int(agg["fallback"][keep].sum()),
            "slice_dice": _slice_dice(pred, here, threshold, mask_rule, n_resamples, seed,
                                      presence_threshold),
            "roc": patient_roc(truth, probs, tumor_classes),
            "patients": [
                {"patient": p.split("/", 1)[-1], "truth": tumor_classes[int(tr)],
                 "predicted": tumor_classes[int(pr.argmax())],
                 "probabilities": {c: float(v) for c, v in zip(tumor_classes, pr)},
                 "n_slices": int(ns), "presence_weight_sum": float(ws)}
                for p, tr, pr, ns, ws in zip(ids, truth, probs, agg["n_slices"][keep],
                                             agg["weight_sum"][keep])],
        }
        entry["summary"] = patient_sentence(name, entry)
        datasets[name] = entry
    if not datasets and not skipped:
        return None
    return {"rule": RULE, "confidence": 0.95, "seed": seed, "datasets": datasets,
            "skipped": skipped, "not_applicable": not_applicable}


def plot_name(dataset: str) -> str:
    """File name of a dataset's patient-level ROC plot."""
    return f"patient_roc_{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset)}.png"
