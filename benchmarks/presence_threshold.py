"""Which presence threshold should gate the masks? Chosen on the validation split, from one
evaluation, without running the network again.

The presence mask rule empties the mask of every slice whose presence probability is not above
the threshold, so the masks at any threshold follow from the mask head's own masks and the
presence probabilities. Evaluate once with ``--mask-rule independent`` (the mask head alone),
then sweep:

    mtl evaluate runs/<name> --split val --bootstrap 0 --mask-rule independent \\
        --out runs/<name>/eval-val-independent
    python benchmarks/presence_threshold.py runs/<name>/eval-val-independent \\
        --max-tumor-free-rate 0.03 --out benchmarks/results/presence_threshold-<name>-val.json

For each threshold it reports the mean Dice over tumor slices (as ``mtl evaluate`` scores it:
source geometry, presence rule), the per-patient Dice (each patient's slices pooled), the tumor
slices left without a mask, and the share of tumor-free slices with any tumor pixel. It picks
the threshold with the best mean Dice whose tumor-free rate stays within
``--max-tumor-free-rate``, writes the table as JSON and draws it (``--plot``, default beside
the JSON). Check the pick once on the test split with
``mtl evaluate runs/<name> --presence-threshold <pick>``.

Several evaluation folders are pooled: the validation splits of the folds of one
cross-validation (``data.cv_folds``, README -> Cross-validation), evaluated fold by fold, give
out-of-fold predictions for every train and val patient, so the pick rests on all of them
instead of one validation split. A patient found in two of the folders is refused (they would
not be out of fold), and so are folders evaluated with other options (mask threshold, region,
TTA, ensemble, split) or of the test split.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from mtl.evaluate.metrics import MaskScores
from mtl.evaluate.patient import patient_dice


def read_predictions(folder: Path) -> dict[str, np.ndarray]:
    """The columns of ``folder/predictions.csv`` the sweep needs; refuses an evaluation made
    under the presence rule (its withheld masks cannot be brought back)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    if metrics.get("mask_rule") != "independent":
        raise SystemExit(f"{folder}: evaluated with --mask-rule {metrics.get('mask_rule')}; "
                         "sweep an evaluation made with --mask-rule independent")
    with (folder / "predictions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["mask_scored"] == "1"]
    if not rows:
        raise SystemExit(f"{folder}: no item with a mask label")

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])

    true_px, n = column("tumor_px_true"), len(rows)
    # the mask head's own scores, as mtl evaluate held them before applying the presence rule
    scores = MaskScores(tumor=true_px > 0, dice=column("dice"), iou=column("iou"),
                        hd95=column("hd95"), pred_pixels=column("tumor_px_pred"),
                        pixel_area=np.full(n, np.nan), hd95_unit=rows[0]["hd95_unit"],
                        scored=np.ones(n, bool), true_pixels=true_px)
    known = all(r["patient"] for r in rows)
    return {"presence": column("presence_prob"), "scores": scores,
            "free": column("presence_true") == 0,  # NaN (no presence label) is neither
            "patient": np.array([f"{r['dataset']}/{r['patient']}" for r in rows]) if known else None,
            "threshold": float(metrics["threshold"]),
            "largest_component": bool(metrics.get("largest_component")),
            # what else must agree before evaluations are pooled
            "options": {"split": metrics.get("split"), "tta": bool(metrics.get("tta")),
                        "ensemble": metrics.get("ensemble") is not None}}


