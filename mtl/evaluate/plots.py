"""Evaluation plots: ROC, confusion matrix, reliability diagrams, Dice histogram, worst cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtl.evaluate.metrics import dice_iou
from mtl.evaluate.patient import plot_name
from mtl.evaluate.predict import SplitPredictions
from mtl.figures import plt, save_figure
from mtl.infer.predict import apply_mask_rule


def roc_plot(roc: dict[str, list[float]], auc: float | None, threshold: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(roc["fpr"], roc["tpr"], lw=2, label=f"ROC (AUC {auc:.3f})" if auc is not None else "ROC")
    thr = np.array(roc["thresholds"])
    k = int(np.argmin(np.abs(thr - threshold)))
    ax.plot(roc["fpr"][k], roc["tpr"][k], "o", color="C3", label=f"threshold {threshold:g}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="tumor presence", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def patient_roc_plot(dataset: str, entry: dict[str, Any], path: Path) -> Path:
    """Patient-level ROC curve(s) of one dataset (:mod:`mtl.evaluate.patient`)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for i, (name, curve) in enumerate(entry["roc"].items()):
        ax.plot(curve["fpr"], curve["tpr"], lw=2, color=f"C{i}", drawstyle="steps-post",
                label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    auc, ci = entry["roc_auc"], entry["roc_auc_ci95"]
    what = f"AUC {auc:.3f}" + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
    counts = ", ".join(f"{v} {k}" for k, v in entry["n_patients_per_class"].items())
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{dataset}, per patient: {what}\n{entry['n_patients']} patients ({counts})")
    ax.title.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def confusion_plot(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    m = np.asarray(matrix, float)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(m[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center",
                    fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="type / grade (row-normalised)")
    return save_figure(fig, path)


def reliability_plot(calibrations: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(calibrations), figsize=(4.2 * len(calibrations), 4), squeeze=False)
    for ax, (name, cal) in zip(axes[0], calibrations.items()):
        bins = cal["bins"]
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        ax.bar(centres, [b["accuracy"] for b in bins], width=1 / cal["n_bins"], edgecolor="k",
               alpha=0.7, label="observed")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability" if name == "presence" else "confidence",
               ylabel="observed frequency" if name == "presence" else "accuracy",
               title=f"{name}: ECE {cal['ece']:.3f}")
        ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def dice_histogram(dice: list[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.hist(dice, bins=np.linspace(0, 1, 21), edgecolor="k")
    ax.axvline(np.mean(dice), color="C3", label=f"mean {np.mean(dice):.3f}")
    ax.axvline(np.median(dice), color="C2", ls="--", label=f"median {np.median(dice):.3f}")
    ax.set(xlabel="Dice per image (images with a tumor)", ylabel="images")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def worst_case_scores(pred: SplitPredictions, threshold: float, mask_rule: str = "presence",
                      presence_threshold: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pixels of the exported mask, mask pixels withheld, Dice, badness) per item, at the
    network's input size: the mask head above ``threshold`` under ``mask_rule`` with the
    presence gate ``presence_threshold`` (None: ``threshold``), as ``mtl infer`` exports it
    before any largest-region step. Dice is NaN where the item has no true tumor (or no mask
    label). Badness adds up what went wrong: 1 - Dice (on tumor-free items: 1 if any pixel is
    exported), the presence error, 1 - the true type's probability, and predicted pixels
    outside a true box."""
    t, o, w = pred.targets, pred.outputs, pred.weights
    gate = threshold if presence_threshold is None else presence_threshold
    n = len(pred.case_ids)
    pixels, withheld = np.zeros(n, np.int64), np.zeros(n, np.int64)
    badness, dice = np.zeros(n), np.full(n, np.nan)
    for i in range(n):  # one item at a time: no second copy of every mask
        gated, held = apply_mask_rule(o["mask"][i:i + 1, ..., 0] > threshold,
                                      o["presence"][i:i + 1, 0], mask_rule, gate)
        shown, withheld[i] = gated[0], held[0]
        pixels[i] = int(shown.sum())
        if w["mask"][i] > 0:
            truth = t["mask"][i, ..., 0] > 0.5
            score = dice_iou(truth, shown)[0]
            badness[i] += 1.0 - score
            if truth.any():
                dice[i] = score
        if w["presence"][i] > 0:
            badness[i] += abs(float(t["presence"][i, 0]) - float(o["presence"][i, 0]))
        if w["type"][i] > 0:
            badness[i] += 1.0 - float(o["type"][i, int(t["type"][i])])
        if w["box"][i] > 0:
            badness[i] += float((shown & (t["box"][i, ..., 0] < 0.5)).mean() * 10)
    return pixels, withheld, dice, badness


def worst_cases(pred: SplitPredictions, classes: list[str], threshold: float, path: Path,
                n: int = 12, mask_rule: str = "presence",
                presence_threshold: float | None = None) -> Path | None:
    """The n items with the worst score (:func:`worst_case_scores`): low Dice, false
    positives, wrong type or presence. The red mask is the one ``mtl infer`` exports; where the
    presence gate withholds a slice's mask, the mask head's output is drawn dashed."""
    t, o, w = pred.targets, pred.outputs, pred.weights
    pixels, withheld, dice, badness = worst_case_scores(pred, threshold, mask_rule,
                                                        presence_threshold)
    order = np.argsort(-badness)[:n]
    if not len(order):
        return None
    cols = 4
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(pred.images[i, ..., 0], cmap="gray", vmin=0, vmax=1)
        if w["mask"][i] > 0 and t["mask"][i].max() > 0:
            ax.contour(t["mask"][i, ..., 0], [0.5], colors="lime", linewidths=1)
        if w["box"][i] > 0:
            ax.contour(t["box"][i, ..., 0], [0.5], colors="yellow", linewidths=1, linestyles="--")
        if pixels[i] or withheld[i]:
            ax.contour(o["mask"][i, ..., 0], [threshold], colors="red", linewidths=1,
                       linestyles="solid" if pixels[i] else "dashed")
        truth_label = classes[int(t["type"][i])] if w["type"][i] > 0 else "?"
        guess = classes[int(np.argmax(o["type"][i]))]
        truth_p = str(int(t["presence"][i, 0])) if w["presence"][i] > 0 else "?"
        scored = "" if np.isnan(dice[i]) else f", Dice {dice[i]:.2f}"
        ax.set_title(f"{pred.case_ids[i]}\ntrue {truth_label} / p={truth_p}\n"
                     f"pred {guess} / p={float(o['presence'][i, 0]):.2f}{scored}", fontsize=7)
    fig.suptitle("worst cases: green true mask, yellow box, red predicted mask as exported "
                 "(dashed: withheld by the presence gate)", fontsize=9)
    return save_figure(fig, path, dpi=90)


def write_all(pred: SplitPredictions, result: dict[str, Any], roc: dict | None, classes: list[str],
              out_dir: Path, threshold: float, presence_threshold: float | None = None,
              mask_rule: str = "presence") -> list[Path]:
    """Every plot of an evaluation; ``threshold``: of mask pixels, ``presence_threshold`` (None:
    ``threshold``): the presence operating point marked on the ROC, and the gate of
    ``mask_rule`` in the worst cases."""
    o = result["overall"]
    written: list[Path] = []
    if roc is not None:
        written.append(roc_plot(roc, o["presence"]["roc_auc"],
                                threshold if presence_threshold is None else presence_threshold,
                                out_dir / "roc.png"))
    if "type" in o:
        written.append(confusion_plot(o["type"]["confusion"], classes, out_dir / "confusion.png"))
    cals = {k: o[k]["calibration"] for k in ("presence", "type") if k in o}
    if cals:
        written.append(reliability_plot(cals, out_dir / "reliability.png"))
    if "mask" in o and o["mask"]["per_image_dice"]:
        written.append(dice_histogram(o["mask"]["per_image_dice"], out_dir / "dice_hist.png"))
    for dataset, entry in result.get("patient_level", {}).get("datasets", {}).items():
        if entry["roc"]:
            written.append(patient_roc_plot(dataset, entry, out_dir / plot_name(dataset)))
    gallery = worst_cases(pred, classes, threshold, out_dir / "worst_cases.png",
                          mask_rule=mask_rule, presence_threshold=presence_threshold)
    if gallery:
        written.append(gallery)
    return written
