"""What a new user meets first (issue 14, item 9): a quiet start, readable overlays, epochs
counted from 1 everywhere, numbers stored as numbers, a named best metric, outputs in their
own folders, and README commands that work from a fresh clone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- TensorFlow start-up


def test_tensorflow_start_up_through_the_cli_prints_no_cuinit_or_absl_noise(tmp_path):
    """On a machine without an NVIDIA GPU every command used to print absl's preamble, oneDNN
    and CUDA-stub info lines and an ERROR line "failed call to cuInit"."""
    code = ("import os, mtl.cli, tensorflow as tf; tf.config.list_physical_devices(); "
            "print('CVD', os.environ.get('CUDA_VISIBLE_DEVICES'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    for noise in ("cuInit", "absl::InitializeLog", "oneDNN", "cudart_stub"):
        assert noise not in done.stderr, done.stderr
    # GPUs are never hidden: CUDA_VISIBLE_DEVICES is left as it was
    assert f"CVD {os.environ.get('CUDA_VISIBLE_DEVICES')}" in done.stdout


def test_only_noise_is_filtered_and_real_messages_are_kept(capfd):
    from mtl.quiet import filtered_stderr, is_noise

    info = "I0000 00:00:1795909692.566082   28968 port.cc:153] oneDNN custom operations are on."
    warning = "W0000 00:00:1795909692.566082   28968 x.cc:1] something odd"
    cuinit = ("E0000 00:00:1795909762.599360   30179 cuda_platform.cc:52] failed call to "
              "cuInit: INTERNAL: CUDA error")
    error = "E0000 00:00:1795909762.599360   30179 kernel.cc:9] a real error"
    assert is_noise(info, 2, True) and not is_noise(info, 0, False)
    assert is_noise(warning, 2, False) and not is_noise(warning, 1, False)
    assert is_noise(cuinit, 2, gpu_possible=False)
    assert not is_noise(cuinit, 2, gpu_possible=True)  # a GPU machine: a real problem
    assert not is_noise(error, 2, False) and not is_noise("Traceback (most recent call", 2, False)
    with filtered_stderr(2, False):
        os.write(2, f"{info}\n{cuinit}\n{error}\nplain text\n".encode())
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "cuInit" not in err
    assert "a real error" in err and "plain text" in err


# --------------------------------------------------------------------------- overlays


def _bright_row_runs(gray: np.ndarray, rows: slice) -> list[int]:
    """Heights of runs of rows holding bright (text) pixels within ``rows``."""
    lit = (gray[rows] > 128).any(axis=1)
    runs, n = [], 0
    for value in lit:
        if value:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


@pytest.mark.parametrize("gradcam", [False, True])
def test_overlay_header_stays_readable_when_the_page_scales_it(tmp_path, gradcam):
    """The page shows an overlay at most 600 px wide; long header lines used to widen the
    picture so much that its text was about 7-10 px high there. Now it wraps, and its size
    grows with the picture: >= 14 px glyphs on the page."""
    from PIL import Image

    from mtl.infer.overlay import PAGE_WIDTH_PX, render_overlay

    image = np.tile(np.linspace(0.0, 1.0, 240, dtype=np.float32), (240, 1))  # mid-grey centre
    mask = np.zeros((240, 240), bool)
    mask[180:220, 20:60] = True
    lines = ["brain_t1_contrast: meningioma (0.95)   tumor YES (p=1.00)   volume 188.50 mL",
             "slice 81/188: presence 0.98  no_tumor 0.01  glioma 0.02  meningioma 0.95  "
             "pituitary 0.02",
             "tumor area on this slice 1600 px = 1600.0 mm²   hemisphere left"]
    path = render_overlay(tmp_path / "o.png", image, mask, lines=lines,
                          heat=image if gradcam else None)
    gray = np.asarray(Image.open(path).convert("L")).astype(int)
    height, width = gray.shape
    scale = min(1.0, PAGE_WIDTH_PX / width)
    # the header: the rows above the picture (the first row that is grey all across the centre)
    centre = width // 2 if not gradcam else width // 4
    top = int(np.argmax((gray[:, centre - 50: centre + 50] > 60).all(axis=1)))
    runs = _bright_row_runs(gray, slice(0, top))
    assert len(runs) >= 3
    assert runs[0] * scale >= 14, (runs, width)  # the bold title line, with (parentheses)
    assert np.median(runs) * scale >= 13, (runs, width)
    assert not (gray[:top, -3:] > 128).any(), "header text runs off the right edge"


# --------------------------------------------------------------------------- training outputs


@pytest.fixture(scope="module")
def tiny_run(tiny_phantom_run):
    """2 epochs of 2 steps on phantoms (the suite's shared run, see conftest.py)."""
    return tiny_phantom_run


def test_history_counts_epochs_from_1_and_metrics_json_holds_numbers(tiny_run):
    import csv

    with (tiny_run.run_dir / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["epoch"] for row in rows] == ["1", "2"]  # as the console says "Epoch 1/2"
    assert [r["epoch"] for r in tiny_run.history] == [1, 2]
    state = json.loads((tiny_run.run_dir / "state.json").read_text())
    assert state["epoch"] == 2 and state["best_epoch"] in (1, 2)
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    last = metrics["last"]
    assert last["epoch"] == 2 and isinstance(last["epoch"], int)
    assert all(isinstance(v, (int, float)) or v is None for v in last.values()), last
    assert isinstance(last["loss"], float) and isinstance(last["seconds"], float)


def test_the_best_value_names_its_metric(tiny_run):
    from mtl.train_command import best_line

    line = best_line(tiny_run)
    monitor = json.loads((tiny_run.run_dir / "state.json").read_text())["monitor"]
    assert monitor == "val_loss"
    assert re.fullmatch(rf"2 epochs done; best {monitor} \d+\.\d{{4}} at epoch [12]", line), line


def test_an_old_0_based_history_is_read_1_based_and_resumes_in_order(tmp_path, monkeypatch):
    """Runs written before epochs counted from 1: reading shifts them; the next epoch appended
    after a resume follows on; the plot's x axis starts at 1 for both kinds of file."""
    import mtl.figures as plots
    from mtl.runfolder import append_history, read_history

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss,seconds\n0,1.5,1.6,10.0\n1,1.2,1.4,9.5\n")
    rows = read_history(path)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_loss"] == 1.4
    append_history(path, {"epoch": 3, "loss": 1.0, "val_loss": 1.1, "seconds": 9.0})
    assert path.read_text().splitlines()[1:] == ["1,1.5,1.6,10.0", "2,1.2,1.4,9.5",
                                                 "3,1.0,1.1,9.0"]
    seen = []
    monkeypatch.setattr(plots, "save_figure",
                        lambda fig, out: seen.append(list(fig.axes[0].lines[0].get_xdata())))
    plots.plot_history(path, tmp_path / "a.png")
    legacy = tmp_path / "old.csv"
    legacy.write_text("epoch,loss\n0,1.5\n1,1.2\n")
    plots.plot_history(legacy, tmp_path / "b.png")
    assert seen == [[1, 2, 3], [1, 2]]


# --------------------------------------------------------------------------- data inspect


def test_data_inspect_writes_its_mosaic_under_runs_inspect_and_says_where(tmp_path,
                                                                         monkeypatch):
    from mtl.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["data", "inspect", "phantoms", "--option", "n=6",
                                       "--option", "size=64", "-n", "4"])
    assert result.exit_code == 0, result.output
    mosaic = tmp_path / "runs" / "inspect" / "phantoms_mosaic.png"
    assert mosaic.is_file()
    assert f"mosaic: {mosaic}" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # nothing in the current folder


