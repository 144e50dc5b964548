"""train.precision: auto picks bfloat16 only where the hardware computes in it (mtl.precision)."""

from __future__ import annotations

import logging

import pytest

from mtl import precision
from mtl.config import ConfigError, load_config
from mtl.precision import choose_precision, resolve_precision


def test_auto_follows_the_hardware() -> None:
    assert choose_precision([], cpu_bfloat16=True) == "mixed_bfloat16"
    assert choose_precision([], cpu_bfloat16=False) == "float32"  # AVX2-only: bf16 is emulated
    assert choose_precision([(9, 0)], cpu_bfloat16=False) == "mixed_bfloat16"  # Hopper
    assert choose_precision([(7, 5)], cpu_bfloat16=True) == "mixed_float16"  # Turing: no bf16
    assert choose_precision([(8, 6), (6, 1)], cpu_bfloat16=True) == "float32"  # slowest decides
    assert choose_precision([(6, 1)], cpu_bfloat16=False) == "float32"


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch):
    """A CPU-only machine whose flags the test sets; resolve_precision's cache is emptied."""
    monkeypatch.setattr(precision, "gpu_compute_capabilities", lambda: [])
    resolve_precision.cache_clear()

    def with_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        resolve_precision.cache_clear()

    yield with_flags
    resolve_precision.cache_clear()


def test_resolve_on_cpus_with_and_without_bfloat16(cpu_only, caplog) -> None:
    cpu_only("avx2", "avx512f", "amx_bf16")
    assert resolve_precision("auto") == "mixed_bfloat16"
    cpu_only("avx2", "fma")
    assert resolve_precision("auto") == "float32"
    assert resolve_precision("float32") == "float32"
    with caplog.at_level(logging.WARNING, logger="mtl.precision"):
        assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"  # kept, but warned
        resolve_precision("mixed_bfloat16")  # once, not per model build
    warned = [r for r in caplog.records if "no bfloat16 instructions" in r.getMessage()]
    assert len(warned) == 1 and "many times slower" in warned[0].getMessage()
    caplog.clear()
    cpu_only("avx512_bf16")
    with caplog.at_level(logging.WARNING, logger="mtl.precision"):
        resolve_precision("mixed_bfloat16")
    assert not caplog.records


def test_auto_is_a_valid_config_value_and_others_are_refused() -> None:
    assert load_config(overrides=["train.precision=auto"]).train.precision == "auto"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(overrides=["train.precision=bfloat16"])


def test_the_precision_policy_applies_the_resolved_choice(cpu_only) -> None:
    import keras

    from mtl.train import precision_policy

    cpu_only("avx2")
    with precision_policy("auto"):
        assert keras.mixed_precision.global_policy().name == "float32"
    cpu_only("amx_bf16")
    with precision_policy("auto"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_the_run_folder_records_the_precision_it_trained_in(tiny_phantom_run) -> None:
    import json

    distribution = json.loads((tiny_phantom_run.run_dir / "distribution.json").read_text())
    assert distribution["precision"] == "float32"  # the default, resolved
