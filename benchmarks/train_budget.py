"""What a training budget buys: train-step speed of model variants, and the epochs that fit.

Times ``model.fit`` on batches held in memory (the model's own speed; with ``data.cache`` the
real pipeline runs within a few percent of it, see README -> Performance) for every combination
of ``--sizes``, ``--precisions`` and ``--backbones`` of a config's model, interleaved over
``--repeats`` rounds, and reports the median images/s, the seconds per epoch for the config's
training items (``--train-items``, or counted from the config's data) and how many epochs fit in
``--budget-min`` minutes. This is how ``experiments/reference.yaml`` was sized.

    python benchmarks/train_budget.py --config experiments/reference.yaml \\
        --sizes 128,160,192 --precisions float32,mixed_bfloat16 --budget-min 150

bfloat16 pays only on CPUs with bfloat16 instructions (``avx512_bf16`` / ``amx_bf16`` in
``lscpu``); elsewhere it is emulated and several times slower. The JSON records the CPU flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import log, machine_facts, stats  # noqa: E402
from benchmarks.train_speed import fit_steps  # noqa: E402


def _variant_config(config, size: int, precision: str, backbone: str):
    data = dataclasses.replace(config.data, image_size=size)
    model = dataclasses.replace(config.model, backbone=backbone)
    train = dataclasses.replace(config.train, precision=precision)
    return dataclasses.replace(config, data=data, model=model, train=train)


def _memory_batches(config, n_batches: int, seed: int = 0):
    """Random images with blob masks, shaped like the pipeline's output, as a repeated dataset."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    b, s, c = config.train.batch_size, config.data.image_size, config.data.input_channels
    n = b * n_batches
    yy, xx = np.mgrid[:s, :s]
    centres = rng.uniform(0.3, 0.7, (n, 2)) * s
    mask = (((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2)
            < (s / 8) ** 2).astype(np.float32)[..., None]
    targets = {
        "presence": rng.integers(0, 2, (n, 1)).astype(np.float32),
        "type": rng.integers(0, len(config.data.classes), n).astype(np.int32),
        "mask": mask,
        "box": np.zeros_like(mask),
        "spacing": np.full((n, 2), np.nan, np.float32),
    }
    weights = {k: np.ones(n, np.float32) for k in ("presence", "type", "mask")}
    weights["box"] = np.zeros(n, np.float32)
    images = rng.random((n, s, s, c), dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, targets, weights))
    return ds.batch(b, drop_remainder=True).cache().repeat()


def count_train_items(config) -> int:
    """Training items of the config's data under its split (counts only: no model)."""
    from mtl.data.copies import link_copies, split_jointly
    from mtl.data.pipeline import open_sources
    from mtl.data.splits import split_records

    sources = open_sources(config)
    if config.data.link_copies:
        parts = split_jointly(sources, link_copies(sources), config.data.split, config.seed,
                              cv=config.data.cv)
        return sum(len(p.get("train", [])) for p in parts)
    return sum(len(split_records(s.records, config.data.split, seed=config.seed,
                                 cv=config.data.cv).get("train", []))
               for s in sources)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--sizes", default="128")
    parser.add_argument("--precisions", default="float32")
    parser.add_argument("--backbones", default=None, help="default: the config's backbone")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-min", type=float, default=150.0)
    parser.add_argument("--train-items", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file (default: stdout only)")
    args = parser.parse_args(argv)

    import keras

    from mtl.config import load_config
    from mtl.train import build_model, precision_policy

    config = load_config(args.config)
    items = args.train_items or count_train_items(config)
    sizes = [int(v) for v in args.sizes.split(",")]
    precisions = args.precisions.split(",")
    backbones = args.backbones.split(",") if args.backbones else [config.model.backbone]
    variants = list(itertools.product(backbones, sizes, precisions))
    models, data = {}, {}
    for backbone, size, precision in variants:
        cfg = _variant_config(config, size, precision, backbone)
        keras.utils.set_random_seed(0)
        with precision_policy(precision):
            model = build_model(cfg)
        data[(backbone, size, precision)] = _memory_batches(cfg, args.warmup + args.steps)
        log(f"tracing {backbone} {size} px {precision}")
        fit_steps(model, data[(backbone, size, precision)], warmup=1, steps=1,
                  batch=cfg.train.batch_size)
        models[(backbone, size, precision)] = model
    speeds: dict[tuple, list[float]] = {v: [] for v in variants}
    for round_ in range(args.repeats):
        for v in variants:
            r = fit_steps(models[v], data[v], warmup=args.warmup, steps=args.steps,
                          batch=config.train.batch_size)
            speeds[v].append(r["images_per_s"])
            log(f"round {round_ + 1}: {v[0]} {v[1]} px {v[2]}: {r['images_per_s']:.1f} img/s")
    rows: list[dict[str, Any]] = []
    for (backbone, size, precision), values in speeds.items():
        s = stats(values)
        epoch_s = items / s["median"]
        rows.append({"backbone": backbone, "image_size": size, "precision": precision,
                     "images_per_s": s, "epoch_seconds": epoch_s,
                     "epochs_in_budget": int(args.budget_min * 60 // epoch_s)})
    print(f"{items} training items; budget {args.budget_min:g} min; "
          f"medians over {args.repeats} interleaved rounds of {args.steps} steps")
    print("| backbone | size | precision | img/s | s/epoch | epochs in budget |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backbone']} | {r['image_size']} | {r['precision']} | "
              f"{r['images_per_s']['median']:.1f} | {r['epoch_seconds']:.0f} | "
              f"{r['epochs_in_budget']} |")
    result = {"config": args.config, "train_items": items, "budget_min": args.budget_min,
              "machine": machine_facts(), "variants": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
