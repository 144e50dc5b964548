"""Where mtl's training step spends its time, and what the candidate speed-ups change, in one
process: every variant on the same model settings and the same random batches, interleaved.

    python benchmarks/step_profile.py                          # 128 px, batch 16, 3 rounds
    python benchmarks/step_profile.py --size 64 --batch 8 --rounds 5 --steps 3
    python benchmarks/step_profile.py --variants fit,fit_xla --profile fit
    python benchmarks/step_profile.py --quick                  # tiny: checks the script works

The network is benchmarks/peers.py's (``mtl.train.build_model``: resnet18 U-Net, 1 channel,
decoder (128, 64, 32, 16, 16), presence/type heads, Adam, ``train.precision: float32``), fed
random images with disc masks held in memory (``peers.random_batches``). Variants (``--variants``):

- phases of the training step, each its own ``tf.function`` over the same model (as
  ``model.fit`` traces it: graph mode, no XLA): ``forward`` (the network in training mode),
  ``forward_loss`` (+ mtl's masked multi-task loss), ``gradients`` (+ the backward pass under a
  ``GradientTape``), ``step_no_metrics`` (+ Adam's update: a whole training step without
  metrics);
- ``fit``: the train function ``model.fit`` calls each step (``model.train_function``, after
  an untimed ``fit`` that traces it): the above plus the loss trackers, presence/type accuracy
  and Dice, and Keras's bookkeeping. The reference of every training ratio;
- candidates, each its own model (same settings): ``fit_xla`` (``train.jit_compile: true``: XLA
  on the whole step), ``fit_spe`` (``train.steps_per_execution: --spe``; time per step),
  ``fit_no_metrics`` (``compute_metrics`` returns the trackers without updating accuracy and
  Dice), ``fit_keras_adam`` (Keras's own Adam instead of mtl's ``FusedAdam``),
  ``fit_native_wgrad`` / ``fit_transposed_wgrad`` (``train.weight_gradient: native`` /
  ``transposed``: TensorFlow's weight-gradient kernel for every convolution / a transposed
  forward convolution for the wide ones; ``fit`` uses the default, ``auto``);
- inference through ``mtl.model.inference.compiled_forward`` (what ``mtl infer`` / ``serve``
  / ``evaluate`` run, batch norm folded into the convolutions: :mod:`mtl.model.folding`):
  ``infer_1`` (batch 1), ``infer_batch`` (``--batch``) with its defaults (``jit_compile="auto"``:
  XLA below batch 4, the plain graph above); the same as a plain graph (``infer_1_graph``,
  ``infer_batch_graph``: ``jit_compile=False``), with ``jit_compile=True`` (``infer_1_xla``,
  ``infer_batch_xla``), as a plain graph without the folding (``infer_1_unfolded``,
  ``infer_batch_unfolded``: batch norm as trained, the decoder still rewritten) and without the
  decoder's sub-pixel rewrite (:mod:`mtl.model.subpixel`), as a plain graph
  (``infer_1_nosubpixel``, ``infer_batch_nosubpixel``) and through XLA
  (``infer_1_xla_nosubpixel``, ``infer_batch_xla_nosubpixel``). XLA, folding, the rewrite and
  the default are each compared with the plain graph (the rewrite through XLA with ``*_xla``).

Each variant first runs once untimed (its first call's seconds, tracing and XLA compilation
included, are kept as ``first_call_seconds``), then all once more (``--warmup-rounds``): the first
calls after other models were built are slow. Then ``--rounds`` rounds; in each, every variant
runs ``--steps`` timed calls, variants back to back. A variant's figure is the median over
rounds of its per-round median; ratios are taken per round (``fit`` seconds / variant seconds:
> 1 is faster than ``fit``; for the phases, their share of ``fit``'s time) and their median
reported, so load that changes between rounds cancels out. Both the wall time and this
process's CPU time (all its threads) are kept: on a busy machine the wall time mostly measures
waiting for a CPU, the CPU time still the work a call does.

``--profile VARIANT`` runs TensorFlow's profiler (``tf.profiler.experimental``) over
``--profile-steps`` calls of one variant after the rounds and sums the self-time of each op
type (host ops; several threads' ops overlap, so the shares are of op time, not of wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_int_options, comma_list, loadavg, log, machine_facts, parse_with_defaults, publish,
    require_at_least, results_head, script_parser, stats, table_footer,
)
from benchmarks.peers import (  # noqa: E402
    DECODER, LEARNING_RATE, mtl_config, mtl_inputs, random_batches,
)

PHASES = ("forward", "forward_loss", "gradients", "step_no_metrics")
TRAIN_CANDIDATES = ("fit_xla", "fit_spe", "fit_no_metrics", "fit_keras_adam", "fit_native_wgrad",
                    "fit_transposed_wgrad")
INFER = ("infer_1", "infer_batch", "infer_1_graph", "infer_batch_graph", "infer_1_xla",
         "infer_batch_xla", "infer_1_unfolded", "infer_batch_unfolded", "infer_1_nosubpixel",
         "infer_batch_nosubpixel", "infer_1_xla_nosubpixel", "infer_batch_xla_nosubpixel")
#: inference variant suffix -> compiled_forward options
INFER_MODES = {"": {}, "_graph": {"jit_compile": False}, "_xla": {"jit_compile": True},
               "_unfolded": {"fold": False, "jit_compile": False},
               "_nosubpixel": {"subpixel": False, "jit_compile": False},
               "_xla_nosubpixel": {"subpixel": False, "jit_compile": True}}
#: inference variant suffix (longest first) -> its ratio's key after the base name, and how the
#: table reads it
INFER_RELATIONS = (("_xla_nosubpixel", "_xla_subpixel_speedup", "{base}_xla {r:.2f}x faster"),
                   ("_nosubpixel", "_subpixel_speedup", "{base}_graph {r:.2f}x faster"),
                   ("_xla", "_xla_speedup", "{r:.2f}x {base}_graph"),
                   ("_unfolded", "_fold_speedup", "{base}_graph {r:.2f}x faster"))
VARIANTS = (*PHASES, "fit", *TRAIN_CANDIDATES, *INFER)
XLA = ("fit_xla", "infer_1_xla", "infer_batch_xla", "infer_1_xla_nosubpixel",
       "infer_batch_xla_nosubpixel")
#: wall-clock time, and this process's CPU time (all threads)
CLOCKS = ("wall", "cpu")

FULL = {"size": 128, "batch": 16, "steps": 3, "rounds": 3, "warmup_rounds": 1, "spe": 4,
        "profile": "fit", "variants": ",".join(VARIANTS)}
#: --quick: proves the script runs end to end; measures nothing. One model: each candidate
#: costs another build and trace, and XLA compilation takes minutes on a busy 2-core machine
QUICK = {"size": 32, "batch": 2, "steps": 1, "rounds": 1, "warmup_rounds": 0, "spe": 2,
         "profile": "fit", "variants": ",".join((*PHASES, "fit", "infer_1", "infer_batch",
                                                 "infer_1_graph", "infer_1_unfolded",
                                                 "infer_1_nosubpixel"))}


def training_data(batches: list[dict[str, Any]]):
    """(image, targets, sample weights) batches as mtl's pipeline makes them, every task
    labelled: a list of tensors and a repeating tf.data.Dataset of the same batches."""
    import tensorflow as tf

    out = [tf.nest.map_structure(tf.convert_to_tensor, mtl_inputs(b)) for b in batches]
    dataset = tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *xs: tf.stack(xs), *out)).cache().repeat()
    return out, dataset


def phase_functions(model) -> dict[str, Callable]:
    """The phases of the training step as tf.functions (x, y, sw) -> tensors."""
    import tensorflow as tf

    @tf.function
    def forward(x, y, sw):
        return model(x, training=True)

    @tf.function
    def forward_loss(x, y, sw):
        return model.multitask_loss(y, model(x, training=True), sw)[0]

    @tf.function
    def gradients(x, y, sw):
        with tf.GradientTape() as tape:
            loss = model.multitask_loss(y, model(x, training=True), sw)[0]
        return loss, tape.gradient(loss, model.trainable_weights)

    @tf.function
    def step_no_metrics(x, y, sw):
        with tf.GradientTape() as tape:
            loss = model.multitask_loss(y, model(x, training=True), sw)[0]
        grads = tape.gradient(loss, model.trainable_weights)
        model.optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    return {"forward": forward, "forward_loss": forward_loss, "gradients": gradients,
            "step_no_metrics": step_no_metrics}


def _sync(out: Any) -> None:
    """Wait for a result: read one element of its first tensor back."""
    import tensorflow as tf

    first = tf.nest.flatten(out)[0]
    np.asarray(first).ravel()[:1]


def build_variants(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> {"call": () -> None, "steps_per_call": int, "first_call_seconds": float}."""
    import keras

    from mtl.model.inference import compiled_forward
    from mtl.train import build_model

    batches = random_batches(max(2, args.spe), args.batch, args.size)
    tensors, dataset = training_data(batches)
    variants: dict[str, dict[str, Any]] = {}

    def model_with(**train: Any):
        """build_model's model; XLA only where asked for (auto would turn it on on GPUs)."""
        train.setdefault("jit_compile", False)
        keras.utils.set_random_seed(0)
        return build_model(mtl_config(args.size, args.batch, args.backbone,
                                      {f"train.{k}": v for k, v in train.items()}))

    def fit_call(model, steps_per_call: int) -> tuple[Callable[[], None], float]:
        """A call of the model's train function, after an untimed fit (its seconds)."""
        started = time.perf_counter()
        model.fit(dataset, epochs=1, steps_per_epoch=steps_per_call, verbose=0, shuffle=False)
        first = time.perf_counter() - started
        iterator = iter(dataset)
        fn = model.train_function

        def call() -> None:
            _sync(fn(iterator)["loss"])

        return call, first

    base = None
    if set(names) & {*PHASES, "fit", *INFER}:
        base = model_with()
        log(f"built the model ({args.backbone}, {args.size} px, batch {args.batch})")
    if "fit" in names or set(names) & set(PHASES):  # the phases use the optimizer fit builds
        call, first = fit_call(base, 1)
        variants["fit"] = {"call": call, "steps_per_call": 1, "first_call_seconds": first}
    cycle = {"i": 0}

    def next_batch():
        cycle["i"] = (cycle["i"] + 1) % len(tensors)
        return tensors[cycle["i"]]

    for name, fn in phase_functions(base).items() if base is not None else ():
        if name not in names:
            continue
        started = time.perf_counter()
        _sync(fn(*tensors[0]))
        variants[name] = {"call": (lambda fn=fn: _sync(fn(*next_batch()))), "steps_per_call": 1,
                          "first_call_seconds": time.perf_counter() - started}
    candidates = {"fit_xla": ({"jit_compile": True}, 1), "fit_spe": (
        {"steps_per_execution": args.spe}, args.spe), "fit_no_metrics": ({}, 1),
        "fit_keras_adam": ({}, 1), "fit_native_wgrad": ({"weight_gradient": "native"}, 1),
        "fit_transposed_wgrad": ({"weight_gradient": "transposed"}, 1)}
    for name, (train, per_call) in candidates.items():
        if name not in names:
            continue
        log(f"building {name} (first call traces{' and compiles with XLA' if name in XLA else ''})")
        model = model_with(**train)
        if name == "fit_no_metrics":
            model.compute_metrics = lambda *a, model=model, **k: model.get_metrics_result()
        if name == "fit_keras_adam":  # Keras's own Adam: ten ops per weight, not one kernel
            model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), jit_compile=False)
        call, first = fit_call(model, per_call)
        variants[name] = {"call": call, "steps_per_call": per_call, "first_call_seconds": first,
                          "jit_compile": bool(model.jit_compile),
                          "steps_per_execution": int(model.steps_per_execution)}
    x1 = batches[0]["image"][:1]
    xb = batches[0]["image"]
    for suffix, options in INFER_MODES.items():
        wanted = [n for n in (f"infer_1{suffix}", f"infer_batch{suffix}") if n in names]
        if not wanted:
            continue
        forward = compiled_forward(base, args.size, 1, **options)
        for name in wanted:
            x = x1 if name.startswith("infer_1") else xb
            started = time.perf_counter()
            forward(x)
            variants[name] = {"call": (lambda f=forward, x=x: f(x)), "steps_per_call": 1,
                              "first_call_seconds": time.perf_counter() - started,
                              "images_per_call": len(x)}
    return {n: variants[n] for n in names if n in variants}


