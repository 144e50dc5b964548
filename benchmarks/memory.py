"""Peak memory (RSS) of training and of inference, each in a fresh child process.

The parent runs ``python -m benchmarks.memory train|infer ...``; the child does the work and
prints one JSON line with its own peak RSS, read from ``VmHWM`` in /proc/self/status (the high
water mark of this process image), so neither the parent's TensorFlow nor another child's peak
is counted. ``getrusage(...).ru_maxrss`` (RUSAGE_SELF in the child, or RUSAGE_CHILDREN in the
parent) is *not* usable here: Linux carries it across fork and exec, so every child would report
at least the parent's RSS at the time of the fork; it is kept in the JSON only for reference and
used only where /proc is missing. Figures include the Python interpreter, TensorFlow and the
libraries (RSS after imports and after building/loading the model are reported too).

- ``train``: the real pipeline (``make_dataset``) and ``model.fit`` for a few steps at the given
  image size and batch (256 px, batch 16 by default: the target is <= 4 GB).
- ``infer``: ``Predictor.from_file`` + ``infer_case`` on the NIfTI volume (mask written).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, log, peak_rss_bytes, proc_status  # noqa: E402

GB = 1024**3


def _rss_now() -> int:
    return proc_status().get("VmRSS", 0)


def child_train(config_path: str | None, overrides: list[str], image_size: int, batch: int,
                steps: int) -> dict[str, Any]:
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    import keras

    from benchmarks.fixtures import open_train_sources
    from mtl.config import load_config
    from mtl.data.pipeline import SampleEncoder, make_dataset, plan_training
    from mtl.train import build_model

    rss_imports = _rss_now()
    # data.cache off: a few steps would hold a few items; its full size is reported apart
    config = load_config(config_path, [*overrides, f"data.image_size={image_size}",
                                       f"train.batch_size={batch}", "data.cache=false"])
    sources = open_train_sources(config)
    plan = plan_training(sources, seed=config.seed, epochs=range(1), steps=steps, batch_size=batch)
    ds = make_dataset(sources, plan, SampleEncoder(config, augment=True), batch_size=batch,
                      on_error=config.data.on_error,
                      num_parallel_calls=config.data.num_parallel_calls)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    rss_model = _rss_now()
    t = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    items = sum(len(s.records) for s in sources)
    per_item = image_size * image_size * (4 * config.data.input_channels + 2)
    return {"what": f"train {config.model.backbone}, {image_size}x{image_size}, batch {batch}, "
                    f"{steps} steps, real pipeline",
            "data_cache": {"in_config": load_config(config_path, overrides).data.cache,
                           "measured": False, "items": items, "bytes_per_item": per_item,
                           "full_gb": items * per_item / 1e9},
            "backbone": config.model.backbone, "image_size": image_size, "batch_size": batch,
            "steps": steps, "fit_seconds": time.perf_counter() - t,
            "rss_after_imports_bytes": rss_imports, "rss_after_model_bytes": rss_model}


def child_infer(model_path: str, input_path: str) -> dict[str, Any]:
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    from mtl.infer.predict import Predictor
    from mtl.infer.readers import discover
    from mtl.infer.runner import InferOptions, infer_case

    import tensorflow  # noqa: F401 - count the import in "after imports"

    rss_imports = _rss_now()
    predictor = Predictor.from_file(model_path)
    rss_model = _rss_now()
    (item,), bad = discover([input_path])
    with tempfile.TemporaryDirectory(prefix="mtl-bench-mem-") as out:
        t = time.perf_counter()
        result = infer_case(item, predictor, Path(out), InferOptions())
        seconds = time.perf_counter() - t
    return {"what": f"infer {Path(input_path).name} ({result.record['input']['n_slices']} slices)",
            "seconds": seconds, "rss_after_imports_bytes": rss_imports,
            "rss_after_model_bytes": rss_model}


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    sub = parser.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--config", default="")
    tr.add_argument("--override", action="append", default=[])
    tr.add_argument("--image-size", type=int, default=256)
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--steps", type=int, default=5)
    inf = sub.add_parser("infer")
    inf.add_argument("--model", required=True)
    inf.add_argument("--input", required=True)
    args = parser.parse_args(argv)
    if args.what == "train":
        out = child_train(args.config or None, args.override, args.image_size, args.batch,
                          args.steps)
    else:
        out = child_infer(args.model, args.input)
    # VmHWM: this process image's peak RSS. ru_maxrss is not used as the figure: Linux carries
    # it over fork and exec, so a child of a big parent starts with the parent's RSS as its peak.
    hwm = proc_status().get("VmHWM")
    out["vmhwm_bytes"] = hwm
    out["ru_maxrss_bytes"] = peak_rss_bytes()
    out["peak_rss_bytes"] = hwm if hwm else out["ru_maxrss_bytes"]
    out["peak_source"] = "VmHWM" if hwm else "ru_maxrss"
    print("BENCH-RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent side


@dataclass
class Child:
    """A running ``python -m benchmarks.memory`` child; its output goes to temporary files, so
    it never waits on a full pipe while the parent does something else."""

    proc: subprocess.Popen
    started: float
    stdout: Any
    stderr: Any


def start_child(args: list[str]) -> Child:
    """``python -m benchmarks.memory ARGS`` started (not waited for); see :func:`finish_child`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.memory", *args], cwd=ROOT, env=env,
                            stdout=out, stderr=err, text=True)
    return Child(proc, time.perf_counter(), out, err)


