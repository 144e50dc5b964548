"""mtl's benchmark suite: training throughput, FLOP efficiency, inference speed, peak memory.

    python benchmarks/run.py                      # everything, experiments/demo.yaml, 5 repeats
    python benchmarks/run.py --quick              # tiny sizes, ~1 min: checks the script works
    python benchmarks/run.py --sections train,flops --repeats 7 --set data.image_size=128
    python benchmarks/run.py --config experiments/shared_real.yaml --model runs/x/best.keras

Writes ``benchmarks/results/<timestamp>.json`` (every raw timing, machine facts, settings) and
the Markdown table next to it (``.md``), and prints the table. See benchmarks/README.md for what
each figure means and how it is measured. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

SECTIONS = ("train", "flops", "infer", "memory")

#: settings of --quick (each can still be given explicitly)
QUICK = {
    "repeats": 2, "warmup_steps": 1, "steps": 2, "latency_repeats": 3, "throughput_slices": 16,
    "png_size": 128, "volume_size": 64, "volume_slices": 8, "memory_image_size": 64,
    "memory_batch": 4, "memory_steps": 2, "conv_shape": "2,32,32,32", "child_timeout": 300.0,
    "large_backbone": "none", "mixed_precision": "none",
}
FULL = {
    "repeats": 5, "warmup_steps": 3, "steps": 15, "latency_repeats": 30, "throughput_slices": 64,
    "png_size": 512, "volume_size": 240, "volume_slices": 155, "memory_image_size": 256,
    "memory_batch": 16, "memory_steps": 5, "conv_shape": "16,64,64,128", "child_timeout": 1800.0,
    "large_backbone": "resnet34", "mixed_precision": "mixed_bfloat16",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.common import comma_list, parse_with_defaults, require_at_least, script_parser

    p = script_parser("run.py", "Benchmarks of mtl: training throughput (real pipeline vs "
                      "in-memory vs naive), FLOP efficiency, inference latency, peak memory.",
                      "tiny sizes and steps (~1 min): proves the script runs, measures nothing")
    p.add_argument("--out", help="results JSON (default benchmarks/results/<timestamp>.json); "
                                 "the Markdown table goes next to it with .md")
    p.add_argument("--config", default="experiments/demo.yaml",
                   help="experiment file whose data and model are benchmarked; 'none' for "
                        "mtl's built-in defaults (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override as for `mtl train --set` (repeatable), e.g. "
                        "data.image_size=128")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated subset of " + ",".join(SECTIONS) + " (default: all)")
    p.add_argument("--repeats", type=int, help="repeats per figure (quick 2, default 5)")
    p.add_argument("--large-backbone",
                   help="the larger backbone also measured in train and flops ('none' to skip; "
                        "default resnet34, quick: none)")
    p.add_argument("--mixed-precision",
                   help="train.precision of a third model, the config's own at that precision, "
                        "measured in train and flops ('none' to skip; default mixed_bfloat16, "
                        "quick: none)")
    p.add_argument("--warmup-steps", type=int, help="training steps excluded per timed fit (3)")
    p.add_argument("--steps", type=int, help="timed training steps per fit (15)")
    p.add_argument("--latency-repeats", type=int, help="file-to-mask calls for median/p95 (30)")
    p.add_argument("--throughput-slices", type=int, help="slices per throughput run (64)")
    p.add_argument("--png-size", type=int, help="side of the PNG slice (512)")
    p.add_argument("--volume-size", type=int, help="in-plane side of the NIfTI volume (240)")
    p.add_argument("--volume-slices", type=int, help="slices of the NIfTI volume (155)")
    p.add_argument("--model", help="a trained .keras model for the inference figures (default: "
                                   "an untrained model of the config, same cost)")
    p.add_argument("--memory-image-size", type=int, help="training image size for peak RSS (256)")
    p.add_argument("--memory-batch", type=int, help="training batch for peak RSS (16)")
    p.add_argument("--memory-steps", type=int, help="training steps for peak RSS (5)")
    p.add_argument("--conv-shape", help="N,H,W,C input of the conv peak probe (16,64,64,128)")
    p.add_argument("--child-timeout", type=float, help="seconds per memory child process (1800)")
    args = parse_with_defaults(p, argv, QUICK, FULL)
    sections = comma_list(args.sections)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        p.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in sections]
    args.conv_shape = tuple(int(v) for v in str(args.conv_shape).split(","))
    if len(args.conv_shape) != 4:
        p.error("--conv-shape must be N,H,W,C")
    require_at_least(p, args, 1, "repeats", "steps")
    require_at_least(p, args, 0, "warmup_steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    out_json = Path(args.out or ROOT / "benchmarks" / "results" / f"{stamp}.json")
    config_path = args.config
    model_path = args.model
    os.chdir(ROOT)  # relative data roots in experiment files are relative to the project

    from benchmarks.common import busy_note, log, loadavg, machine_facts, script_command
    from benchmarks.fixtures import describe_config, make_infer_inputs, resolve_config
    from benchmarks.report import efficiency, markdown

    results: dict[str, Any] = {
        "schema": "mtl-benchmarks/1",
        "command": script_command("run.py", sys.argv[1:] if argv is None else argv),
        "started": started.isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "loadavg": {"start": loadavg()},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "sections": {},
        "errors": {},
        "notes": [],
    }
    log(f"mtl benchmarks ({'quick' if args.quick else 'full'}): {', '.join(args.sections)}")
    results["machine"] = machine_facts()
    busy = busy_note(results["loadavg"]["start"], results["machine"].get("cpus_usable") or 1,
                     "absolute figures are unreliable, ratios less so")
    if busy:
        results["notes"].append(busy)

    resolved = resolve_config(config_path, args.overrides, args.quick)
    config = resolved.load()
    configs = {"default": config}
    large = (args.large_backbone or "").strip()
    if large and large.lower() != "none" and large != config.model.backbone:
        configs["large"] = resolved.load(f"model.backbone={large}")
    mixed = (args.mixed_precision or "").strip()
    if mixed and mixed.lower() != "none" and mixed != config.train.precision:
        configs["mixed"] = resolved.load(f"train.precision={mixed}")
    results["config"] = {"path": config_path, "overrides": resolved.overrides,
                         "data_note": resolved.data_note,
                         "models": {role: describe_config(c) for role, c in configs.items()},
                         "resolved": config.to_dict()}
    if resolved.data_note:
        results["notes"].append(resolved.data_note)
    sections = results["sections"]

    def attempt(name: str, fn) -> None:
        t = time.perf_counter()
        try:
            sections[name] = fn()
            sections[name]["section_seconds"] = time.perf_counter() - t
        except Exception:  # noqa: BLE001 - one failed section must not lose the others
            results["errors"][name] = traceback.format_exc()
            log(f"section {name} FAILED:\n{results['errors'][name]}")

    # ---- quick: the memory section's children start early and overlap the other sections
    # (each is a process of its own, so its peak RSS is unchanged; quick timings measure nothing)
    from benchmarks import memory  # its parent side imports no TensorFlow

    early: dict[str, memory.Child] = {}
    if args.quick and "memory" in args.sections:
        log("memory: quick mode, the training child starts now (overlaps the other sections)")
        early["train"] = memory.start_child(memory.train_args(
            config_path=config_path, overrides=resolved.overrides,
            image_size=args.memory_image_size, batch=args.memory_batch, steps=args.memory_steps))
        atexit.register(memory.stop_child, early["train"])  # if its section never runs

    # ---- flops: the conv probe is built first and timed once per training round
    probe = None
    if "flops" in args.sections:
        def flops_section() -> dict[str, Any]:
            nonlocal probe
            from benchmarks.flops import ConvProbe, model_flops
            from mtl.train import build_model

            log(f"flops: conv probe {args.conv_shape}, model FLOPs")
            probe = ConvProbe(args.conv_shape)
            models = {}
            for role, c in configs.items():
                net = build_model(c).net
                size = c.data.image_size
                models[role] = {"backbone": c.model.backbone,
                                **model_flops(net, (size, size, c.data.input_channels))}
                del net
            return {"models": models}

        attempt("flops", flops_section)

    if "train" in args.sections:
        from benchmarks import train_speed

        attempt("train", lambda: train_speed.run_section(
            configs, warmup=args.warmup_steps, steps=args.steps, repeats=args.repeats,
            between_rounds=probe.measure if probe is not None else None))

    if probe is not None:
        while len(probe.runs["forward"]) < args.repeats:  # without training rounds
            probe.measure()
        sections["flops"]["conv_peak"] = probe.result()
        sections["flops"]["conv_peak"]["timing"] = (
            "interleaved with the training rounds (one probe per round)"
            if "train" in sections else "back to back")

    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        inputs = None
        if {"infer", "memory"} & set(args.sections):
            try:
                log("preparing inference inputs (model file, PNG, NIfTI volume)")
                inputs = make_infer_inputs(
                    Path(tmp), config, model_path=model_path, png_size=args.png_size,
                    volume_size=args.volume_size, volume_slices=args.volume_slices)
            except Exception:  # noqa: BLE001
                results["errors"]["infer_inputs"] = traceback.format_exc()
                log(f"inference inputs FAILED:\n{results['errors']['infer_inputs']}")
        if inputs is not None and early:
            log("memory: quick mode, the inference child starts now (overlaps the infer section)")
            early["infer"] = memory.start_child(memory.infer_args(inputs.model, inputs.volume))
            atexit.register(memory.stop_child, early["infer"])
        if inputs is not None and "infer" in args.sections:
            from benchmarks import infer_speed

            attempt("infer", lambda: infer_speed.run_section(
                inputs, latency_repeats=args.latency_repeats, repeats=args.repeats,
                throughput_slices=args.throughput_slices))
        if inputs is not None and "memory" in args.sections:
            attempt("memory", lambda: memory.run_section(
                config_path=config_path, overrides=resolved.overrides,
                image_size=args.memory_image_size, batch=args.memory_batch,
                steps=args.memory_steps, model=inputs.model, volume=inputs.volume,
                timeout=args.child_timeout, started=early))
        for child in early.values():  # started early, left behind by a failed section
            memory.stop_child(child)

    results["efficiency"] = efficiency(results)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["loadavg"]["end"] = loadavg()
    results["elapsed_seconds"] = (datetime.now(timezone.utc) - started).total_seconds()
    table = markdown(results)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = out_json.with_name(out_json.name + ".tmp")
    from mtl.infer.writers import json_default

    tmp_json.write_text(json.dumps(results, indent=1, default=json_default) + "\n")
    os.replace(tmp_json, out_json)
    out_md = out_json.with_suffix(".md")
    out_md.write_text(table)
    print(table)
    log(f"wrote {out_json} and {out_md} ({results['elapsed_seconds']:.0f} s)")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
