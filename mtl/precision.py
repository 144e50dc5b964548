"""The compute precision of training, and ``train.precision: auto``, which picks it from the
hardware.

bfloat16 halves the cost of convolutions only where the hardware computes in it: CPUs with
AVX512_BF16 or AMX, and GPUs from compute capability 8.0 (Ampere). Elsewhere TensorFlow emulates
it, many times slower than float32 on an AVX2-only CPU (README -> Performance). float16 pays on
GPUs from compute capability 7.0 (Volta), with automatic loss scaling.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
#: /proc/cpuinfo flags of CPUs that compute in bfloat16
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_bfloat16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of each visible GPU; [] on a CPU-only machine."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append(tuple(details.get("compute_capability") or (0, 0)))
    return found


def choose_precision(gpus: list[tuple[int, int]], cpu_bfloat16: bool) -> str:
    """What ``auto`` means on this hardware: the slowest GPU decides where there are GPUs."""
    if gpus:
        slowest = min(gpus)
        if slowest >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if slowest >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_bfloat16 else "float32"


@functools.lru_cache(maxsize=None)
def resolve_precision(name: str) -> str:
    """The Keras dtype policy for ``train.precision``: ``auto`` chosen from the hardware; an
    explicit ``mixed_bfloat16`` on a CPU-only machine without bfloat16 instructions is kept but
    warned about (once), because it is many times slower there."""
    if name not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    gpus = gpu_compute_capabilities()
    if name == "auto":
        chosen = choose_precision(gpus, cpu_has_bfloat16())
        log.info("train.precision auto -> %s (%s)", chosen, hardware_words(gpus))
        return chosen
    if name == "mixed_bfloat16" and not gpus and not cpu_has_bfloat16():
        log.warning("train.precision mixed_bfloat16: this CPU has no bfloat16 instructions "
                    "(%s), so TensorFlow emulates them and training is many times slower than "
                    "in float32; use precision auto or float32", "/".join(BF16_CPU_FLAGS))
    return name


def hardware_words(gpus: list[tuple[int, int]]) -> str:
    if gpus:
        return "GPU compute capability " + ", ".join(f"{a}.{b}" for a, b in gpus)
    return "CPU with bfloat16" if cpu_has_bfloat16() else "CPU without bfloat16 instructions"
