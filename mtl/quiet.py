"""A quiet TensorFlow start-up for the ``mtl`` command line; :func:`quiet_tensorflow` runs
before TensorFlow is imported.

Every TensorFlow start prints lines a user cannot act on:

- absl's ``WARNING: All log messages before absl::InitializeLog() is called are written to
  STDERR`` and info lines (oneDNN, CUDA stubs, CPU features) that ``TF_CPP_MIN_LOG_LEVEL`` does
  not filter, because they are written before TensorFlow's logging reads it;
- on a machine without an NVIDIA GPU, an ERROR line ``failed call to cuInit``.

:func:`quiet_tensorflow` sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless the user set it) and makes the
first ``import tensorflow`` run with the process's stderr captured; what TensorFlow wrote is
then written out again without the lines the level filters out (info, and warnings at level 2)
and, only where no NVIDIA device is visible (no ``/dev/nvidia*`` and no
``CUDA_VISIBLE_DEVICES``), without the cuInit error: there the GPU platform is probed inside
the capture. Nothing hides a GPU: ``CUDA_VISIBLE_DEVICES`` is never changed, and on a machine
with an NVIDIA device nothing about the GPU is filtered. ``TF_CPP_MIN_LOG_LEVEL=0`` shows
everything.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import os
import re
import sys
import tempfile
from typing import Any, Iterator

#: an absl log line: severity letter, date, time, thread, file:line]
ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+\] ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
CPU_FEATURES = "To enable the following instructions:"  # second line of an info message


def nvidia_device_visible() -> bool:
    """True if this machine may have an NVIDIA GPU for TensorFlow (device nodes, or the user
    chose devices with CUDA_VISIBLE_DEVICES)."""
    return "CUDA_VISIBLE_DEVICES" in os.environ or bool(glob.glob("/dev/nvidia[0-9]*"))


def log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def is_noise(line: str, level: int, gpu_possible: bool) -> bool:
    """Whether a line TensorFlow wrote while being imported is filtered out at ``level``."""
    if level >= 1 and (line.startswith(ABSL_PREAMBLE) or line.startswith(CPU_FEATURES)):
        return True
    match = ABSL_LINE.match(line)
    if not match:
        return False
    severity = match.group(1)
    if severity == "I":
        return level >= 1
    if severity == "W":
        return level >= 2
    return severity == "E" and "cuInit" in line and not gpu_possible


@contextlib.contextmanager
def filtered_stderr(level: int, gpu_possible: bool) -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes) and write back all but the noise."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not is_noise(line, level, gpu_possible)]
            if kept:
                os.write(2, "".join(kept).encode("utf-8", errors="replace"))


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` inside :func:`filtered_stderr`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        gpu_possible = nvidia_device_visible()
        with filtered_stderr(log_level(), gpu_possible):
            self._loader.exec_module(module)
            if not gpu_possible:
                # the CUDA platform is probed once per process: here, inside the filter
                with contextlib.suppress(Exception):
                    module.config.list_physical_devices("GPU")


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader; used once."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow() -> None:
    """Set the log level (unless set) and filter TensorFlow's start-up lines; call before
    TensorFlow is imported (later it does nothing)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


__all__ = ["is_noise", "nvidia_device_visible", "quiet_tensorflow"]