def pool_predictions(parts: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Several :func:`read_predictions` as one (out-of-fold predictions of cross-validation);
    refuses a patient in two parts, parts without patient ids, parts evaluated with different
    options (mask threshold, ``--largest-component``, ``--tta``, ``--ensemble``, split), and
    the test split."""
    if len(parts) == 1:
        return parts[0]
    options = [{"threshold": p["threshold"], "largest_component": p["largest_component"],
                **p.get("options", {})} for p in parts]
    for key in options[0]:
        values = {str(o.get(key)) for o in options}
        if len(values) > 1:
            raise SystemExit(f"the evaluations differ in {key} ({', '.join(sorted(values))}); "
                             "pool evaluations made with the same options")
    if options[0].get("split") not in (None, "val"):
        raise SystemExit(f"the evaluations are of the {options[0]['split']!r} split; pool the "
                         "folds' validation evaluations (--split val), never the test split")
    seen: dict[str, str] = {}
    for part, name in zip(parts, names):
        if part["patient"] is None:
            raise SystemExit(f"{name}: items without patient ids cannot be pooled out of fold")
        for patient in np.unique(part["patient"]):
            if patient in seen:
                raise SystemExit(f"patient {patient} is in {seen[patient]} and {name}: pool the "
                                 "validation splits of one cross-validation's folds, which "
                                 "never share a patient")
            seen[str(patient)] = name
    units = {p["scores"].hd95_unit for p in parts}
    fields = ("tumor", "dice", "iou", "hd95", "pred_pixels", "pixel_area", "scored", "true_pixels")
    scores = MaskScores(**{f: np.concatenate([getattr(p["scores"], f) for p in parts])
                           for f in fields},
                        hd95_unit=units.pop() if len(units) == 1 else "mixed")
    return {"presence": np.concatenate([p["presence"] for p in parts]), "scores": scores,
            "free": np.concatenate([p["free"] for p in parts]),
            "patient": np.concatenate([p["patient"] for p in parts]),
            "threshold": parts[0]["threshold"], "largest_component": parts[0]["largest_component"],
            "options": parts[0].get("options", {})}


def at_threshold(p: dict[str, np.ndarray], t: float) -> dict[str, float | None]:
    """The figures of the masks the presence rule exports at threshold ``t``, as ``mtl
    evaluate`` computes them: Dice over the images with true tumor pixels, tumor-free images by
    their presence label, and per-patient Dice pooling every slice of a patient with a true
    tumor pixel (:func:`mtl.evaluate.patient.patient_dice`; None without patient ids), averaged
    over the patients of every dataset evaluated."""
    # as mtl infer's presence rule, on the float32 probabilities the model gave (the CSV
    # holds them exactly) against a float32 threshold, as NumPy compares them in evaluate
    kept = p["presence"].astype(np.float32) > np.float32(t)  # NaN: not run, never kept
    scores = p["scores"].withhold(kept)  # as SplitPredictions.native_under("presence", t)
    tumor = scores.tumor
    dice = scores.dice[tumor]
    pred_px = scores.pred_pixels
    pooled = patient_dice(p["patient"], scores) if p["patient"] is not None else None
    per_patient = float(np.mean(pooled[1])) if pooled is not None and len(pooled[1]) else None
    free = p["free"]
    return {"threshold": round(float(t), 4), "dice_mean": float(dice.mean()) if tumor.any() else None,
            "dice_per_patient": per_patient,
            "tumor_slices_without_mask": int(((pred_px == 0) & tumor).sum()),
            "tumor_free_with_tumor_pixels": float(((pred_px > 0) & free).sum() / free.sum())
            if free.any() else None,
            "n_tumor": int(tumor.sum()), "n_tumor_free": int(free.sum())}


def sweep(p: dict[str, np.ndarray], thresholds: list[float], max_free_rate: float) -> dict:
    """The table at every threshold and the pick: the best mean Dice within the tumor-free
    bound (ties: the higher threshold)."""
    table = [at_threshold(p, t) for t in thresholds]
    allowed = [r for r in table if r["dice_mean"] is not None
               and (r["tumor_free_with_tumor_pixels"] or 0.0) <= max_free_rate]
    pick = max(allowed, key=lambda r: (round(r["dice_mean"], 6), r["threshold"])) if allowed else None
    return {"table": table, "max_tumor_free_rate": max_free_rate,
            "pick": pick["threshold"] if pick else None}


def plot(result: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in result["table"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.3))
    ax.plot(t, [r["dice_mean"] for r in result["table"]], "o-", label="tumor-slice Dice")
    if all(r["dice_per_patient"] is not None for r in result["table"]):
        ax.plot(t, [r["dice_per_patient"] for r in result["table"]], "s-", label="per-patient Dice")
    ax.set_xlabel("presence threshold")
    ax.set_ylabel("Dice")
    ax2 = ax.twinx()
    ax2.plot(t, [100 * (r["tumor_free_with_tumor_pixels"] or 0.0) for r in result["table"]], "^--",
             color="C3", label="tumor-free slices with tumor pixels (%)")
    ax2.axhline(100 * result["max_tumor_free_rate"], color="C3", lw=0.8, ls=":")
    ax2.annotate(f"limit {result['max_tumor_free_rate']:.0%}", (1.0, 100 * result["max_tumor_free_rate"]),
                 xycoords=("axes fraction", "data"), xytext=(-4, -10), textcoords="offset points",
                 ha="right", fontsize=7, color="C3")
    ax2.set_ylabel("tumor-free slices with tumor pixels (%)", color="C3")
    if result["pick"] is not None:
        ax.axvline(result["pick"], color="grey", lw=0.8)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)  # below: clear of the curves
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("evaluation", type=Path, nargs="+",
                        help="folder of an `mtl evaluate --mask-rule independent` run; several: "
                             "the validation evaluations of a cross-validation's folds, pooled")
    parser.add_argument("--thresholds", default="0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.6,0.7")
    parser.add_argument("--max-tumor-free-rate", type=float, default=0.03)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    names = [str(e) for e in args.evaluation]
    p = pool_predictions([read_predictions(e) for e in args.evaluation], names)
    result = {"evaluation": names[0] if len(names) == 1 else names,
              "patients": int(len(np.unique(p["patient"]))) if p["patient"] is not None else None,
              "mask_threshold": p["threshold"],
              "largest_component": p["largest_component"],
              **sweep(p, [float(x) for x in args.thresholds.split(",")],
                      args.max_tumor_free_rate)}
    print(f"{'threshold':>9}  {'Dice':>6}  {'per patient':>11}  {'no mask':>7}  tumor-free w/ pixels")
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for r in result["table"]:
        mark = "  <- pick" if r["threshold"] == result["pick"] else ""
        free = None if r["tumor_free_with_tumor_pixels"] is None else 100 * r["tumor_free_with_tumor_pixels"]
        print(f"{r['threshold']:>9g}  {fmt(r['dice_mean'], '6.3f'):>6}  "
              f"{fmt(r['dice_per_patient'], '11.3f'):>11}  {r['tumor_slices_without_mask']:>7}  "
              f"{fmt(free, '.1f')}%{mark}")
    print(f"pick (best Dice with tumor-free rate <= {args.max_tumor_free_rate:.1%}): {result['pick']}")
    if p["largest_component"]:
        print("note: evaluated with --largest-component; for the slices of a volume the one 3-D "
              "region was chosen before the gate here, while mtl infer and mtl evaluate choose "
              "it after: check the pick with mtl evaluate")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    figure = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if figure:
        shown = names[0] if len(names) == 1 else f"{len(names)} folds pooled ({result['patients']} patients)"
        print(f"wrote {plot(result, figure, f'presence threshold sweep: {shown}')}")


if __name__ == "__main__":
    main()
