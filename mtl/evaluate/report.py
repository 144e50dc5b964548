"""Scores a :class:`SplitPredictions` and writes metrics.json, report.md and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtl.evaluate import plots
from mtl.evaluate.metrics import bootstrap_ci as item_bootstrap_ci
from mtl.evaluate.metrics import (
    box_metrics, calibration, cluster_bootstrap_ci, mask_metrics, presence_metrics, roc_points, type_metrics,
)
from mtl.evaluate.predict import SplitPredictions
from mtl.train import write_atomic


def _select(pred: SplitPredictions, keep: np.ndarray) -> SplitPredictions:
    return SplitPredictions(
        [c for c, k in zip(pred.case_ids, keep) if k],
        [s for s, k in zip(pred.source_names, keep) if k],
        pred.images[keep],
        {k: v[keep] for k, v in pred.targets.items()},
        {k: v[keep] for k, v in pred.weights.items()},
        {k: v[keep] for k, v in pred.outputs.items()},
        pred.skipped,
        [p for p, k in zip(pred.patient_ids, keep) if k],
    )


def score(pred: SplitPredictions, classes: list[str], threshold: float = 0.5) -> dict[str, Any]:
    """All metrics for the items of ``pred`` that label each task."""
    out: dict[str, Any] = {"n_items": len(pred.case_ids)}
    w, t, o = pred.weights, pred.targets, pred.outputs
    sel = w["presence"] > 0
    if sel.any():
        truth, prob = t["presence"][sel].ravel(), o["presence"][sel].ravel()
        out["presence"] = presence_metrics(truth, prob, threshold)
        out["presence"]["calibration"] = calibration(prob, truth)
    sel = w["type"] > 0
    if sel.any():
        truth, probs = t["type"][sel], o["type"][sel]
        out["type"] = type_metrics(truth, probs, classes)
        out["type"]["calibration"] = calibration(probs.max(1), probs.argmax(1) == truth)
    sel = w["mask"] > 0
    if sel.any():
        out["mask"] = mask_metrics(t["mask"][sel], o["mask"][sel], t["spacing"][sel], threshold)
    sel = w["box"] > 0
    if sel.any():
        out["box"] = box_metrics(t["box"][sel], o["mask"][sel], threshold)
    return out


def headline_intervals(pred: SplitPredictions, classes: list[str], threshold: float,
                       n_resamples: int, seed: int = 0) -> dict[str, Any]:
    """95% bootstrap CIs of the headline numbers, resampling patients (images when the
    predictions carry no patient ids)."""
    from sklearn import metrics as skm

    ci: dict[str, Any] = {}
    w, t, o = pred.weights, pred.targets, pred.outputs
    patients = np.asarray(pred.patient_ids)

    def interval(statistic, *arrays, sel, n_resamples, seed):
        if len(patients) == len(pred.case_ids) and len(patients):
            return cluster_bootstrap_ci(statistic, *arrays, groups=patients[sel],
                                        n_resamples=n_resamples, seed=seed)
        return item_bootstrap_ci(statistic, *arrays, n_resamples=n_resamples, seed=seed)

    sel = w["presence"] > 0
    if sel.sum() > 1:
        truth = t["presence"][sel].ravel().astype(int)
        hit = ((o["presence"][sel].ravel() >= threshold).astype(int) == truth).astype(float)
        ci["presence_accuracy"] = interval(np.mean, hit, sel=sel, n_resamples=n_resamples,
                                               seed=seed)
        decided = (o["presence"][sel].ravel() >= threshold).astype(int)
        ci["presence_f1"] = interval(
            lambda a, b: skm.f1_score(a, b, zero_division=0.0), truth, decided, sel=sel,
            n_resamples=n_resamples, seed=seed)
    sel = w["type"] > 0
    if sel.sum() > 1:
        truth, guess = t["type"][sel], o["type"][sel].argmax(1)
        ci["type_accuracy"] = interval(np.mean, (truth == guess).astype(float), sel=sel,
                                           n_resamples=n_resamples, seed=seed)
        ci["type_macro_f1"] = interval(
            lambda a, b: skm.f1_score(a, b, average="macro", labels=sorted(set(truth.tolist())),
                                      zero_division=0.0),
            truth, guess, sel=sel, n_resamples=n_resamples, seed=seed)
    sel = w["mask"] > 0
    if sel.any():
        m = mask_metrics(t["mask"][sel], o["mask"][sel], t["spacing"][sel], threshold)
        if len(m["per_image_dice"]) > 1:
            with_tumor = sel & (t["mask"].reshape(len(sel), -1).max(1) > 0.5)  # Dice's images
            ci["dice_mean"] = interval(np.mean, np.array(m["per_image_dice"]), sel=with_tumor,
                                           n_resamples=n_resamples, seed=seed)
    return ci


def evaluate_predictions(pred: SplitPredictions, classes: list[str], out_dir: Path, *,
                         threshold: float = 0.5, n_resamples: int = 1000,
                         context: dict[str, Any] | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**(context or {}), "threshold": threshold}
    result["overall"] = score(pred, classes, threshold)
    result["overall"]["ci95"] = headline_intervals(pred, classes, threshold, n_resamples)
    result["overall"]["ci95_resampling"] = "patients" if pred.patient_ids else "images"
    names = sorted(set(pred.source_names))
    if len(names) > 1:
        result["by_dataset"] = {
            name: score(_select(pred, np.array([s == name for s in pred.source_names])), classes, threshold)
            for name in names
        }
    result["skipped"] = [list(x) for x in pred.skipped]
    sel = pred.weights["presence"] > 0
    roc = roc_points(pred.targets["presence"][sel], pred.outputs["presence"][sel]) if sel.any() else None
    written = plots.write_all(pred, result, roc, classes, out_dir / "plots", threshold)
    result["plots"] = [str(p.relative_to(out_dir)) for p in written]
    write_atomic(out_dir / "metrics.json", json.dumps(result, indent=1, default=_json_default))
    write_atomic(out_dir / "report.md", render_markdown(result))
    return result


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x))


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _ci(ci: dict, key: str, pct: bool = False) -> str:
    v = ci.get(key)
    return "" if not v else f" ({_fmt(v[0], pct)} – {_fmt(v[1], pct)})"


def headline_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value with 95% CI) rows for the terminal and the report."""
    o, ci = result["overall"], result["overall"].get("ci95", {})
    rows: list[tuple[str, str]] = []
    if "presence" in o:
        p = o["presence"]
        rows += [
            ("presence accuracy", _fmt(p["accuracy"], True) + _ci(ci, "presence_accuracy", True)),
            ("presence sensitivity / specificity", f"{_fmt(p['recall'], True)} / {_fmt(p['specificity'], True)}"),
            ("presence F1", _fmt(p["f1"]) + _ci(ci, "presence_f1")),
            ("presence ROC-AUC", _fmt(p["roc_auc"])),
            ("presence ECE", _fmt(p["calibration"]["ece"])),
        ]
    if "type" in o:
        t = o["type"]
        rows += [
            ("type accuracy", _fmt(t["accuracy"], True) + _ci(ci, "type_accuracy", True)),
            ("type macro-F1", _fmt(t["macro_f1"]) + _ci(ci, "type_macro_f1")),
            ("type balanced accuracy", _fmt(t["balanced_accuracy"], True)),
            ("type ECE", _fmt(t["calibration"]["ece"])),
        ]
    if "mask" in o and o["mask"]["n_tumor"]:
        m = o["mask"]
        rows += [
            ("Dice mean / median", f"{_fmt(m['dice_mean'])}{_ci(ci, 'dice_mean')} / {_fmt(m['dice_median'])}"),
            ("IoU mean / median", f"{_fmt(m['iou_mean'])} / {_fmt(m['iou_median'])}"),
            (f"HD95 median ({m['hd95_unit']})", _fmt(m["hd95_median"])),
        ]
    if "mask" in o and o["mask"]["n_empty"]:
        rows.append(("tumor-free images with false-positive pixels", _fmt(o["mask"]["empty_fp_rate"], True)))
    if "box" in o:
        rows.append(("predicted tumor inside the box (hit rate)", _fmt(o["box"]["hit_rate"], True)))
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Evaluation of {result.get('model', 'model')}", ""]
    for key in ("split", "data", "threshold", "evaluated_at"):
        if key in result:
            lines.append(f"- {key}: {result[key]}")
    unit = result["overall"].get("ci95_resampling", "images")
    lines += ["", f"## Headline (95% bootstrap CI, resampling {unit})", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in headline_rows(result)]
    o = result["overall"]
    if "presence" in o:
        c = o["presence"]["confusion"]
        lines += ["", "## Presence", "", f"n = {o['presence']['n']} (tumor {o['presence']['n_positive']}, "
                  f"no tumor {o['presence']['n_negative']}), threshold {o['presence']['threshold']}", "",
                  "| | predicted no tumor | predicted tumor |", "| --- | --- | --- |",
                  f"| no tumor | {c['tn']} | {c['fp']} |", f"| tumor | {c['fn']} | {c['tp']} |"]
    if "type" in o:
        t = o["type"]
        lines += ["", "## Type / grade", "", "| class | precision | recall | F1 | support |",
                  "| --- | --- | --- | --- | --- |"]
        for name, v in t["per_class"].items():
            lines.append(f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
        lines += ["", "Confusion matrix (rows: truth, columns: prediction):", "",
                  "| | " + " | ".join(t["classes"]) + " |", "|" + " --- |" * (len(t["classes"]) + 1)]
        for name, row in zip(t["classes"], t["confusion"]):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    if "mask" in o:
        m = o["mask"]
        lines += ["", "## Mask", "", f"{m['n_tumor']} images with a tumor, {m['n_empty']} without.",
                  f"HD95 in {m['hd95_unit']}; undefined (empty prediction) on {m['hd95_undefined']} tumor images."]
    if "by_dataset" in result:
        lines += ["", "## By dataset", "", "| dataset | items | presence acc | type acc | macro-F1 | Dice mean | box hit |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, s in result["by_dataset"].items():
            lines.append(
                f"| {name} | {s['n_items']} | {_fmt(s.get('presence', {}).get('accuracy'), True)} | "
                f"{_fmt(s.get('type', {}).get('accuracy'), True)} | {_fmt(s.get('type', {}).get('macro_f1'))} | "
                f"{_fmt(s.get('mask', {}).get('dice_mean'))} | {_fmt(s.get('box', {}).get('hit_rate'), True)} |")
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    if result.get("skipped"):
        lines += ["", f"## Skipped items ({len(result['skipped'])})", ""]
        lines += [f"- {src}: {why}" for src, why in result["skipped"][:50]]
    return "\n".join(lines) + "\n"
