"""Per convolution layer: TensorFlow's weight-gradient kernel against mtl's transposed forward
convolution (``mtl.model.weight_gradient``), on the layers of benchmarks/peers.py's network.

    python benchmarks/weight_gradient.py                    # 128 px, batch 16, 5 rounds
    python benchmarks/weight_gradient.py --size 192 --rounds 3
    python benchmarks/weight_gradient.py --quick            # tiny: checks the script works

Every stride-1 convolution with a kernel larger than 1x1 (the ones the transposed form can
compute), one row per distinct shape (with how many layers share it): the kernel gradient for
random input and output-gradient tensors of the layer's shapes at ``--batch``, each way in its
own ``tf.function``, the two back to back (which goes first alternates) in each of
``--rounds`` rounds of ``--steps`` calls; a figure is the median over rounds of the per-round
median, the ratio the median of the per-round ratios. ``routed`` says whether ``train.weight_gradient: transposed`` (and ``auto``
where it picks it) sends the layer the transposed way (>= ``MIN_CHANNELS`` in and out). The
whole training step, which is what counts, is ``python benchmarks/step_profile.py --variants
fit,fit_native_wgrad``: layers in isolation do not add up to a step (TensorFlow runs
independent ops of a step side by side).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import (  # noqa: E402
    add_int_options, loadavg, log, machine_facts, parse_with_defaults, publish, require_at_least,
    results_head, script_parser, table_footer,
)
from benchmarks.peers import DECODER, mtl_config  # noqa: E402

FULL = {"size": 128, "batch": 16, "steps": 3, "rounds": 5}
#: --quick: proves the script runs; measures nothing
QUICK = {"size": 32, "batch": 2, "steps": 1, "rounds": 1}


def conv_shapes(size: int, batch: int, backbone: str) -> list[dict[str, Any]]:
    """The distinct (input shape, kernel shape, padding) of the network's stride-1 convolutions
    with a kernel larger than 1x1, with their layer names and whether they are routed."""
    from mtl.model.weight_gradient import eligible
    from mtl.train import build_model

    model = build_model(mtl_config(size, batch, backbone, {"train.weight_gradient": "native"}))
    shapes: dict[tuple, dict[str, Any]] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not eligible(layer, min_channels=1):  # the shapes the transposed form computes
            continue
        kernel = tuple(int(d) for d in layer.kernel.shape)
        key = (tuple(int(d) for d in layer.input.shape[1:]), kernel, layer.padding)
        entry = shapes.setdefault(key, {"input": list(key[0]), "kernel": list(kernel),
                                        "padding": layer.padding, "layers": [],
                                        "routed": eligible(layer)})
        entry["layers"].append(layer.name)
    return list(shapes.values())


def time_shape(shape: dict[str, Any], batch: int, steps: int, rounds: int) -> dict[str, Any]:
    import tensorflow as tf

    from mtl.model.weight_gradient import weight_gradient

    kernel, padding = tuple(shape["kernel"]), shape["padding"].upper()
    x = tf.random.stateless_normal([batch, *shape["input"]], seed=(0, 1))
    out_shape = tf.nn.conv2d(x, tf.zeros(kernel), 1, padding).shape
    dy = tf.random.stateless_normal(out_shape, seed=(2, 3))
    ways = {
        "native": tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=kernel, out_backprop=dy, strides=[1, 1, 1, 1],
            padding=padding)),
        "transposed": tf.function(lambda x, dy: weight_gradient(x, dy, kernel, padding)),
    }
    first = {name: fn(x, dy).numpy() for name, fn in ways.items()}
    scale = float(abs(first["native"]).max()) or 1.0
    per_round: dict[str, list[float]] = {name: [] for name in ways}
    for round_index in range(rounds):  # which way goes first alternates between rounds
        for name, fn in (list(ways.items())[::-1] if round_index % 2 else ways.items()):
            calls = []
            for _ in range(steps):
                started = time.perf_counter()
                fn(x, dy).numpy()
                calls.append(time.perf_counter() - started)
            per_round[name].append(statistics.median(calls))
    ratios = [n / t for n, t in zip(per_round["native"], per_round["transposed"])]
    return {**shape, "native_ms": 1e3 * statistics.median(per_round["native"]),
            "transposed_ms": 1e3 * statistics.median(per_round["transposed"]),
            "speedup": statistics.median(ratios),
            "max_relative_difference": float(abs(first["transposed"] - first["native"]).max())
            / scale,
            "raw_seconds": per_round}


def markdown(results: dict[str, Any]) -> str:
    st = results["settings"]
    lines = ["**--quick run: tiny sizes, the figures measure nothing.**\n"] if results["quick"] else []
    lines += ["| layers | input (H, W, C) | kernel | TensorFlow's kernel, ms | transposed, ms | "
             "speed-up | routed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["shapes"]:
        names = row["layers"][0] + (f" (+{len(row['layers']) - 1})" if len(row["layers"]) > 1
                                    else "")
        lines.append(f"| {names} | {tuple(row['input'])} | {tuple(row['kernel'])} | "
                     f"{row['native_ms']:.1f} | {row['transposed_ms']:.1f} | "
                     f"{row['speedup']:.2f}x | {'yes' if row['routed'] else 'no'} |")
    tot = results["totals"]
    lines += ["", f"Summed over every layer (shared shapes counted per layer), routed layers "
                  f"only: TensorFlow's kernel {tot['routed_native_ms']:.1f} ms, transposed "
                  f"{tot['routed_transposed_ms']:.1f} ms ({tot['routed_speedup']:.2f}x); the "
                  f"layers left on TensorFlow's kernel: {tot['other_native_ms']:.1f} ms "
                  f"(transposed would take {tot['other_transposed_ms']:.1f} ms). Speed-up: "
                  "TensorFlow's time / transposed time, per round, median over rounds (> 1: "
                  "the transposed form is faster)."]
    lines += table_footer(results, (
        f"{st['backbone']} U-Net, {st['size']} px, batch {st['batch']}, float32; medians over "
        f"{st['rounds']} rounds of {st['steps']} calls"),
        "absolute times are inflated; compare only the ratios, taken per round.")
    return "\n".join(lines) + "\n"


def totals(shapes: list[dict[str, Any]]) -> dict[str, float]:
    def summed(routed: bool, key: str) -> float:
        return sum(s[key] * len(s["layers"]) for s in shapes if s["routed"] == routed)

    routed_native, routed_transposed = summed(True, "native_ms"), summed(True, "transposed_ms")
    return {"routed_native_ms": routed_native, "routed_transposed_ms": routed_transposed,
            "routed_speedup": routed_native / routed_transposed if routed_transposed else 1.0,
            "other_native_ms": summed(False, "native_ms"),
            "other_transposed_ms": summed(False, "transposed_ms")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = script_parser("weight_gradient.py", "Per convolution layer: TensorFlow's weight-gradient "
                      "kernel against mtl's transposed forward convolution.",
                      "tiny sizes, 1 round: proves the script runs, measures nothing")
    add_int_options(p, FULL, {"size": "image size in px", "batch": "batch",
                              "steps": "timed calls per way per round",
                              "rounds": "alternating rounds"})
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--out", help="results JSON; the Markdown table goes next to it (.md)")
    args = parse_with_defaults(p, argv, QUICK, FULL)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    require_at_least(p, args, 1, "batch", "steps", "rounds")
    started, load_start = datetime.now(timezone.utc), loadavg()
    shapes = conv_shapes(args.size, args.batch, args.backbone)
    log(f"{len(shapes)} layer shapes; {args.rounds} round(s) of {args.steps} call(s) each way")
    timed = [time_shape(s, args.batch, args.steps, args.rounds) for s in shapes]
    results = {
        **results_head("convolution weight gradients per layer: TensorFlow's kernel vs a "
                       "transposed forward convolution", "weight_gradient.py", argv, started,
                       args, ("size", "batch", "steps", "rounds", "backbone"),
                       decoder=list(DECODER)),
        "machine": machine_facts(), "loadavg": {"start": load_start, "end": loadavg()},
        "shapes": timed, "totals": totals(timed),
    }
    publish(results, markdown(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