def run_rounds(variants: dict[str, dict[str, Any]], rounds: int, steps: int,
               warmup_rounds: int = 0) -> dict[str, dict[str, list[list[float]]]]:
    """clock ("wall", "cpu") -> name -> per round, the seconds per step of each timed call.

    "cpu" is this process's CPU time (all its threads): the work a call does, which waiting
    for the CPUs on a busy machine does not inflate as it does the wall time."""
    times: dict[str, dict[str, list[list[float]]]] = {
        clock: {n: [] for n in variants} for clock in CLOCKS}
    for _ in range(warmup_rounds):  # untimed: every variant once more after all were built
        for v in variants.values():
            v["call"]()
    for r in range(rounds):
        for name, v in variants.items():
            wall, cpu = [], []
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                v["call"]()
                wall.append((time.perf_counter() - t) / v["steps_per_call"])
                cpu.append((time.process_time() - c) / v["steps_per_call"])
            times["wall"][name].append(wall)
            times["cpu"][name].append(cpu)
        log(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {1000 * statistics.median(times['wall'][n][-1]):.0f} ms "
            f"(CPU {1000 * statistics.median(times['cpu'][n][-1]):.0f})" for n in variants))
    return times


def summarise(times: dict[str, dict[str, list[list[float]]]]) -> dict[str, Any]:
    """Per clock: per variant, the median over rounds of the per-round medians; ratios per
    round, median over rounds."""
    return {clock: summarise_clock(times[clock]) for clock in CLOCKS}


