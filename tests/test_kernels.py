"""mtl asks TensorFlow for oneDNN's CPU kernels on x86-64 (mtl.kernels), before TF is imported."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mtl import kernels

PROBE = ("import os, mtl; from mtl.kernels import onednn_enabled; "
         "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), onednn_enabled())")


def probe(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != kernels.ONEDNN_VARIABLE}
    if env_value is not None:
        env[kernels.ONEDNN_VARIABLE] = env_value
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return done.stdout.strip().splitlines()[-1].split()


@pytest.mark.skipif(platform.machine().lower() not in kernels.X86_64,
                    reason="oneDNN's kernels are asked for on x86-64 CPUs only")
def test_importing_mtl_turns_onednn_on_unless_the_user_chose():
    assert probe(None) == ["1", "True"]  # on, also where TensorFlow's default is off (AVX2)
    assert probe("0") == ["0", "False"]  # the user's choice wins


def test_prefer_onednn_only_on_x86_64(monkeypatch):
    monkeypatch.delenv(kernels.ONEDNN_VARIABLE, raising=False)
    monkeypatch.setattr(kernels.platform, "machine", lambda: "aarch64")
    kernels.prefer_onednn()
    assert kernels.ONEDNN_VARIABLE not in os.environ
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    kernels.prefer_onednn()
    assert os.environ[kernels.ONEDNN_VARIABLE] == "1"
    monkeypatch.setenv(kernels.ONEDNN_VARIABLE, "0")
    kernels.prefer_onednn()
    assert os.environ[kernels.ONEDNN_VARIABLE] == "0"
