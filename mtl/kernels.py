"""Which CPU kernels TensorFlow runs: oneDNN's on every x86-64 CPU, not only on recent ones.

TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with AVX-512 VNNI / BF16 or
AMX-class features; on an AVX2-only CPU it runs Eigen's convolutions instead. Measured on a
2-core AMD EPYC with AVX2 only (README -> Performance, ``benchmarks/step_profile.py``), oneDNN's
kernels train mtl's network 1.5x faster and infer a batch of 16 1.2x faster. Where TensorFlow
already turns them on, asking again changes nothing.

:func:`prefer_onednn` runs when ``mtl`` is imported (``mtl/__init__.py``), because TensorFlow
reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported: a program that imports TensorFlow
before mtl keeps TensorFlow's own choice. A user's own ``TF_ENABLE_ONEDNN_OPTS`` always wins
(``0`` for Eigen's kernels).
"""

from __future__ import annotations

import os
import platform

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
#: ``platform.machine()`` of the CPUs this applies to (oneDNN's x86 kernels)
X86_64 = ("x86_64", "amd64")


def prefer_onednn() -> None:
    """Ask TensorFlow for oneDNN's CPU kernels on x86-64, unless the user chose already."""
    if platform.machine().lower() in X86_64:
        os.environ.setdefault(ONEDNN_VARIABLE, "1")


def onednn_enabled() -> bool:
    """Whether the TensorFlow of this process runs oneDNN's CPU kernels (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
