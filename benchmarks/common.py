"""Shared helpers: statistics over repeats, machine facts, peak memory, logging to stderr, and
the parts the scripts share (their parser and --quick defaults, the command line, the note on a
busy machine, the lines under a table, printing and writing the results).

Nothing here imports TensorFlow at module level, so child processes and the report can use it
cheaply; :func:`machine_facts` imports it only to read versions and thread settings. It imports
``mtl`` first, so every benchmark runs TensorFlow with the CPU kernels mtl chooses
(:mod:`mtl.kernels`: oneDNN's, also on AVX2-only CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import mtl  # noqa: F401 - before TensorFlow: its CPU kernels as mtl's users get them

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(values: Iterable[float]) -> dict[str, Any]:
    """Median, p95, min, max and the raw values (all kept in the JSON)."""
    raw = [float(v) for v in values]
    if not raw:
        return {"n": 0, "median": None, "p95": None, "min": None, "max": None, "raw": []}
    arr = np.asarray(raw, dtype=np.float64)
    return {
        "n": len(raw),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "raw": raw,
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (peak) of a process in bytes, from /proc (Linux only; {} elsewhere)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    blocks = [b for b in text.split("\n\n") if b.strip()]
    cores: set[tuple[str, str]] = set()
    flags: set[str] = set()
    for block in blocks:
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if "model name" in fields:
            info["model"] = fields["model name"]
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
        if "flags" in fields:
            flags = set(fields["flags"].split())
        if "cpu MHz" in fields:
            info["mhz"] = float(fields["cpu MHz"])
    info["logical_cpus"] = len(blocks)
    info["physical_cores"] = len(cores) or None
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    info["simd"] = [f for f in wanted if f in flags]
    return info


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else float(quota) / float(period)


def git_revision() -> dict[str, Any]:
    """Commit and whether the work tree differs from it (read-only git commands)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=20, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "--short=12", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, library versions and TensorFlow's thread settings."""
    import tensorflow as tf
    import keras

    from mtl.kernels import onednn_enabled

    facts: dict[str, Any] = {"cpu": _cpuinfo()}
    facts["os_cpu_count"] = os.cpu_count()
    try:
        facts["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        facts["cpus_usable"] = os.cpu_count()
    facts["cgroup_cpu_limit"] = _cgroup_cpu_limit()
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        facts["memory_total_gb"] = round(kb / 1024**2, 2)
    except (OSError, StopIteration):
        facts["memory_total_gb"] = None
    facts["platform"] = platform.platform()
    facts["python"] = platform.python_version()
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    for name in ("albumentations", "cv2", "segmentation_models", "nibabel"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - a version we cannot read is not an error
            versions[name] = None
    facts["versions"] = versions
    build = tf.sysconfig.get_build_info()
    facts["tf_build"] = {k: build.get(k) for k in ("is_cuda_build", "cpu_compiler") if k in build}
    facts["threads"] = {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "note": "0 means TensorFlow's default (one thread per usable core)",
        "env": {k: os.environ.get(k) for k in (
            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
            "TF_ENABLE_ONEDNN_OPTS", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "KMP_AFFINITY",
            "KMP_BLOCKTIME", "MALLOC_ARENA_MAX", "LD_PRELOAD")},
    }
    facts["isa_caps"] = isa_caps()
    facts["onednn"] = onednn_enabled()
    facts["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    facts["git"] = git_revision()
    return facts


def timed(fn, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def write_results(out: str | Path, results: dict[str, Any], table: str) -> None:
    """``results`` as JSON at ``out`` and ``table`` as Markdown beside it (``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(table)
    log(f"wrote {out} and {out.with_suffix('.md')}")


# ----------------------------------------------------------------- the scripts' shared parts


def publish(results: dict[str, Any], table: str, out: str | Path | None) -> None:
    """Print ``table``; with ``out``, write both there (:func:`write_results`)."""
    print(table)
    if out:
        write_results(out, results, table)


def script_parser(script: str, description: str, quick_help: str) -> argparse.ArgumentParser:
    """The parser of ``python benchmarks/<script>``, with its ``--quick`` flag."""
    parser = argparse.ArgumentParser(prog=f"python benchmarks/{script}", description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def add_int_options(parser: argparse.ArgumentParser, full: dict[str, Any],
                    helps: dict[str, str]) -> None:
    """An integer option ``--NAME`` per entry of ``helps``, its help ending in its default in
    ``full`` (the value it takes when left out, see :func:`parse_with_defaults`)."""
    for name, text in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            help=f"{text} (default {full[name]})")


def parse_with_defaults(parser: argparse.ArgumentParser, argv: list[str] | None,
                        quick: dict[str, Any], full: dict[str, Any]) -> argparse.Namespace:
    """``argv`` parsed; each option left out (None) takes its value from ``quick`` under
    ``--quick``, from ``full`` otherwise."""
    args = parser.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def require_at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, minimum: int,
                     *names: str) -> None:
    """Exit through ``parser.error`` naming the first option of ``names`` below ``minimum``."""
    for name in names:
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}")


def script_command(script: str, argv: list[str]) -> str:
    """The command line that ran ``benchmarks/<script>`` with ``argv``, quoted for a shell."""
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(a) for a in argv)])


def results_head(what: str, script: str, argv: list[str], started: Any,
                 args: argparse.Namespace, settings: Iterable[str], **more: Any) -> dict[str, Any]:
    """The opening of a script's results: what it measures, its command line, when it started
    (a datetime), whether ``--quick``, and the ``settings`` named (from ``args``) with ``more``."""
    return {"what": what, "command": script_command(script, argv),
            "date": started.isoformat(timespec="seconds"), "quick": bool(args.quick),
            "settings": {k: getattr(args, k) for k in settings} | more}


def busy_note(load: list[float] | None, cpus: int, consequence: str) -> str | None:
    """Where the 1-minute load average at the start was above half the usable CPUs: a note that
    the machine was busy, and ``consequence``; None otherwise."""
    if not load or load[0] <= cpus / 2:
        return None
    return (f"The machine was busy (1-minute load {load[0]:.2f} at the start on {cpus} CPUs): "
            f"{consequence}")


#: environment variables that cap the instruction set the libraries' kernels use, so an
#: AVX-512 CPU can stand in for an AVX2-only one (oneDNN, used by TensorFlow and PyTorch;
#: PyTorch's own ATen kernels; MKL; OpenBLAS). Not a real AVX2 machine: caches, memory and cores
#: stay this CPU's.
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
            "OPENBLAS_CORETYPE")


def isa_caps() -> dict[str, str]:
    """The :data:`ISA_CAPS` this process's environment sets."""
    return {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}


def isa_cap_note(env: dict[str, str | None]) -> str:
    """"instruction set capped (ONEDNN_MAX_CPU_ISA=AVX2, ...): ..." when ``env`` caps it; ""."""
    caps = [f"{k}={env[k]}" for k in ISA_CAPS if env.get(k)]
    if not caps:
        return ""
    return (f"Instruction set capped ({', '.join(caps)}): an emulation of a CPU without those "
            "instructions on this one, not a measurement on such a CPU (caches, memory and cores "
            "are this CPU's).")


def kernel_note(machine: dict[str, Any]) -> str:
    """``"TensorFlow's oneDNN kernels on/off, "`` where the results recorded it."""
    if machine.get("onednn") is None:
        return ""
    return f"TensorFlow's oneDNN kernels {'on' if machine['onednn'] else 'off'}, "


def table_footer(results: dict[str, Any], details: str, busy_consequence: str) -> list[str]:
    """The lines under a script's table: what produced it (command, date, commit, CPU, usable
    CPUs from ``results``' command, date and machine, then ``details``), the load average at
    start and end, and where it was busy at the start, :func:`busy_note` in bold."""
    machine, cpu, load = results["machine"], results["machine"]["cpu"], results["loadavg"]
    lines = ["", (
        f"`{results['command']}` on {results['date'][:10]}, commit {machine['git'].get('commit')}"
        f"{' (work tree modified)' if machine['git'].get('dirty') else ''}; {cpu.get('model')} "
        f"(SIMD: {', '.join(cpu.get('simd', [])) or 'unknown'}), {machine['cpus_usable']} usable "
        f"CPUs, {kernel_note(machine)}{details}; load average {load['start']} at start, "
        f"{load['end']} at end.")]
    capped = isa_cap_note(machine.get("isa_caps") or {})
    if capped:
        lines += ["", f"**{capped}**"]
    busy = busy_note(load["start"], machine["cpus_usable"], busy_consequence)
    if busy:
        lines += ["", f"**{busy}**"]
    return lines