def summarise_clock(times: dict[str, list[list[float]]]) -> dict[str, Any]:
    per_round = {n: [statistics.median(r) for r in rs] for n, rs in times.items()}
    out: dict[str, Any] = {"seconds": {n: stats(v) for n, v in per_round.items()}, "ratios": {}}

    def ratio(name: str, num: str, den: str, what: str) -> None:
        if num in per_round and den in per_round:
            out["ratios"][name] = {**stats(a / b for a, b in zip(per_round[num], per_round[den])),
                                   "what": what}

    for phase in PHASES:
        ratio(f"{phase}_share_of_fit", phase, "fit", f"{phase} seconds / fit seconds")
    for name in TRAIN_CANDIDATES:
        ratio(f"{name}_speedup", "fit", name, f"fit seconds / {name} seconds (> 1: faster)")
    for name in ("infer_1", "infer_batch"):
        plain = f"{name}_graph"
        ratio(f"{name}_xla_speedup", plain, f"{name}_xla",
              f"{plain} seconds / {name}_xla seconds (> 1: XLA faster)")
        ratio(f"{name}_fold_speedup", f"{name}_unfolded", plain,
              f"{name}_unfolded seconds / {plain} seconds (> 1: folding batch norm faster)")
        ratio(f"{name}_subpixel_speedup", f"{name}_nosubpixel", plain,
              f"{name}_nosubpixel seconds / {plain} seconds (> 1: the sub-pixel decoder faster)")
        ratio(f"{name}_xla_subpixel_speedup", f"{name}_xla_nosubpixel", f"{name}_xla",
              f"{name}_xla_nosubpixel seconds / {name}_xla seconds (> 1: the sub-pixel decoder "
              "faster through XLA)")
        ratio(f"{name}_default_speedup", plain, name,
              f"{plain} seconds / {name} seconds (> 1: the default, jit_compile auto, faster)")
    return out


