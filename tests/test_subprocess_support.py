"""Helpers for tests that run mtl in a subprocess (no tests here)."""

from __future__ import annotations

import subprocess

import pytest


def finish(proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Wait for ``proc``; fail the test if it runs past ``timeout`` seconds (naming ``what``).
    Never leaves it running."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout:g} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
