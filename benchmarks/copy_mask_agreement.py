"""How far do two datasets' expert masks of the same slice agree? The human level for Dice.

BRISC 2025 holds copies of figshare's (and Br35H's) slices with masks of its own. Each such pair
is one image outlined twice, by two teams: the Dice between the two masks is what a second
expert scores against the first, the level a model's Dice per tumor type can be read against.
The test split holds both copies of such a slice (near-copies always share a split), each scored
against its own mask. Run on the real data of a run's experiment file:

    python benchmarks/copy_mask_agreement.py --config experiments/reference.yaml \\
        --out benchmarks/results/copy_mask_agreement.json

It finds the run's near-copies (:func:`mtl.data.copies.link_copies`, as ``mtl train`` does),
compares the masks of every pair whose two items both have one
(:mod:`mtl.evaluate.copy_agreement`), deals the splits as ``mtl train`` would (same seed and
fractions) and reports the Dice between the two masks per tumor type and per pair of datasets,
for all pairs and for those in the test split, and how many training items
``data.train_copies: once`` would leave out. It writes the JSON (with the pairs that agree
least), the pairs as CSV (``--rows``) and a figure (``--plot``, default beside the JSON): per
tumor type, the histogram of the agreement between two datasets' masks and the pairs at its
10th percentile and median, both outlines drawn on the first copy.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import git_revision, script_command  # noqa: E402
from mtl.config import load_config  # noqa: E402
from mtl.data.copies import link_copies, split_jointly, train_once  # noqa: E402
from mtl.data.pipeline import open_sources  # noqa: E402
from mtl.evaluate.copy_agreement import (  # noqa: E402
    ORIENTATIONS,
    CopyMaskPair,
    agreement_summary,
    as_dicts,
    copy_mask_agreement,
)

TYPES = ("glioma", "meningioma", "pituitary")


def run_splits(sources, links, config) -> list[dict[str, list[int]]]:
    """The splits ``mtl train`` deals for this config (same seed, fractions, folds)."""
    return split_jointly(sources, links, config.data.split, seed=config.seed, cv=config.data.cv,
                         refit=config.data.refit)


def left_out_once(links, parts) -> dict[str, dict[str, int]]:
    """Training items per source, and how many ``data.train_copies: once`` leaves out."""
    once = [{name: list(v) for name, v in p.items()} for p in parts]
    dropped = train_once(links, once)
    return {name: {"train_items": len(p["train"]), "left_out": dropped[name]}
            for name, p in zip(links.names, parts)}


def split_of_pairs(sources, parts, rows: list[CopyMaskPair]) -> list[str]:
    """The split each pair falls in (both copies share one) when the run deals its splits."""
    split_of = {}
    for source, split in zip(sources, parts):
        for name, indices in split.items():
            for i in indices:
                split_of[(source.name, source.records[i].case_id)] = name
    return [split_of[(r.source_a, r.case_a)] for r in rows]


def examples(scored: list[CopyMaskPair], quantiles: tuple[float, ...] = (0.1, 0.5)
             ) -> list[CopyMaskPair]:
    """Per tumor type, the pair whose Dice lies nearest each of ``quantiles`` of its type's."""
    chosen = []
    for kind in TYPES:
        of_kind = sorted((r for r in scored if r.label == kind), key=lambda r: r.dice)
        for q in quantiles:
            if of_kind:
                chosen.append(of_kind[min(int(round(q * (len(of_kind) - 1))), len(of_kind) - 1)])
    return chosen


def draw(rows: list[CopyMaskPair], sources, path: Path) -> None:
    """Histogram of the Dice between two datasets' masks of one slice per tumor type; per type,
    the pairs at the 10th percentile and the median of that Dice, both outlines on the first
    image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.measure import find_contours
    from skimage.transform import resize

    scored = [r for r in rows if r.scored and r.source_a != r.source_b]  # two datasets' masks
    low = examples(scored)
    cols = max(len(low), len(TYPES))
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.6), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, kind in zip(axes[0], TYPES):
        dice = np.array([r.dice for r in scored if r.label == kind])
        if len(dice):
            ax.hist(dice, bins=bins, color="tab:blue")
            ax.axvline(np.median(dice), color="k", ls="--", lw=1)
            ax.axvline(0.8, color="tab:red", lw=1)
        ax.set_title(f"{kind}: {len(dice)} pairs, median {np.median(dice):.2f}"
                     if len(dice) else kind, fontsize=9)
        ax.set_xlabel("Dice, second dataset's mask vs first's", fontsize=8)
    for ax in axes[0][len(TYPES):]:
        ax.axis("off")
    by_name = {s.name: s for s in sources}
    for ax, r in zip(axes[1], low):
        a, b = by_name[r.source_a], by_name[r.source_b]
        sample_a = a.adapter.load(next(x for x in a.records if x.case_id == r.case_a))
        sample_b = b.adapter.load(next(x for x in b.records if x.case_id == r.case_b))
        image = np.asarray(sample_a["image"], float)
        image = image.mean(-1) if image.ndim == 3 else image
        mask_a = np.asarray(sample_a["mask"]).squeeze() > 0
        mask_b = ORIENTATIONS[r.orientation](resize(
            np.asarray(sample_b["mask"], float).squeeze(), mask_a.shape, order=0,
            preserve_range=True) > 0.5)
        ax.imshow(image, cmap="gray")
        for mask, colour in ((mask_a, "lime"), (mask_b, "red")):
            for c in find_contours(mask.astype(float), 0.5):
                ax.plot(c[:, 1], c[:, 0], color=colour, lw=1)
        ax.set_title(f"{r.label}, Dice {r.dice:.2f}\n{r.source_a} {r.case_a} (green)\n"
                     f"{r.source_b} {r.case_b} (red)", fontsize=7)
        ax.axis("off")
    for ax in axes[1][len(low):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/reference.yaml")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the results")
    parser.add_argument("--rows", type=Path, default=None, help="CSV with every pair")
    parser.add_argument("--plot", type=Path, default=None,
                        help="figure (default: beside --out, .png)")
    parser.add_argument("--listed", type=int, default=20, help="pairs listed in the JSON")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    config = load_config(args.config)
    sources = open_sources(config)
    links = link_copies(sources, progress=True)
    rows = copy_mask_agreement(sources, links)
    if not rows:
        print("no near-copy pair with two masks in this run's datasets")
        return 1
    parts = run_splits(sources, links, config)
    splits = split_of_pairs(sources, parts, rows)
    result = {
        "what": "Dice between the two masks of near-copies (two datasets' outlines of one slice)",
        "command": script_command("copy_mask_agreement.py", argv),
        "date": started.isoformat(timespec="seconds"),
        "git": git_revision(),
        "config": args.config,
        "all": agreement_summary(rows),
        "by_split": {name: agreement_summary([r for r, s in zip(rows, splits) if s == name])
                     for name in ("train", "val", "test")},
        "train_copies_once": left_out_once(links, parts),
        "agree_least": [d | {"split": s} for d, s, _ in sorted(
            zip(as_dicts(rows), splits, rows),
            key=lambda t: t[2].dice if t[2].scored else 2.0)[:args.listed]],
    }
    text = json.dumps(result, indent=1)
    print(json.dumps({k: result[k] for k in ("all", "by_split", "train_copies_once")}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.rows:
        with args.rows.open("w", newline="") as f:
            table = [d | {"split": s} for d, s in zip(as_dicts(rows), splits)]
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    plot = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if plot:
        draw(rows, sources, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
