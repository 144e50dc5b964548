"""Scores a :class:`SplitPredictions` and writes metrics.json, report.md and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtl.evaluate import plots
from mtl.evaluate.metrics import bootstrap_ci as item_bootstrap_ci
from mtl.evaluate.metrics import (
    calibration, cluster_bootstrap_ci, mask_metrics, roc_points, summarise_masks,
)
from mtl.data.sample import NO_TUMOR
from mtl.evaluate.patient import patient_level
from mtl.evaluate.per_item import write_predictions_csv
from mtl.evaluate.predict import SplitPredictions
from mtl.tasks import TASKS
from mtl.files import write_json, write_text

#: equal-width confidence bins of the expected calibration error
ECE_BINS = 15


def score(pred: SplitPredictions, classes: list[str], threshold: float = 0.5,
          mask_rule: str = "presence", presence_threshold: float | None = None
          ) -> dict[str, Any]:
    """All metrics for the items of ``pred`` that label each task; masks as ``mtl infer``
    exports them under ``mask_rule``. ``threshold``: of mask pixels; ``presence_threshold``
    (None: ``threshold``): of the presence decision, also the one ``mask_rule`` gates with."""
    presence_threshold = threshold if presence_threshold is None else presence_threshold
    out: dict[str, Any] = {"n_items": len(pred.case_ids)}
    w, t, o = pred.weights, pred.targets, pred.outputs
    for task in TASKS:
        sel = w[task.name] > 0
        if not sel.any():
            continue
        truth, output = t[task.name][sel], o[task.output][sel]
        scores = task.score(truth, output, classes=classes, spacing=t["spacing"][sel],
                            threshold=presence_threshold if task.name == "presence" else threshold)
        if task.confidence is not None:  # a probability head, calibrated by a temperature
            scores["calibration"] = calibration(*task.confidence(truth, output), n_bins=ECE_BINS)
            raw = o.get(f"{task.output}_uncalibrated", o[task.output])[sel]
            scores["ece"] = {
                "before_calibration": calibration(*task.confidence(truth, raw),
                                                  n_bins=ECE_BINS)["ece"],
                "after_calibration": scores["calibration"]["ece"],
                "n_bins": ECE_BINS, "temperature": pred.temperatures.get(task.name, 1.0)}
        if task.name != "mask":
            out[task.name] = scores
        elif pred.native is None:  # masks at network size only
            out["mask"] = {**scores, "geometry": "network input"}
        else:  # the masks as exported, and the network-size figures beside them
            out.update(source_geometry_masks(pred, classes, threshold, mask_rule,
                                             presence_threshold))
            out["mask_network_input"] = {k: v for k, v in scores.items()
                                         if not k.startswith("per_image")}
    return out


def source_geometry_masks(pred: SplitPredictions, classes: list[str], threshold: float,
                          mask_rule: str = "presence", presence_threshold: float | None = None
                          ) -> dict[str, Any]:
    """Mask metrics on the masks as exported (each image's own size, ``mask_rule`` applied
    with ``presence_threshold``, None: ``threshold``): overall, per tumor type, and the
    tumor-free images with any predicted tumor pixel; the same two headline figures under the
    other rule, for comparison."""
    w, t = pred.weights, pred.targets
    presence_threshold = threshold if presence_threshold is None else presence_threshold
    native = pred.native_under(mask_rule, presence_threshold)
    sel = (w["mask"] > 0) & native.scored
    out: dict[str, Any] = {"mask": {**summarise_masks(native.select(sel), threshold),
                                    "geometry": "source image", "mask_rule": mask_rule,
                                    "not_scored": int(((w["mask"] > 0) & ~native.scored).sum())}}
    by_type = {}
    for index, name in enumerate(classes):
        keep = sel & (w["type"] > 0) & (t["type"] == index) & native.tumor
        if name != NO_TUMOR and keep.any():
            summary = summarise_masks(native.select(keep), threshold)
            by_type[name] = {k: v for k, v in summary.items() if not k.startswith(("per_image", "empty"))}
    out["mask_by_type"] = by_type
    free = sel & (w["presence"] > 0) & (t["presence"].ravel() < 0.5)

    def flagged(scores) -> dict[str, Any]:
        count = int((scores.pred_pixels[free] > 0).sum())
        return {"n": int(free.sum()), "count": count,
                "rate": count / int(free.sum()) if free.any() else None}

    out["tumor_free_with_tumor_pixels"] = flagged(native)
    other_rule = "independent" if mask_rule == "presence" else "presence"
    other = pred.native_under(other_rule, presence_threshold)
    out["mask_other_rule"] = {
        "mask_rule": other_rule,
        "dice_mean": summarise_masks(other.select(sel), threshold)["dice_mean"],
        "tumor_free_with_tumor_pixels": flagged(other),
    }
    return out


def headline_intervals(pred: SplitPredictions, classes: list[str], threshold: float,
                       n_resamples: int, seed: int = 0, mask_rule: str = "presence",
                       presence_threshold: float | None = None) -> dict[str, Any]:
    """95% bootstrap CIs of the headline numbers, resampling patients (images when the
    predictions carry no patient ids); thresholds as :func:`score`."""
    presence_threshold = threshold if presence_threshold is None else presence_threshold
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
        decided = (o["presence"][sel].ravel() >= presence_threshold).astype(int)
        hit = (decided == truth).astype(float)
        ci["presence_accuracy"] = interval(np.mean, hit, sel=sel, n_resamples=n_resamples,
                                               seed=seed)
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
        if pred.native is not None:  # the masks as exported
            native = pred.native_under(mask_rule, presence_threshold)
            with_tumor = sel & native.tumor & native.scored
            dice = native.dice[with_tumor]
        else:
            m = mask_metrics(t["mask"][sel], o["mask"][sel], t["spacing"][sel], threshold)
            with_tumor = sel & (t["mask"].reshape(len(sel), -1).max(1) > 0.5)  # Dice's images
            dice = np.array(m["per_image_dice"])
        if len(dice) > 1:
            ci["dice_mean"] = interval(np.mean, dice, sel=with_tumor, n_resamples=n_resamples,
                                       seed=seed)
    return ci


def evaluate_predictions(pred: SplitPredictions, classes: list[str], out_dir: Path, *,
                         threshold: float = 0.5, n_resamples: int = 1000,
                         context: dict[str, Any] | None = None,
                         healthy: list[dict[str, Any]] | None = None,
                         mask_rule: str = "presence",
                         presence_threshold: float | None = None) -> dict[str, Any]:
    """Score ``pred``; write metrics.json, report.md and plots into ``out_dir``. ``threshold``:
    of mask pixels; ``presence_threshold`` (None: ``threshold``): of the presence decision.

    ``healthy``: results of :func:`mtl.evaluate.healthy` checks on tumor-free volumes, kept
    under ``"healthy_volumes"``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    presence_threshold = threshold if presence_threshold is None else presence_threshold
    result: dict[str, Any] = {**(context or {}), "threshold": threshold,
                              "presence_threshold": presence_threshold}
    result["overall"] = score(pred, classes, threshold, mask_rule, presence_threshold)
    result["overall"]["ci95"] = headline_intervals(pred, classes, threshold, n_resamples,
                                                   mask_rule=mask_rule,
                                                   presence_threshold=presence_threshold)
    result["overall"]["ci95_resampling"] = "patients" if pred.patient_ids else "images"
    names = sorted(set(pred.source_names))
    if len(names) > 1:
        result["by_dataset"] = {
            name: score(pred.select(np.array([s == name for s in pred.source_names])), classes,
                        threshold, mask_rule, presence_threshold)
            for name in names
        }
    patients = patient_level(pred, classes, threshold=threshold, n_resamples=n_resamples,
                             mask_rule=mask_rule, presence_threshold=presence_threshold)
    if patients is not None:
        result["patient_level"] = patients
    result["skipped"] = [list(x) for x in pred.skipped]
    if healthy:
        result["healthy_volumes"] = healthy
    sel = pred.weights["presence"] > 0
    roc = roc_points(pred.targets["presence"][sel], pred.outputs["presence"][sel]) if sel.any() else None
    written = plots.write_all(pred, result, roc, classes, out_dir / "plots", threshold,
                              presence_threshold, mask_rule)
    result["plots"] = [str(p.relative_to(out_dir)) for p in written]
    write_predictions_csv(pred, classes, out_dir / "predictions.csv", presence_threshold,
                          mask_rule)
    write_json(out_dir / "metrics.json", result, force=True, allow_nan=True, newline=False)
    write_text(out_dir / "report.md", render_markdown(result))
    return result


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _ci(ci: dict, key: str, pct: bool = False) -> str:
    v = ci.get(key)
    return "" if not v else f" ({_fmt(v[0], pct)} – {_fmt(v[1], pct)})"


