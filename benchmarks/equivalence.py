"""The speed-ups of the inference and training paths: how much they change, how much they gain.

    python benchmarks/equivalence.py RUN/best.keras [--split test] [--limit 256] [--repeats 7]

"Old way": the network built with Keras's own BatchNormalization and called eagerly, as mtl
ran it before the performance work. "New way": what ``mtl infer``/``mtl evaluate`` run now,
mtl's fused BatchNormalization (mtl.model.layers) inside one traced graph
(mtl.model.inference.compiled_forward). Both load the same file and see the same prepared
inputs: the given split of the run's data, chosen as ``mtl evaluate`` does (the run folder's
config.yaml and splits.json next to the model), or phantoms for a model outside a run folder.

Prints and writes (``--out``, JSON):

- the largest absolute difference per output, and how many decisions flip at the 0.5
  threshold: presence per slice, type argmax per slice, mask pixels;
- the network's time per call, old vs new, at batch 1 and batch 16 (medians of ``--repeats``,
  old and new interleaved in one process);
- the training step's time with Keras's vs mtl's batch norm (the model's own architecture,
  float32, a batch of 16 of those inputs; medians of ``--repeats`` runs of 5 steps, interleaved).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

import numpy as np  # noqa: E402


def inputs_for(model_path: Path, split: str, limit: int) -> tuple[np.ndarray, str]:
    """Prepared network inputs (at most ``limit``) from ``split`` of the model's run data, as
    ``mtl evaluate`` picks them: the run folder's config and saved splits, else phantoms."""
    from mtl.data.pipeline import SampleEncoder, make_dataset, open_sources, plan_split
    from mtl.evaluate.evaluation import assign_eval_split, config_for
    from mtl.infer.predict import load_model

    run_dir = model_path.parent if (model_path.parent / "config.yaml").is_file() else None
    config = config_for(load_model(model_path), run_dir)
    saved_splits = run_dir / "splits.json" if run_dir is not None else None
    saved = json.loads(saved_splits.read_text()) if saved_splits and saved_splits.is_file() else {}
    sources = open_sources(config)
    for source in sources:
        assign_eval_split(source, split, saved, config)
    ds = make_dataset(sources, plan_split(sources, split), SampleEncoder(config, augment=False),
                      batch_size=16, on_error="skip")
    images: list[np.ndarray] = []
    for x, _, _ in ds:
        images.append(x.numpy())
        if sum(len(b) for b in images) >= limit:
            break
    where = f"{run_dir / 'config.yaml' if run_dir else 'built-in defaults (phantoms)'}"
    return np.concatenate(images)[:limit], f"{where}, split {split}"


def with_keras_batchnorm(build):
    """``build()`` with Keras's own BatchNormalization in every network it makes."""
    import keras

    import mtl.model.backbones as backbones

    fused = backbones.BATCHNORM
    backbones.BATCHNORM = keras.layers.BatchNormalization
    try:
        return build()
    finally:
        backbones.BATCHNORM = fused


def _median_seconds(fn, repeats: int) -> float:
    from benchmarks.common import timed

    return float(np.median([timed(fn)[0] for _ in range(repeats)]))


def old_and_new(model_path: Path):
    """(old forward, new forward, new model): eager Keras-BN model vs mtl's compiled path."""
    from mtl.infer.predict import load_model
    from mtl.model.inference import compiled_forward

    new_model = load_model(model_path)
    pre = new_model.preprocessing
    new = compiled_forward(new_model, pre["image_size"], pre.get("channels", 1))
    old_model = with_keras_batchnorm(lambda: load_model(model_path))

    def old(xb):
        return {k: np.asarray(v) for k, v in old_model(xb, training=False).items()}

    return old, new, new_model


def inference_speed(model_path: Path, x: np.ndarray, repeats: int,
                    forwards=None) -> dict[str, Any]:
    """``forwards``: :func:`old_and_new` of the model when already loaded (each load rebuilds
    the network twice and traces the graph once)."""
    old, new, _ = forwards or old_and_new(model_path)
    out: dict[str, Any] = {}
    for batch in (1, 16):
        xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        for fn in (old, new):  # warm-up: tracing, oneDNN primitives
            fn(xb), fn(xb)
        runs: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(repeats):
            runs["old"].append(_median_seconds(lambda: old(xb), 3))
            runs["new"].append(_median_seconds(lambda: new(xb), 3))
        old_s, new_s = float(np.median(runs["old"])), float(np.median(runs["new"]))
        out[f"batch{batch}"] = {"old_ms": 1000 * old_s, "new_ms": 1000 * new_s,
                                "speedup": old_s / new_s, "runs_seconds": runs}
    return out