def op_type_shares(logdir: str, top: int = 15) -> dict[str, Any]:
    """Self-time per op type from the profiler's framework_op_stats tool (host ops; the
    threads' idle time is kept apart)."""
    import glob

    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    data, ok = plugin.xspace_to_tools_data(files, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"framework_op_stats: {data[:200]!r}")
    tables = json.loads(data)
    table = tables[0] if isinstance(tables, list) else tables
    cols = [c["id"] for c in table["cols"]]
    by_type: dict[str, float] = {}
    for row in table["rows"]:
        cell = dict(zip(cols, (c.get("v") if isinstance(c, dict) else c for c in row["c"])))
        by_type[cell["type"]] = by_type.get(cell["type"], 0.0) + float(cell["total_self_time"])
    idle = by_type.pop("IDLE", 0.0)
    total = sum(by_type.values()) or 1.0
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])
    return {"total_self_time_us": total, "idle_us": idle, "op_types": len(by_type),
            "top": [{"type": t, "self_time_us": round(us, 1), "share": us / total}
                    for t, us in ranked[:top]],
            "other_share": sum(us for _, us in ranked[top:]) / total}


def profile(variant: dict[str, Any], steps: int) -> dict[str, Any]:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                variant["call"]()
        finally:
            tf.profiler.experimental.stop()
        return op_type_shares(logdir)


