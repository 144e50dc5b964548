"""Training end to end on phantoms: loss falls, held-out Dice beats chance, runs resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from mtl.config import ConfigError, load_config
from mtl.data.pipeline import open_sources
from mtl.evaluate.predict import dice_per_image, predict_split
from mtl.train import cosine_learning_rate, read_history, resume_config, train

TINY = [
    "data.image_size=64", "model.decoder_filters=[32,32,16,16,8]", "model.head_units=32",
    "model.bn_momentum=0.9", "train.batch_size=16", "train.learning_rate=0.002",
    "data.split={train: 0.6, val: 0.2, test: 0.2}",
]


def tiny_config(tmp_path, *extra):
    return load_config(overrides=TINY + [f"train.runs_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    config = tiny_config(tmp, "name=learn", "train.epochs=7",
                         "data.sources=[{format: phantoms, options: {n: 200, size: 64, seed: 5}}]")
    return config, train(config, verbose=0)


def test_run_folder_holds_everything(trained):
    _, result = trained
    for name in ("config.yaml", "splits.json", "data_summary.json", "history.csv",
                 "state.json", "last.keras", "best.keras", "metrics.json", "plots/curves.png"):
        assert (result.run_dir / name).is_file(), name
    assert json.loads((result.run_dir / "state.json").read_text())["epoch"] == 7
    assert len(result.history) == 7
    copies = json.loads((result.run_dir / "data_summary.json").read_text())["_near_copies"]
    assert copies["cross_dataset_groups"] == 0  # one dataset
    assert copies["split_groups"] >= 100


def test_training_lowers_the_loss(trained):
    _, result = trained
    losses = [float(r["loss"]) for r in result.history]
    assert np.mean(losses[-2:]) < 0.75 * np.mean(losses[:2])
    val = [float(r["val_loss"]) for r in result.history]
    assert min(val[-3:]) < val[0]


def test_held_out_dice_beats_chance(trained):
    config, result = trained
    model = keras.models.load_model(result.run_dir / "best.keras")
    sources = open_sources(config)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    by_case = {r.case_id: i for i, r in enumerate(sources[0].records)}
    sources[0].splits = {k: [by_case[c] for c in v] for k, v in splits["phantoms"]["case_ids"].items()}
    pred = predict_split(model, sources, config, "test")
    tumor = pred.targets["mask"].reshape(len(pred.case_ids), -1).max(1) > 0
    assert tumor.sum() >= 10
    dice = dice_per_image(pred.targets["mask"][tumor], pred.outputs["mask"][tumor]).mean()
    # chance: a prediction that marks every pixel as tumor
    chance = dice_per_image(pred.targets["mask"][tumor], np.ones_like(pred.outputs["mask"][tumor])).mean()
    assert chance < 0.1
    assert dice > 0.4, f"held-out Dice {dice:.3f} (chance {chance:.3f})"


def test_seed_makes_runs_reproducible(tiny_phantom_run):
    """A second run with the shared run's config (conftest.py) gives the same splits and the
    same first-epoch loss, in a new folder."""
    a = tiny_phantom_run
    config = load_config(a.run_dir / "config.yaml", ["train.epochs=1"])
    b = train(config, verbose=0)
    assert b.run_dir.name == "tiny2"  # never overwrites
    assert json.loads((a.run_dir / "splits.json").read_text()) == json.loads(
        (b.run_dir / "splits.json").read_text())
    la, lb = float(a.history[0]["loss"]), float(b.history[0]["loss"])
    assert la == pytest.approx(lb, rel=1e-3)


def test_resume_after_a_killed_run_continues_from_the_saved_epoch(tmp_path):
    """A real `mtl train` process is SIGKILLed mid-run; `--resume` picks up where it stopped."""
    cmd = [sys.executable, "-m", "mtl.cli", "train", "--name", "killed", "--quiet",
           "--runs-dir", str(tmp_path), "--epochs", "4",
           "--set", "data.sources=[{format: phantoms, options: {n: 60, size: 64}}]",
           "--set", "train.steps_per_epoch=3", "--set", "train.val_steps=1"]
    for item in TINY:
        cmd += ["--set", item]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            state = run_dir / "state.json"
            if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
                break
            if proc.poll() is not None:
                pytest.fail("training exited before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("no epoch finished within 240 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = json.loads((run_dir / "state.json").read_text())["epoch"]
    assert 1 <= saved < 4
    before = read_history(run_dir / "history.csv")[:saved]
    saved_iterations = int(keras.models.load_model(run_dir / "last.keras").optimizer.iterations)
    assert saved_iterations == 3 * saved

    config = load_config(run_dir / "config.yaml")
    result = train(config, run_dir=run_dir, resume=True, verbose=0)
    history = read_history(run_dir / "history.csv")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # counted from 1, as on the console
    assert history[:saved] == before  # finished epochs are kept as they were
    model = keras.models.load_model(run_dir / "last.keras")
    assert int(model.optimizer.iterations) == 3 * 4  # optimizer state carried over
    assert result.epochs_done == 4
    # a finished run resumed again does nothing
    again = train(config, run_dir=run_dir, resume=True, verbose=0)
    assert again.epochs_done == 4 and len(read_history(run_dir / "history.csv")) == 4


def test_uncertainty_weighting_trains_under_a_cosine_schedule(tmp_path):
    """Two options in one short run (each run costs a model build): Kendall weighting learns its
    log-variances, and the cosine schedule sets each epoch's learning rate."""
    config = tiny_config(tmp_path, "loss.uncertainty=true", "train.epochs=3",
                         "train.steps_per_epoch=2", "train.val_steps=1",
                         "train.lr_schedule=cosine", "train.lr_min_fraction=0.1",
                         "data.sources=[{format: phantoms, options: {n: 40, size: 64}}]")
    result = train(config, verbose=0)
    model = keras.models.load_model(result.run_dir / "last.keras")
    assert np.abs(model.multitask_loss.log_vars.numpy()[:3]).max() > 0  # learned
    rates = [float(row["learning_rate"]) for row in read_history(result.run_dir / "history.csv")]
    # 0.002 at the first epoch, half-way down the cosine at the second, 10% at the last
    np.testing.assert_allclose(rates, [0.002, 0.002 * 0.55, 0.0002], rtol=1e-5)
    assert cosine_learning_rate(1, base=1.0, epochs=3, min_fraction=0.0) == pytest.approx(0.5)