def _ece(task: dict[str, Any]) -> str:
    e = task.get("ece")
    if not e:  # metrics written before calibration
        return _fmt(task["calibration"]["ece"])
    t = "T per member" if e["temperature"] is None else f"T = {e['temperature']:.3g}"
    return f"{_fmt(e['before_calibration'])} / {_fmt(e['after_calibration'])} ({t})"


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
            ("presence ECE (15 bins), before / after calibration", _ece(p)),
        ]
    if "type" in o:
        t = o["type"]
        rows += [
            ("type accuracy", _fmt(t["accuracy"], True) + _ci(ci, "type_accuracy", True)),
            ("type macro-F1", _fmt(t["macro_f1"]) + _ci(ci, "type_macro_f1")),
            ("type balanced accuracy", _fmt(t["balanced_accuracy"], True)),
            ("type ECE (15 bins), before / after calibration", _ece(t)),
        ]
    if "mask" in o and o["mask"]["n_tumor"]:
        m = o["mask"]
        rows += [
            ("Dice mean / median", f"{_fmt(m['dice_mean'])}{_ci(ci, 'dice_mean')} / {_fmt(m['dice_median'])}"),
            ("IoU mean / median", f"{_fmt(m['iou_mean'])} / {_fmt(m['iou_median'])}"),
            (f"HD95 median ({m['hd95_unit']})", _fmt(m["hd95_median"])),
        ]
    for name, m in o.get("mask_by_type", {}).items():
        rows.append((f"Dice mean, {name}", f"{_fmt(m['dice_mean'])} (n={m['n_tumor']})"))
    free = o.get("tumor_free_with_tumor_pixels")
    if free and free["n"]:
        rows.append(("tumor-free images with any predicted tumor pixel",
                     f"{_fmt(free['rate'], True)} ({free['count']}/{free['n']})"))
    elif "mask" in o and o["mask"]["n_empty"]:
        rows.append(("tumor-free images with false-positive pixels", _fmt(o["mask"]["empty_fp_rate"], True)))
    if "box" in o:
        rows.append(("predicted tumor inside the box (hit rate)", _fmt(o["box"]["hit_rate"], True)))
    for name, p in result.get("patient_level", {}).get("datasets", {}).items():
        ci = {"acc": p["accuracy_ci95"], "auc": p["roc_auc_ci95"]}
        rows += [
            (f"per-patient accuracy, {name} ({p['n_patients']} patients)",
             _fmt(p["accuracy"], True) + _ci(ci, "acc", True)),
            (f"per-patient ROC-AUC, {name}", _fmt(p["roc_auc"]) + _ci(ci, "auc")),
        ]
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    title = result.get("model", "model")
    if result.get("ensemble"):
        title = "an ensemble: " + " + ".join(result["ensemble"])
    lines = [f"# Evaluation of {title}", ""]
    for key in ("ensemble", "model_card", "split", "data", "threshold", "presence_threshold",
                "mask_rule", "largest_component", "tta", "evaluated_at"):
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
        geometry = m.get("geometry", "network input")
        lines += ["", "## Mask", "", f"{m['n_tumor']} images with a tumor, {m['n_empty']} without; "
                  f"scored in the {geometry} geometry"
                  + (" (each mask resized back to its image and, under the `presence` mask "
                     "rule, kept only where the presence decision is yes: as `mtl infer` "
                     "exports it)." if geometry == "source image" else "."),
                  f"HD95 in {m['hd95_unit']}; undefined (empty prediction) on {m['hd95_undefined']} tumor images."]
        if o.get("mask_by_type"):
            lines += ["", "| tumor type | images | Dice mean | Dice median | IoU mean | "
                      f"HD95 median ({m['hd95_unit']}) | empty prediction |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for name, v in o["mask_by_type"].items():
                lines.append(f"| {name} | {v['n_tumor']} | {_fmt(v['dice_mean'])} | "
                             f"{_fmt(v['dice_median'])} | {_fmt(v['iou_mean'])} | "
                             f"{_fmt(v['hd95_median'])} | {v['hd95_undefined']} |")
        if "mask_other_rule" in o:
            other = o["mask_other_rule"]
            lines += ["", f"Under the other mask rule (`{other['mask_rule']}`): Dice mean "
                      f"{_fmt(other['dice_mean'])}, tumor-free images with any predicted tumor "
                      f"pixel {_fmt(other['tumor_free_with_tumor_pixels']['rate'], True)}."]
        if "mask_network_input" in o:
            n = o["mask_network_input"]
            lines += ["", "The mask head's raw output at the network's input size, no mask rule: "
                      f"Dice mean {_fmt(n['dice_mean'])}, "
                      f"tumor-free images with false-positive pixels {_fmt(n['empty_fp_rate'], True)}."]
    if "by_dataset" in result:
        lines += ["", "## By dataset", "", "| dataset | items | presence acc | type acc | macro-F1 | Dice mean | "
                  "tumor-free with tumor pixels | box hit |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, s in result["by_dataset"].items():
            lines.append(
                f"| {name} | {s['n_items']} | {_fmt(s.get('presence', {}).get('accuracy'), True)} | "
                f"{_fmt(s.get('type', {}).get('accuracy'), True)} | {_fmt(s.get('type', {}).get('macro_f1'))} | "
                f"{_fmt(s.get('mask', {}).get('dice_mean'))} | "
                f"{_fmt(s.get('tumor_free_with_tumor_pixels', {}).get('rate'), True)} | "
                f"{_fmt(s.get('box', {}).get('hit_rate'), True)} |")
    if result.get("patient_level"):
        lines += patient_markdown(result["patient_level"])
    if result.get("healthy_volumes"):
        lines += ["", "## Healthy volumes", "",
                  "Every slice with brain content of a tumor-free volume, in three planes: the "
                  "share called tumor (presence >= threshold) and the share with any predicted "
                  "tumor pixel.", "",
                  "| volume | orientation | plane | slices | called tumor | with tumor pixels | "
                  "types called |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for h in result["healthy_volumes"]:
            for plane, v in [*h["planes"].items(), ("all", h["overall"])]:
                types = ", ".join(f"{k} {n}" for k, n in v["type_counts_called_tumor"].items() if n)
                lines.append(f"| {h['volume']} | {h['orientation']} | {plane} | "
                             f"{v['slices_checked']} | {_fmt(v['share_called_tumor'], True)} | "
                             f"{_fmt(v['share_mask_nonempty'], True)} | {types or '-'} |")
    lines += ["", "Every item's prediction and mask score, one row each: "
              "[predictions.csv](predictions.csv)."]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    if result.get("skipped"):
        lines += ["", f"## Skipped items ({len(result['skipped'])})", ""]
        lines += [f"- {src}: {why}" for src, why in result["skipped"][:50]]
    return "\n".join(lines) + "\n"


def patient_markdown(section: dict[str, Any]) -> list[str]:
    """The report's patient-level section (:mod:`mtl.evaluate.patient`)."""
    lines = ["", "## Patient level", "",
             f"Rule: {section['rule']}. 95% CIs: percentile bootstrap over patients "
             f"(seed {section['seed']}); AUC resamples lacking a class are skipped.", ""]
    datasets = section.get("datasets", {})
    if datasets:
        lines += ["| dataset | patients | accuracy (95% CI) | ROC-AUC (95% CI) | AUC resamples "
                  "used | slice Dice on tumor slices (95% CI) | Dice per patient, all its slices "
                  "pooled (95% CI) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, p in datasets.items():
            counts = ", ".join(f"{v} {k}" for k, v in p["n_patients_per_class"].items())
            d = p.get("slice_dice")
            dice = ("n/a" if not d else f"{_fmt(d['dice_mean'])}{_ci(d, 'dice_ci95')} "
                    f"({d['n_tumor_slices']} slices, {d['n_patients']} patients)")
            pd_ = (d or {}).get("patient_dice")
            pooled = ("n/a" if not pd_ else f"{_fmt(pd_['mean'])}{_ci(pd_, 'ci95')}, median "
                      f"{_fmt(pd_['median'])} ({pd_['n_patients']} patients)")
            lines.append(
                f"| {name} | {p['n_patients']} ({counts}) | {_fmt(p['accuracy'], True)}"
                f"{_ci(p, 'accuracy_ci95', True)} | {_fmt(p['roc_auc'])}{_ci(p, 'roc_auc_ci95')}"
                f" [{p['roc_auc_of']}] | {p['roc_auc_resamples_used']}/{p['n_resamples']} | "
                f"{dice} | {pooled} |")
        lines.append("")
        for name, p in datasets.items():
            lines.append(p["summary"])
            extra = []
            if p["patients_without_tumor_label"]:
                extra.append(f"{p['patients_without_tumor_label']} patient(s) without a labelled "
                             "tumor slice left out")
            if p["presence_weight_fallback"]:
                extra.append(f"{p['presence_weight_fallback']} patient(s) with every slice called "
                             "tumor-free: plain mean")
            if extra:
                lines.append(f"({name}: " + "; ".join(extra) + ".)")
            lines.append("")
        for name, p in datasets.items():
            lines += [f"<details><summary>{name}: {p['n_patients']} patients</summary>", "",
                      "| patient | slices | true | predicted | " + " | ".join(
                          f"P({c})" for c in p["classes"]) + " |",
                      "|" + " --- |" * (4 + len(p["classes"]))]
            for row in p["patients"]:
                lines.append(f"| {row['patient']} | {row['n_slices']} | {row['truth']} | "
                             f"{row['predicted']} | " + " | ".join(
                                 f"{row['probabilities'][c]:.3f}" for c in p["classes"]) + " |")
            lines += ["", "</details>", ""]
    for name, why in section.get("skipped", {}).items():
        lines.append(f"- {name}: not scored per patient: {why}.")
    return lines
