"""``benchmarks/peers.py``: mtl against the same network in PyTorch/MONAI, side by side.

The end-to-end ``--quick`` run needs the optional extra (``pip install -e ".[bench]"``: torch
and monai) and skips without it; the interleaving, the ratios and the error without the extra
are checked without it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import peers  # noqa: E402

MISSING = peers.missing_extra()
needs_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: the PyTorch peer needs the "
                          'optional extra, pip install -e ".[bench]"')


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _fake_child(calls):
    """A stand-in for the child processes: mtl twice as fast as the peer on every figure."""
    def measure(side, round_, flops):
        calls.append((side, round_, flops))
        speed = 2.0 if side == "mtl" else 1.0
        out = {"train_images_per_s": 10.0 * speed * (round_ + 1),
               "batch1_ms": 40.0 / speed / (round_ + 1),
               "batch_images_per_s": 30.0 * speed, "batch": 4,
               "versions": {"side": side}, "threads": {}, "what": side}
        if flops:
            out["flops"] = {"forward_per_image_conv_dense": 1_100 if side == "mtl" else 1_000}
            if side == "mtl":
                out["flops"]["inference_per_image_conv_dense"] = 990
            out["parameters"] = {"trainable": 500 if side == "mtl" else 400,
                                 "batchnorm_statistics": 10}
        return out
    return measure


def test_rounds_interleave_the_sides_and_ratios_are_mtl_speed_over_peer_speed():
    calls: list = []
    runs = peers.run_rounds(3, _fake_child(calls))
    assert [c[:2] for c in calls] == [("mtl", 0), ("peer", 0), ("mtl", 1), ("peer", 1),
                                      ("mtl", 2), ("peer", 2)]
    assert [c[2] for c in calls] == [True, True, False, False, False, False]  # FLOPs once
    summary = peers.summarise(runs)
    assert summary["sides"]["mtl"]["train_images_per_s"]["median"] == 40.0
    assert summary["sides"]["peer"]["batch1_ms"]["median"] == 20.0
    for figure in peers.FIGURES:  # latency too: peer ms / mtl ms, so > 1 is "mtl faster"
        assert summary["ratios"][figure]["median"] == pytest.approx(2.0)
        assert summary["ratios"][figure]["raw"] == pytest.approx([2.0] * 3)
    flops = summary["comparison"]["forward_flops_conv_dense"]
    assert flops["mtl_over_peer"] == pytest.approx(1.1) and flops["same"] is False
    assert summary["comparison"]["parameters"]["trainable"]["mtl_over_peer"] == 1.25
    gflops = summary["comparison"]["train_gflop_per_s"]
    assert gflops["mtl_over_peer"] == pytest.approx(2.0 * 1.1)
    # inference as each side runs it: mtl's inference copy against the peer's forward
    inference = summary["comparison"]["inference_flops_conv_dense"]
    assert (inference["mtl"], inference["peer"]) == (990, 1_000)
    assert summary["comparison"]["inference_gflop_per_s"]["mtl_over_peer"] == pytest.approx(
        2.0 * 0.99)


def test_without_the_extra_it_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(peers, "missing_extra", lambda: ["torch", "monai"])
    assert peers.main(["--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "torch and monai" in err and '.[bench]' in err


def test_arguments():
    quick = peers.parse_args(["--quick"])
    assert (quick.size, quick.batch, quick.rounds) == (32, 2, 1)
    full = peers.parse_args(["--rounds", "5"])
    assert (full.size, full.batch, full.rounds) == (128, 16, 5)
    assert full.threads == peers.usable_cpus() >= 1
    with pytest.raises(SystemExit):
        peers.parse_args(["--size", "100"])


def test_set_passes_train_settings_to_the_mtl_child_only():
    args = peers.parse_args(["--quick", "--set", "train.jit_compile=true",
                             "--set", "train.steps_per_execution=2"])
    cmd = peers.child_command("mtl", args, flops=False)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"] == [
        "train.jit_compile=true", "train.steps_per_execution=2"]
    assert "--set" not in peers.child_command("peer", args, flops=False)
    assert peers.parse_args(["--quick"]).set == []
    with pytest.raises(SystemExit):  # the networks must stay the same
        peers.parse_args(["--set", "model.backbone=resnet34"])


@needs_extra
def test_quick_run_reports_both_sides_and_their_ratios(tmp_path):
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, "benchmarks/peers.py", "--quick", "--threads", "1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert results["command"] == f"python benchmarks/peers.py --quick --threads 1 --out {out}"
    assert results["settings"]["order"] == ["mtl1", "peer1"]
    assert results["settings"]["precision"] == "float32"
    assert [r["side"] for r in results["runs"]] == ["mtl", "peer"]
    for side in peers.SIDES:
        for figure in peers.FIGURES:
            assert _positive(results["sides"][side][figure]["median"]), (side, figure)
        assert _positive(results["flops"][side]["forward_per_image"])
        assert _positive(results["parameters"][side]["trainable"])
    mtl, peer = results["runs"]
    ratios = results["ratios"]
    assert ratios["train_images_per_s"]["median"] == pytest.approx(
        mtl["train_images_per_s"] / peer["train_images_per_s"])
    assert ratios["batch1_ms"]["median"] == pytest.approx(peer["batch1_ms"] / mtl["batch1_ms"])
    assert ratios["batch_images_per_s"]["median"] == pytest.approx(
        mtl["batch_images_per_s"] / peer["batch_images_per_s"])
    assert peer["threads"]["torch_intra_op"] == 1
    assert "weight gradients transposed" in mtl["what"] or "weight gradients native" in mtl["what"]
    assert results["versions"]["peer"]["torch"] and results["versions"]["mtl"]["tensorflow"]
    # the same network family: FLOPs and parameters within a few percent of each other
    comparison = results["comparison"]
    assert 0.9 < comparison["forward_flops_conv_dense"]["mtl_over_peer"] < 1.15
    # the inference copy computes the decoder's upsampled convolutions with fewer FLOPs
    assert (comparison["inference_flops_conv_dense"]["mtl"]
            < comparison["forward_flops_conv_dense"]["mtl"])
    assert 0.9 < comparison["parameters"]["trainable"]["mtl_over_peer"] < 1.1
    table = out.with_suffix(".md").read_text()
    assert "| figure | mtl | MONAI peer | mtl / peer (speed) |" in table
    assert "--quick run" in table and results["command"] in table
    assert "| inference GFLOP per image as run" in table and "achieved GFLOP/s |" in table
    assert table in proc.stdout