def br35h_with_a_bad_file(root):
    """A small Br35H-layout folder whose no/no99.jpg is not an image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, prefix, n in (("yes", "y", 6), ("no", "no", 10)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(
                root / folder / f"{prefix}{i}.jpg")
    (root / "no" / "no99.jpg").write_bytes(b"this is not a JPEG")
    return root


def test_bad_data_is_found_before_the_first_epoch(tmp_path):
    from mtl.data.adapters import DataError

    root = br35h_with_a_bad_file(tmp_path / "br35h")
    source = f"data.sources=[{{format: br35h, root: {root}, options: {{dedup: false}}}}]"
    args = ("train.epochs=1", "train.steps_per_epoch=1", "train.val_steps=1", source)
    with pytest.raises(DataError, match="no99.jpg"):
        train(tiny_config(tmp_path, "name=strict", *args), verbose=0)
    assert not (tmp_path / "strict" / "history.csv").exists()  # failed before training
    result = train(tiny_config(tmp_path, "name=lenient", "data.on_error=skip", *args), verbose=0)
    summary = json.loads((result.run_dir / "metrics.json").read_text())
    assert summary["skipped_at_preflight"] == 1
    assert "no99.jpg" in summary["skipped_examples"][0][0]
    assert result.epochs_done == 1


def test_resume_trusts_the_checkpoint_and_respects_early_stopping(tmp_path, tiny_phantom_run):
    args = ("train.steps_per_epoch=2", "train.val_steps=1",
            "data.sources=[{format: phantoms, options: {n: 40, size: 64}}]")
    # a copy of the suite's shared run (2 epochs of 2 steps, conftest.py), as if killed after
    # last.keras was saved but before state.json said so
    run_dir = tmp_path / "r"
    shutil.copytree(tiny_phantom_run.run_dir, run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] == 2
    state["epoch"] = 1
    (run_dir / "state.json").write_text(json.dumps(state))
    config = resume_config(run_dir, ["train.epochs=3"])
    result = train(config, run_dir=run_dir, resume=True, verbose=0)
    assert [r["epoch"] for r in read_history(run_dir / "history.csv")] == [1, 2, 3]
    assert int(keras.models.load_model(run_dir / "last.keras").optimizer.iterations) == 3 * 2
    assert result.epochs_done == 3

    # a run that early stopping ended stays finished when resumed with the same epochs
    stop = tiny_config(tmp_path, "name=es", "train.epochs=6", "train.early_stopping_patience=1",
                       "train.monitor=loss", "train.monitor_mode=max", *args)
    es_dir = train(stop, verbose=0).run_dir
    es_state = json.loads((es_dir / "state.json").read_text())
    assert es_state["stopped_early"] and es_state["epoch"] < 6
    again = train(stop, run_dir=es_dir, resume=True, verbose=0)
    assert again.epochs_done == es_state["epoch"]
    assert len(read_history(es_dir / "history.csv")) == es_state["epoch"]


def test_resume_refuses_overrides_outside_train(tmp_path):
    from mtl.config import ConfigError
    from mtl.train import resume_config

    config = tiny_config(tmp_path, "name=o", "train.epochs=1")
    run_dir = tmp_path / "o"  # resume_config reads only the run's config.yaml
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config.to_yaml())
    with pytest.raises(ConfigError, match="only train"):
        resume_config(run_dir, ["data.classes=[no_tumor, glioma]"])
    assert resume_config(run_dir, ["train.epochs=4"]).train.epochs == 4


def test_mixed_bfloat16_trains_resumes_and_saves_a_float32_predicting_model(tmp_path):
    config = tiny_config(tmp_path, "train.precision=mixed_bfloat16", "train.epochs=2",
                         "train.steps_per_epoch=3", "train.val_steps=1",
                         "data.sources=[{format: phantoms, options: {n: 40, size: 64}}]")
    result = train(config, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    history = read_history(result.run_dir / "history.csv")
    assert all(np.isfinite(float(row["loss"])) for row in history)
    # resuming rebuilds the model under the run's precision
    config.train.epochs = 3
    again = train(config, run_dir=result.run_dir, resume=True, verbose=0)
    assert again.epochs_done == 3
    # outside training the saved model computes in float32
    model = keras.models.load_model(result.run_dir / "last.keras", compile=False)
    convs = [layer for layer in model.net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convs} == {"float32"}
    x = np.random.default_rng(0).random((2, 64, 64, 1), np.float32)
    out = model(x, training=False)
    assert all("float32" in str(v.dtype) for v in out.values())


def test_mixed_precision_computes_in_bfloat16_with_float32_heads_and_loss(tmp_path):
    from mtl.train import build_model

    model = build_model(tiny_config(tmp_path, "train.precision=mixed_bfloat16"))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.net.get_layer("final_conv").compute_dtype == "float32"
    body = [layer for layer in model.net.layers
            if isinstance(layer, keras.layers.Conv2D) and layer.name != "final_conv"]
    assert body and {layer.compute_dtype for layer in body} == {"bfloat16"}
    assert {layer.variable_dtype for layer in body} == {"float32"}
    assert model.multitask_loss.compute_dtype == "float32"
    out = model(np.random.default_rng(0).random((2, 64, 64, 1), np.float32), training=False)
    assert all("float32" in str(v.dtype) for v in out.values())
    with pytest.raises(Exception, match="train.precision"):
        tiny_config(tmp_path, "train.precision=float8")


def test_training_with_worker_processes(tmp_path):
    config = tiny_config(tmp_path, "data.workers=2", "train.epochs=2", "train.steps_per_epoch=3",
                         "train.val_steps=1",
                         "data.sources=[{format: phantoms, options: {n: 40, size: 64}}]")
    result = train(config, verbose=0)
    history = read_history(result.run_dir / "history.csv")
    assert len(history) == 2 and all(np.isfinite(float(r["val_loss"])) for r in history)


def test_unknown_learning_rate_schedule_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="lr_schedule"):
        tiny_config(tmp_path, "train.lr_schedule=step")
    with pytest.raises(ConfigError, match="lr_min_fraction"):
        tiny_config(tmp_path, "train.lr_min_fraction=1.5")