def finish_child(child: Child, what: str, timeout: float) -> dict[str, Any]:
    """The JSON result of a child from :func:`start_child`; killed after ``timeout`` seconds
    from its start."""
    try:
        child.proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - child.started)))
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()
        raise
    finally:
        child.stdout.seek(0)
        child.stderr.seek(0)
        stdout, stderr = child.stdout.read(), child.stderr.read()
        child.stdout.close()
        child.stderr.close()
    wall = time.perf_counter() - child.started
    lines = [ln for ln in stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
    if child.proc.returncode != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"memory child {what} failed (exit {child.proc.returncode}):\n{tail}")
    out = json.loads(lines[-1][len("BENCH-RESULT "):])
    out["child_wall_seconds"] = wall
    out["peak_rss_gb"] = out["peak_rss_bytes"] / GB
    return out


def stop_child(child: Child) -> None:
    """Kill a child whose result is no longer wanted (its section did not run); harmless on a
    child already finished."""
    if child.proc.poll() is None:
        child.proc.kill()
    child.proc.wait()
    child.stdout.close()
    child.stderr.close()


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    return finish_child(start_child(args), args[0], timeout)


def train_args(*, config_path: str | None, overrides: list[str], image_size: int, batch: int,
               steps: int) -> list[str]:
    return ["train", "--config", config_path or "",
            *[a for o in overrides for a in ("--override", o)],
            "--image-size", str(image_size), "--batch", str(batch), "--steps", str(steps)]


def infer_args(model: Path, volume: Path) -> list[str]:
    return ["infer", "--model", str(model), "--input", str(volume)]


def run_section(*, config_path: str | None, overrides: list[str], image_size: int, batch: int,
                steps: int, model: Path, volume: Path, timeout: float,
                started: dict[str, Child] | None = None) -> dict[str, Any]:
    """``started``: children already running (``"train"``/``"infer"`` -> :func:`start_child`),
    as ``--quick`` starts them early so that they overlap the other sections; the ones used
    are removed from it. Each child is a process of its own either way, so its peak RSS is the
    same; its timings are not."""
    started = started if started is not None else {}
    early = sorted(started)
    log(f"memory: training {image_size} px, batch {batch}, {steps} steps in a child process")
    train = finish_child(started.pop("train", None) or start_child(train_args(
        config_path=config_path, overrides=overrides, image_size=image_size, batch=batch,
        steps=steps)), "train", timeout)
    log("memory: inference of the volume in a child process")
    infer = finish_child(started.pop("infer", None) or start_child(infer_args(model, volume)),
                         "infer", timeout)
    return {"method": "fresh child process per figure; peak RSS = VmHWM of the child "
                      "(interpreter + TensorFlow included)",
            "started_early": early, "train": train, "infer": infer}


if __name__ == "__main__":
    _child_main(sys.argv[1:])