# --------------------------------------------------------------------------- README


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_quick_start_infers_on_a_slice_make_demo_writes(tmp_path):
    """The README's first `mtl infer` names a slice that `make demo` writes (it used to name
    some_slice.png, which nobody had). The Makefile's command runs from a fresh clone."""
    readme = _readme()
    assert "some_slice.png" not in readme
    command = re.search(r"`\.venv/bin/mtl infer runs/demo/best\.keras (\S+) ", readme)
    assert command, "the quick start's mtl infer command"
    slice_path = command.group(1)
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "mtl train --config experiments/demo.yaml" in demo
    line = next(line for line in demo.splitlines() if "write_example_slice" in line)
    assert slice_path in line
    code = re.search(r'-c "(.+)"', line).group(1)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    with Image.open(tmp_path / slice_path) as image:
        assert image.mode == "L" and min(image.size) >= 128
        assert np.asarray(image).std() > 10  # a head, not a blank picture


def test_the_readme_names_no_model_outside_the_repository_and_an_honest_demo_time():
    readme = _readme()
    performance = readme.split("\n## Performance", 1)[1].split("\n## ", 1)[0]
    for model in re.findall(r"[\w./<>-]+\.keras", performance):
        assert model.startswith("runs/<name>/"), model
    quick_start = readme.split("\n## Install", 1)[0]
    assert "~2 min" not in quick_start  # it took 8 minutes of training on a busy machine
    assert re.search(r"make demo .*\(2–8 min on 2 CPU cores", quick_start)