def training_speed(model_path: Path, x: np.ndarray, repeats: int, steps: int = 5,
                   saved=None) -> dict[str, Any]:
    """Training step time of the model's architecture with Keras's vs mtl's batch norm.
    ``saved``: the model loaded from ``model_path``, when it already is."""
    import keras

    from mtl.infer.predict import load_model
    from mtl.model.multitask import MultiTaskModel

    saved = saved if saved is not None else load_model(model_path)
    spec, pre = saved.spec, saved.preprocessing
    n = 16
    xb = np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))
    rng = np.random.default_rng(0)
    y = {"presence": rng.integers(0, 2, (n, 1)).astype(np.float32),
         "type": rng.integers(0, len(spec.classes), n).astype(np.int32),
         "mask": (xb[..., :1] > 0.7).astype(np.float32), "box": np.zeros_like(xb[..., :1]),
         "spacing": np.ones((n, 2), np.float32)}
    w = {"presence": np.ones(n, np.float32), "type": np.ones(n, np.float32),
         "mask": np.ones(n, np.float32), "box": np.zeros(n, np.float32)}

    def build():
        model = MultiTaskModel(spec=spec, preprocessing=pre)
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        return model

    models = {"keras_batchnorm": with_keras_batchnorm(build), "fused_batchnorm": build()}
    import tensorflow as tf

    data = tf.data.Dataset.from_tensors((xb, y, w)).repeat()
    for model in models.values():  # tracing
        model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            runs[name].append(_median_seconds(
                lambda: model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0,
                                  shuffle=False), 1) / steps)
    old_s, new_s = (float(np.median(runs[k])) for k in ("keras_batchnorm", "fused_batchnorm"))
    return {"batch": n, "steps_per_run": steps, "keras_batchnorm_images_per_s": n / old_s,
            "fused_batchnorm_images_per_s": n / new_s, "speedup": old_s / new_s,
            "runs_seconds_per_step": runs,
            "note": "each run is one fit of several steps, so it includes Keras's per-fit "
                    "overhead; both models pay it alike"}


def compare(model_path: Path, x: np.ndarray, batch: int = 16, forwards=None) -> dict[str, Any]:
    old_forward, new_forward, _ = forwards or old_and_new(model_path)
    outs: dict[str, dict[str, list[np.ndarray]]] = {"old": {}, "new": {}}
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        for name, out in (("old", old_forward(xb)), ("new", new_forward(xb))):
            for k, v in out.items():
                outs[name].setdefault(k, []).append(np.asarray(v, np.float32))
    old = {k: np.concatenate(v) for k, v in outs["old"].items()}
    new_out = {k: np.concatenate(v) for k, v in outs["new"].items()}
    result: dict[str, Any] = {"slices": int(len(x))}
    for k in old:
        result[f"{k}_max_abs_diff"] = float(np.abs(old[k] - new_out[k]).max())
    result["presence_flips"] = int(((old["presence"] > 0.5) != (new_out["presence"] > 0.5)).sum())
    result["type_flips"] = int((old["type"].argmax(-1) != new_out["type"].argmax(-1)).sum())
    result["mask_pixel_flips"] = int(((old["mask"] > 0.5) != (new_out["mask"] > 0.5)).sum())
    result["mask_pixels"] = int(old["mask"].size)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/equivalence.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, help="a saved mtl model (.keras)")
    p.add_argument("--split", default="test", help="split of that data (default: test)")
    p.add_argument("--limit", type=int, default=256, help="at most this many slices (256)")
    p.add_argument("--repeats", type=int, default=7, help="timing repeats (7); 0 skips timing")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    x, what = inputs_for(args.model, args.split, args.limit)
    command = "python benchmarks/equivalence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    forwards = old_and_new(args.model)  # loaded once for all three figures
    result = {"command": command, "model": str(args.model), "inputs": what,
              "predictions": compare(args.model, x, forwards=forwards)}
    if args.repeats > 0:
        result["inference_speed"] = inference_speed(args.model, x, args.repeats, forwards)
        result["training_speed"] = training_speed(args.model, x, args.repeats,
                                                  saved=forwards[2])
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
