"""``benchmarks/run.py --quick`` end to end (one subprocess), the other scripts' quick runs,
plus the cheap parts by import."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_subprocess_support import finish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import headline_rows, markdown  # noqa: E402
from benchmarks.run import SECTIONS, parse_args  # noqa: E402


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _cpu_has_bfloat16() -> bool:
    """bfloat16 pays only with AVX512_BF16 or AMX; elsewhere it is many times slower, so the
    quick run times it only where the CPU has the instructions (keeps CI short on AVX2 CPUs)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16 = _cpu_has_bfloat16()


#: the tests that read the quick run go to one pytest-xdist worker, which runs it once
QUICK_RUN = pytest.mark.xdist_group("quick_benchmark_run")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`benchmarks/run.py --quick` in a subprocess: (results, results JSON path, stdout)."""
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    mixed = ["--mixed-precision", "mixed_bfloat16"] if BF16 else []
    with (out.parent / "stdout.txt").open("w") as stdout, \
            (out.parent / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "benchmarks/run.py", "--quick", *mixed, "--out", str(out)],
            cwd=ROOT, stdout=stdout, stderr=stderr, text=True)
        finish(proc, 900, "benchmarks/run.py --quick")  # generous, as it shares the machine
    assert proc.returncode == 0, (out.parent / "stderr.txt").read_text()[-4000:]
    return json.loads(out.read_text()), out, (out.parent / "stdout.txt").read_text()


def test_arguments():
    args = parse_args(["--quick", "--sections", "infer,train", "--repeats", "3"])
    assert args.sections == ["train", "infer"] and args.repeats == 3 and args.steps == 2
    full = parse_args([])
    assert full.sections == list(SECTIONS) and full.repeats == 5
    assert (full.png_size, full.volume_slices, full.memory_image_size, full.memory_batch) == (
        512, 155, 256, 16)
    assert full.large_backbone == "resnet34"
    with pytest.raises(SystemExit):
        parse_args(["--sections", "train,bogus"])


def test_missing_data_falls_back_to_phantoms(tmp_path):
    from benchmarks.fixtures import resolve_config

    yaml = tmp_path / "exp.yaml"
    yaml.write_text("data:\n  sources:\n    - {format: br35h, root: %s}\n" % (tmp_path / "nope"))
    resolved = resolve_config(str(yaml), [], quick=False)
    assert "phantoms instead" in resolved.data_note
    assert [s.format for s in resolved.load().data.sources] == ["phantoms"]


def test_equivalence_of_the_fast_path_on_a_saved_model(tmp_path):
    """benchmarks/equivalence.py: Keras batch norm called eagerly vs mtl's fused batch norm in
    a graph, on one saved model: tiny differences, no flipped decision."""
    import keras
    import numpy as np

    from benchmarks.equivalence import compare, inference_speed, old_and_new, training_speed
    from mtl.config import load_config
    from mtl.train import build_model

    model = build_model(load_config(overrides=[
        "data.image_size=64", "model.decoder_filters=[16,16,8,8,8]", "model.head_units=8"]))
    rng = np.random.default_rng(0)
    for layer in model.net.layers:  # statistics as a trained model has them, not 0 and 1
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.3, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape).astype("float32"))
    path = tmp_path / "m.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    forwards = old_and_new(path)  # loaded once for the three figures, as main() does
    result = compare(path, rng.random((20, 64, 64, 1), dtype=np.float32), batch=8,
                     forwards=forwards)
    assert result["slices"] == 20 and result["mask_pixels"] == 20 * 64 * 64
    for key in ("presence", "type", "mask"):
        assert 0 <= result[f"{key}_max_abs_diff"] < 1e-4
    assert result["presence_flips"] == result["type_flips"] == 0
    assert result["mask_pixel_flips"] <= 2  # only pixels within float rounding of 0.5
    x = rng.random((4, 64, 64, 1), dtype=np.float32)
    speed = inference_speed(path, x, repeats=1, forwards=forwards)
    assert set(speed) == {"batch1", "batch16"}
    assert all(v["old_ms"] > 0 and v["new_ms"] > 0 for v in speed.values())
    trained = training_speed(path, x, repeats=1, steps=1, saved=forwards[2])
    assert trained["keras_batchnorm_images_per_s"] > 0 and trained["fused_batchnorm_images_per_s"] > 0


def test_train_budget_reports_speed_and_epochs_per_variant(tmp_path, capsys):
    import yaml

    from benchmarks.train_budget import main as budget

    out = tmp_path / "budget.json"
    demo = yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text())
    demo["model"].update(decoder_filters=[16, 16, 8, 8, 8], head_units=8)  # cheap steps
    demo["train"]["batch_size"] = 4
    config = tmp_path / "demo-narrow.yaml"
    config.write_text(yaml.safe_dump(demo))
    assert budget(["--config", str(config), "--sizes", "32,64", "--precisions",
                   "float32", "--steps", "2", "--warmup", "1", "--repeats", "1",
                   "--train-items", "320", "--budget-min", "10", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(v["image_size"], v["precision"]) for v in result["variants"]] == [
        (32, "float32"), (64, "float32")]
    for v in result["variants"]:
        assert _positive(v["images_per_s"]["median"])
        assert v["epoch_seconds"] == pytest.approx(320 / v["images_per_s"]["median"])
        assert v["epochs_in_budget"] == int(600 // v["epoch_seconds"])
    assert "simd" in result["machine"]["cpu"]  # bfloat16 pays only with avx512_bf16 / amx_bf16
    assert "| resnet18 | 64 | float32 |" in capsys.readouterr().out


def test_step_profile_quick_times_the_phases(tmp_path, capsys):
    from benchmarks.step_profile import PHASES, main as step_profile

    out = tmp_path / "profile.json"
    assert step_profile(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["variants"] == [*PHASES, "fit", "infer_1", "infer_batch", "infer_1_graph",
                                  "infer_1_unfolded", "infer_1_nosubpixel"]
    for clock in ("wall", "cpu"):
        summary = result["summary"][clock]
        assert all(_positive(summary["seconds"][v]["median"]) for v in result["variants"])
        assert {f"{p}_share_of_fit" for p in PHASES} <= set(summary["ratios"])
        for ratio in ("infer_1_fold_speedup", "infer_1_subpixel_speedup",
                      "infer_1_default_speedup"):
            assert _positive(summary["ratios"][ratio]["median"])
    shares = result["profile"]["top"]  # TensorFlow's profiler: op types of the fit step
    assert shares and any("Conv2D" in t["type"] for t in shares)
    assert sum(t["share"] for t in shares) + result["profile"]["other_share"] == pytest.approx(1)
    assert "simd" in result["machine"]["cpu"] and result["loadavg"]["start"]
    table = out.with_suffix(".md").read_text()
    assert "| `fit` |" in table and "--quick run" in table
    assert table in capsys.readouterr().out


def test_infer_xla_quick_times_both_ways_in_fresh_processes(tmp_path, capsys):
    from benchmarks.infer_xla import main as infer_xla

    out = tmp_path / "infer_xla.json"
    assert infer_xla(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["quick"] and result["settings"] == {"size": 64, "slices": 2, "rounds": 1}
    assert sorted(r["way"] for r in result["runs"]) == ["auto", "plain"]
    for run in result["runs"]:
        assert run["first_s"] > 0 and run["next_ms"] > 0 and run["load_s"] > 0
    ways = result["summary"]["ways"]
    assert result["summary"]["xla_extra_first_s"] == pytest.approx(
        ways["auto"]["first_s"] - ways["plain"]["first_s"])
    table = out.with_suffix(".md").read_text()
    assert "plain graph (`mtl infer`)" in table and "XLA adds" in table
    assert table in capsys.readouterr().out


def test_weight_gradient_quick_times_both_ways_per_layer(tmp_path, capsys):
    from benchmarks.weight_gradient import main as weight_gradient

    out = tmp_path / "wgrad.json"
    assert weight_gradient(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    shapes = result["shapes"]
    names = {name for s in shapes for name in s["layers"]}
    assert "stage1_unit2_conv2" in names and "conv0" not in names  # stride 2 is left out
    assert all(s["kernel"][0] * s["kernel"][1] > 1 for s in shapes)
    for s in shapes:
        assert _positive(s["native_ms"]) and _positive(s["transposed_ms"]) and _positive(s["speedup"])
        assert s["max_relative_difference"] < 1e-3  # both ways compute the same gradient
        assert s["routed"] == (min(s["kernel"][2:]) >= 64)
    assert any(s["routed"] for s in shapes) and not all(s["routed"] for s in shapes)
    assert result["totals"]["routed_native_ms"] == pytest.approx(
        sum(s["native_ms"] * len(s["layers"]) for s in shapes if s["routed"]))
    table = out.with_suffix(".md").read_text()
    assert "| stage1_unit2_conv2 (+3) |" in table and "--quick run" in table
    assert table in capsys.readouterr().out


def test_fit_steps_times_whole_executions():
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.train_speed import fit_steps

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    data = tf.data.Dataset.from_tensor_slices((np.ones((8, 3)), np.ones((8, 1)))).batch(2).repeat()
    timed = fit_steps(model, data, warmup=2, steps=4, batch=2)
    assert len(timed["step_seconds"]) == 2 and _positive(timed["images_per_s"])
    assert int(model.optimizer.iterations) == 6
    with pytest.raises(ValueError, match="multiples of the model's steps_per_execution 2"):
        fit_steps(model, data, warmup=1, steps=4, batch=2)


@QUICK_RUN
def test_quick_run_has_every_section(quick_run):
    results, _, _ = quick_run
    assert results["quick"] is True
    assert results["errors"] == {}
    assert set(SECTIONS) <= set(results["sections"])
    machine = results["machine"]
    assert machine["cpu"]["model"] and machine["cpus_usable"] >= 1
    assert machine["versions"]["tensorflow"]
    assert "tf_intra_op" in machine["threads"]
    assert results["command"].startswith("python benchmarks/run.py --quick")


@QUICK_RUN
def test_quick_run_numbers_are_sane(quick_run):
    results, _, _ = quick_run
    s = results["sections"]
    conv = s["flops"]["conv_peak"]
    assert _positive(conv["peak_gflops"])
    assert conv["forward_backward_gflop"] == pytest.approx(3 * conv["forward_gflop"])
    assert len(conv["seconds"]["forward"]["raw"]) >= results["settings"]["repeats"]
    counted = s["flops"]["models"]["default"]
    assert _positive(counted["forward_flops_per_image"])
    # the profiler and the layer-by-layer count agree (convolutions dominate)
    assert counted["analytic_forward_gflop_per_image"] == pytest.approx(
        counted["forward_gflop_per_image"], rel=0.05)
    model = s["train"]["models"]["default"]
    for variant in ("pipeline", "memory", "naive"):
        ips = model["images_per_s"][variant]
        assert ips["n"] == results["settings"]["repeats"]
        assert all(_positive(v) for v in ips["raw"])
        assert len(model["runs"][variant][0]["step_seconds"]) == model["timed_steps"]
    for ratio in model["ratios"].values():
        if isinstance(ratio, dict):
            assert _positive(ratio["median"])
    for variant in ("pipeline", "naive"):
        assert all(_positive(v) for v in model["input_only_images_per_s"][variant]["raw"])
    # the ceiling of pipeline / naive is in-memory / naive, per round
    ips, ceiling = model["images_per_s"], model["ratios"]["memory_over_naive"]["raw"]
    assert ceiling == pytest.approx([m / n for m, n in zip(ips["memory"]["raw"], ips["naive"]["raw"])])
    if BF16:
        mixed = s["train"]["models"]["mixed"]
        assert mixed["config"]["precision"] == "mixed_bfloat16"
        assert all(_positive(v) for v in mixed["images_per_s"]["memory"]["raw"])
        assert (s["flops"]["models"]["mixed"]["forward_flops_per_image"]
                == counted["forward_flops_per_image"])
    eff = results["efficiency"]["models"]["default"]
    assert 0 < eff["memory"]["fraction_of_peak"] < 10
    infer = s["infer"]
    assert 0 < infer["slice_latency"]["median_ms"] <= infer["slice_latency"]["p95_ms"]
    assert infer["slice_latency"]["seconds"]["n"] == results["settings"]["latency_repeats"]
    assert _positive(infer["throughput"]["predict_slices_per_s"]["median"])
    assert infer["volume"]["slices"] == results["settings"]["volume_slices"]
    assert _positive(infer["volume"]["seconds"]["median"])
    # quick mode starts the memory children early, to overlap the other sections
    assert s["memory"]["started_early"] == ["infer", "train"]
    for part in ("train", "infer"):
        mem = s["memory"][part]
        assert mem["peak_source"] == "VmHWM"
        # peak of the child alone: above its RSS after imports, below the machine's memory
        assert mem["rss_after_imports_bytes"] < mem["peak_rss_bytes"]
        assert mem["peak_rss_gb"] < results["machine"]["memory_total_gb"]


@QUICK_RUN
def test_markdown_table_renders(quick_run):
    results, out, stdout = quick_run
    table = out.with_suffix(".md").read_text()
    assert table == markdown(results)
    assert table in stdout
    assert "QUICK MODE" in table
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| figure | value | target | status |")
    rows = headline_rows(results)
    assert len(lines) == len(rows) + 2
    assert all(ln.count(" | ") == 4 for ln in lines)
    for needle in ("mixed_bfloat16",) * BF16 + ("conv peak", "real pipeline", "pipeline / in-memory", "pipeline / naive",
                   "ceiling: in-memory / naive", "input only, no model", "achieved GFLOP/s", "file to mask", "slices/s", "volume", "peak RSS"):
        assert needle in table, needle
    assert "python benchmarks/run.py --quick" in table and results["started"][:10] in table


def test_footer_says_when_the_instruction_set_was_capped():
    from benchmarks.common import isa_cap_note, table_footer

    results = {"command": "python benchmarks/peers.py", "date": "2026-11-29T17:00:00",
               "loadavg": {"start": [0.1, 0.1, 0.1], "end": [0.2, 0.2, 0.2]},
               "machine": {"git": {"commit": "abc"}, "cpu": {"model": "Xeon", "simd": ["avx2"]},
                           "cpus_usable": 2, "isa_caps": {}}}
    assert "capped" not in "\n".join(table_footer(results, "float32", "x"))
    results["machine"]["isa_caps"] = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    footer = "\n".join(table_footer(results, "float32", "x"))
    assert "Instruction set capped (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)" in footer
    assert "emulation" in footer and isa_cap_note({}) == ""