def _relation(name: str, ratios: dict[str, Any]) -> str:
    def med(key: str) -> float | None:
        return ratios[key]["median"] if key in ratios else None

    if name in PHASES:
        r = med(f"{name}_share_of_fit")
        return f"{r:.2f} of fit" if r is not None else ""
    if name in TRAIN_CANDIDATES:
        r = med(f"{name}_speedup")
        return f"{r:.2f}x" if r is not None else ""
    for suffix, key, text in INFER_RELATIONS:
        if name.endswith(suffix):
            base = name[:-len(suffix)]
            r = med(base + key)
            return text.format(base=base, r=r) if r is not None else ""
    if name in ("infer_1", "infer_batch"):
        r = med(f"{name}_default_speedup")
        return f"{r:.2f}x {name}_graph" if r is not None else ""
    return "1 (reference)" if name == "fit" else ""


def markdown(results: dict[str, Any]) -> str:
    wall, cpu = results["summary"]["wall"], results["summary"]["cpu"]
    st, m = results["settings"], results["machine"]
    lines = []
    if results["quick"]:
        lines.append("**--quick run: tiny sizes, the figures measure nothing.**\n")
    lines += ["| variant | wall ms per step | speed ratio, wall | CPU ms per step | speed ratio, "
              "CPU time | first call, s |", "| --- | --- | --- | --- | --- | --- |"]
    for name in results["variants"]:
        if name not in wall["seconds"]:
            continue
        first = results["variant_info"][name]["first_call_seconds"]
        lines.append(f"| `{name}` | {1000 * wall['seconds'][name]['median']:.1f} | "
                     f"{_relation(name, wall['ratios'])} | "
                     f"{1000 * cpu['seconds'][name]['median']:.1f} | "
                     f"{_relation(name, cpu['ratios'])} | {first:.1f} |")
    lines += ["", "Ratios are per round, median over rounds: phases as a share of `fit`'s time; "
                  "candidates as `fit` time / their time (> 1: faster); inference against the "
                  "plain graph (`*_graph`): `*_xla` and the default (`infer_1`, `infer_batch`: "
                  "XLA below batch 4) as plain time / their time, `*_unfolded` (batch norm not "
                  "folded) and `*_nosubpixel` (decoder not rewritten) as their time / the plain "
                  "graph's, `*_xla_nosubpixel` as its time / `*_xla`'s. CPU time is this "
                  "process's (all threads): the work done, which a busy machine inflates less "
                  "than the wall time."]
    prof = results.get("profile")
    if prof and "top" in prof:
        lines += ["", f"Op self-time shares of `{st['profile']}` (TensorFlow profiler, "
                      f"{st['profile_steps']} calls, {prof['op_types']} op types, idle time "
                      f"left out):", "", "| op type | share |", "| --- | --- |"]
        lines += [f"| {t['type']} | {100 * t['share']:.1f}% |" for t in prof["top"]]
        lines.append(f"| other | {100 * prof['other_share']:.1f}% |")
    lines += table_footer(results, (
        f"TensorFlow {m['versions']['tensorflow']} (intra-op threads "
        f"{m['threads']['tf_intra_op'] or 'default'}), nice {st['nice']}; {st['backbone']} U-Net, "
        f"{st['size']} px, batch {st['batch']}, float32; medians over {st['rounds']} "
        f"interleaved rounds of {st['steps']} calls"),
        "absolute times are inflated; compare only the ratios, taken per round, CPU time first.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = script_parser("step_profile.py", "Where mtl's training step spends its time, and what "
                      "XLA, steps_per_execution and metrics change; one process, interleaved.",
                      "tiny sizes, 1 round, the phases, fit and plain inference: proves the "
                      "script runs, measures nothing")
    add_int_options(p, FULL, {
        "size": "image size in px", "batch": "batch", "steps": "timed calls per variant per round",
        "rounds": "interleaved rounds", "warmup_rounds": "untimed rounds first",
        "spe": "steps_per_execution of fit_spe"})
    p.add_argument("--variants", help=f"comma-separated, from: {', '.join(VARIANTS)} (default all)")
    p.add_argument("--profile", help="variant to run under TensorFlow's profiler after the rounds "
                                     f"(default {FULL['profile']}; 'none' skips it)")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--out", help="results JSON; the Markdown table goes next to it (.md). "
                                 "Without it only the table is printed")
    args = parse_with_defaults(p, argv, QUICK, FULL)
    names = comma_list(args.variants)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names:
        p.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(VARIANTS)}")
    args.variants = names
    if args.profile == "none":
        args.profile = None
    elif args.profile not in names:
        p.error(f"--profile {args.profile}: not among --variants")
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    require_at_least(p, args, 1, "batch", "steps", "rounds", "spe", "profile_steps")
    require_at_least(p, args, 0, "warmup_rounds")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    load_start = loadavg()
    build_started = time.perf_counter()
    variants = build_variants(args, args.variants)
    log(f"variants ready in {time.perf_counter() - build_started:.0f} s; "
        f"{args.rounds} round(s) of {args.steps} call(s)")
    times = run_rounds(variants, args.rounds, args.steps, args.warmup_rounds)
    prof: dict[str, Any] | None = None
    if args.profile:
        try:
            prof = profile(variants[args.profile], args.profile_steps)
        except Exception as exc:  # noqa: BLE001 - the profile is optional; the timings stand
            prof = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"profile failed: {prof['error']}")
    results = {
        **results_head(
            "mtl's training step by phase, and candidate speed-ups, in one process",
            "step_profile.py", argv, started, args,
            ("size", "batch", "steps", "rounds", "warmup_rounds", "spe", "backbone", "profile",
             "profile_steps"),
            decoder=list(DECODER), precision="float32", nice=os.nice(0)),
        "variants": list(variants),
        "variant_info": {n: {k: v for k, v in d.items() if k != "call"} for n, d in variants.items()},
        "machine": machine_facts(),
        "loadavg": {"start": load_start, "end": loadavg()},
        "summary": summarise(times),
        "raw_seconds_per_step": times,
        "profile": prof,
    }
    results["machine"]["cpus_usable"] = results["machine"].get("cpus_usable") or os.cpu_count()
    publish(results, markdown(results), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
