"""What XLA costs and saves a one-off inference command: `mtl infer` runs few network calls in a
fresh process, so the one-slice path's XLA compile has to pay for itself within them.

    python benchmarks/infer_xla.py                  # reference-sized net (192 px), 3 rounds
    python benchmarks/infer_xla.py --size 96        # the demo's input size
    python benchmarks/infer_xla.py --quick          # tiny: checks the script works

An untrained network of the given shape (resnet18 U-Net, decoder of benchmarks/peers.py) is
saved once; then, per round, one fresh process per way loads it with
``mtl.infer.predict.Predictor`` and predicts ``--slices`` single slices one call each, as `mtl
infer` does for each 2-D file: ``auto`` (XLA for batches under 4 slices, what `mtl serve`
uses) and ``plain`` (the plain graph, what `mtl infer` uses below 64 2-D images). The two ways alternate which goes
first. Per way: the first slice's seconds (tracing, and for ``auto`` the XLA compile) and the
median of the later slices; then what XLA adds to the first slice, what it saves on each later
one, and after how many slices it would break even (medians over rounds).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
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

FULL = {"size": 192, "slices": 8, "rounds": 3}
#: --quick: proves the script runs; measures nothing
QUICK = {"size": 64, "slices": 2, "rounds": 1}
#: way name -> Predictor(jit_compile=...)
WAYS = {"auto": "auto", "plain": False}


def save_network(size: int, folder: Path) -> Path:
    """An untrained network of benchmarks/peers.py's shape at ``size`` px, saved in ``folder``."""
    from benchmarks.peers import mtl_config
    from mtl.train import build_model

    model = build_model(mtl_config(size, 1, "resnet18"))
    path = folder / f"net-{size}.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    return path


def child(path: str, way: str, slices: int) -> dict[str, Any]:
    """In a fresh process: load, then predict ``slices`` single slices one call each."""
    import numpy as np

    from mtl.infer.predict import Predictor

    started = time.perf_counter()
    predictor = Predictor.from_file(path, jit_compile=WAYS[way])
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(slices):
        image = (rng.random((256, 256)) * 255).astype(np.uint8)
        t0 = time.perf_counter()
        predictor.predict([image])
        seconds.append(time.perf_counter() - t0)
    return {"way": way, "load_s": load_s, "first_s": seconds[0],
            "next_ms": 1000 * statistics.median(seconds[1:]) if slices > 1 else None}


def run_child(path: Path, way: str, slices: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), way, str(slices)],
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {way} process failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["way"]] = run
    med = statistics.median
    ways = {w: {"first_s": med(r["first_s"] for r in runs if r["way"] == w),
                "next_ms": (med(r["next_ms"] for r in runs if r["way"] == w)
                            if runs[0]["next_ms"] is not None else None)} for w in WAYS}
    extra = med(r["auto"]["first_s"] - r["plain"]["first_s"] for r in by_round.values())
    out: dict[str, Any] = {"ways": ways, "xla_extra_first_s": extra}
    if ways["auto"]["next_ms"] is not None:
        saved = med(r["plain"]["next_ms"] - r["auto"]["next_ms"] for r in by_round.values())
        out["xla_saved_per_slice_ms"] = saved
        out["break_even_slices"] = (1 + 1000 * extra / saved) if saved > 0 and extra > 0 else None
    return out


def markdown(results: dict[str, Any]) -> str:
    s, ways = results["summary"], results["summary"]["ways"]
    lines = ["| way | first slice, s (median) | later slices, ms (median) |", "| --- | --- | --- |"]
    for way, label in (("auto", "`auto`: XLA under 4 slices (`mtl serve`)"),
                       ("plain", "plain graph (`mtl infer`)")):
        nxt = ways[way]["next_ms"]
        lines.append(f"| {label} | {ways[way]['first_s']:.2f} | "
                     f"{'-' if nxt is None else f'{nxt:.1f}'} |")
    lines.append("")
    lines.append(f"XLA adds {s['xla_extra_first_s']:.2f} s to the first slice"
                 + (f", saves {s['xla_saved_per_slice_ms']:.1f} ms on each later one; it pays after "
                    f"{s['break_even_slices']:.0f} slices in one process."
                    if s.get("break_even_slices") else "."))
    settings = results["settings"]
    lines += table_footer(results, f"{settings['size']} px, {settings['slices']} single slices "
                          f"per process, {settings['rounds']} rounds, fresh process per way and "
                          "round, medians over rounds", "the times are longer than on an idle "
                          "machine")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2], int(argv[3]))))
        return 0
    p = script_parser("infer_xla.py", "What XLA costs and saves a one-off inference command.",
                      "tiny network, 1 round: proves the script runs, measures nothing")
    add_int_options(p, FULL, {"size": "image size in px", "slices": "single slices per process",
                              "rounds": "rounds (one fresh process per way each)"})
    p.add_argument("--out", help="results JSON; the Markdown table goes next to it (.md)")
    args = parse_with_defaults(p, argv, QUICK, FULL)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    require_at_least(p, args, 1, "slices", "rounds")
    started, load_start = datetime.now(timezone.utc), loadavg()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        path = save_network(args.size, Path(folder))
        for round_ in range(args.rounds):
            order = list(WAYS) if round_ % 2 == 0 else list(WAYS)[::-1]
            for way in order:
                run = {"round": round_, **run_child(path, way, args.slices)}
                log(f"round {round_ + 1}/{args.rounds} {way}: first {run['first_s']:.2f} s"
                    + (f", then {run['next_ms']:.1f} ms" if run["next_ms"] is not None else ""))
                runs.append(run)
    results = {
        **results_head("one-off inference: XLA's compile against its per-slice gain",
                       "infer_xla.py", argv, started, args, ("size", "slices", "rounds")),
        "machine": machine_facts(), "loadavg": {"start": load_start, "end": loadavg()},
        "runs": runs, "summary": summarise(runs),
    }
    publish(results, markdown(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
