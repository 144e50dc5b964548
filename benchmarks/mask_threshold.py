"""Does a lower mask threshold, or a fallback where presence says tumor but the mask is empty,
buy Dice per tumor type? Measured on a run's own split (the validation split by default, so
nothing is chosen on the test split).

    python benchmarks/mask_threshold.py runs/reference3 --split val \\
        --out benchmarks/results/mask_threshold-reference3-val.json

For each rule it prints the mean Dice over the tumor slices of every dataset and tumor type, how
many tumor slices get no mask at all, and the share of tumor-free slices with any predicted
pixel. Rules (every one under the presence mask rule, as ``mtl infer`` exports masks):

- ``t=X``: mask pixels where the mask probability exceeds X;
- ``fallback=X``: the 0.5 mask, except on slices where presence says tumor and that mask is
  empty: there, pixels above X.

It also reports, per tumor type, the mean pixel precision and recall of the 0.5 masks, and the
highest mask probability on the tumor slices left without a mask: when that is far below every
threshold tried, no threshold rule can recover them. Dice here is at the network's input size
(one pass, no reloading of source images); on the reference model the mean Dice at input size
and at source size agree within 0.001 (README, Reference model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Hard Dice per row of flattened masks (1 where both are empty)."""
    from mtl.evaluate.metrics import dice_iou

    return np.array([dice_iou(t, p)[0] if (t.any() or p.any()) else 1.0
                     for t, p in zip(truth, pred)])


def rules(prob: np.ndarray, presence: np.ndarray, thresholds: list[float],
          fallbacks: list[float]) -> dict[str, np.ndarray]:
    """{rule name: (N, P) bool masks} under the presence rule."""
    yes = presence[:, None] > 0.5
    out = {f"t={t:g}": (prob > t) & yes for t in thresholds}
    base = prob > 0.5
    empty = ~base.any(1) & yes[:, 0]
    for low in fallbacks:
        mask = base.copy()
        mask[empty] = prob[empty] > low
        out[f"fallback={low:g}"] = mask & yes
    return out


def study(prob: np.ndarray, truth: np.ndarray, presence: np.ndarray, groups: dict[str, np.ndarray],
          free: np.ndarray, thresholds: list[float], fallbacks: list[float]) -> dict:
    """The table of :func:`main` from flattened (N, P) probabilities and true masks."""
    tumor = truth.any(1)
    table = {}
    for name, mask in rules(prob, presence, thresholds, fallbacks).items():
        d = dice(mask, truth)
        table[name] = {
            "dice_mean": {g: float(d[sel].mean()) for g, sel in groups.items() if sel.any()},
            "tumor_slices_without_mask": int((~mask[tumor].any(1)).sum()),
            "tumor_free_with_pixels": float(mask[free].any(1).mean()) if free.any() else None,
        }
    base = (prob > 0.5) & (presence[:, None] > 0.5)
    inter = (base & truth).sum(1)
    pr = {g: {"precision": float((inter[sel] / np.maximum(base[sel].sum(1), 1)).mean()),
              "recall": float((inter[sel] / np.maximum(truth[sel].sum(1), 1)).mean())}
          for g, sel in groups.items() if sel.any()}
    lost = tumor & ~base.any(1)
    top = prob.max(1)[lost]
    return {"rules": table, "precision_recall_at_0.5": pr,
            "tumor_slices_without_mask_at_0.5": int(lost.sum()),
            "max_probability_on_them": ({q: float(np.quantile(top, float(q)))
                                         for q in ("0.1", "0.5", "0.9")} if lost.any() else None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder (its config, splits.json and best.keras)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--thresholds", default="0.5,0.4,0.3,0.2,0.1")
    parser.add_argument("--fallbacks", default="0.3,0.2,0.1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import keras

    from mtl.evaluate.evaluation import config_for, open_eval_sources, resolve_model
    from mtl.evaluate.predict import predict_split

    model_path, run_dir = resolve_model(args.run)
    model = keras.models.load_model(model_path)
    config = config_for(model, run_dir)
    sources, _ = open_eval_sources(config, run_dir, args.split)
    pred = predict_split(model, sources, config, args.split)
    n = len(pred.case_ids)
    prob = pred.outputs["mask"].reshape(n, -1)
    truth = pred.targets["mask"].reshape(n, -1) > 0.5
    scored = pred.weights["mask"].reshape(-1) > 0
    presence = pred.outputs["presence"].reshape(-1)
    tumor = scored & truth.any(1)
    names = np.asarray(pred.source_names)
    labelled = pred.weights["type"].reshape(-1) > 0
    label = np.where(labelled, pred.targets["type"].reshape(-1), -1)  # class indices
    classes = config.data.classes
    groups = {"all tumor slices": tumor}
    groups.update({f"dataset {s}": tumor & (names == s) for s in sorted(set(names.tolist()))})
    groups.update({c: tumor & labelled & (label == k) for k, c in enumerate(classes)
                   if c != "no_tumor"})
    groups = {g: sel for g, sel in groups.items() if sel.any()}
    free = scored & ~truth.any(1)
    thresholds = [float(x) for x in args.thresholds.split(",")]
    fallbacks = [float(x) for x in args.fallbacks.split(",")]
    result = study(prob, truth, presence, groups, free, thresholds, fallbacks)
    result = {"run": str(args.run), "split": args.split, "geometry": "network input",
              "tumor_slices": {g: int(sel.sum()) for g, sel in groups.items()},
              "tumor_free_slices": int(free.sum()), **result}
    width = max(len(g) for g in groups)
    print(f"{'rule':14s}" + "".join(f"{g[:width]:>{width + 2}s}" for g in groups)
          + "  no mask  free w/ px")
    for name, row in result["rules"].items():
        print(f"{name:14s}" + "".join(f"{row['dice_mean'][g]:>{width + 2}.3f}" for g in groups)
              + f"  {row['tumor_slices_without_mask']:7d}  {row['tumor_free_with_pixels'] or 0:.3f}")
    print("precision / recall at 0.5:", {g: f"{v['precision']:.3f}/{v['recall']:.3f}"
                                          for g, v in result["precision_recall_at_0.5"].items()})
    print("highest mask probability on tumor slices without a mask:",
          result["max_probability_on_them"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
