"""Training end to end on phantoms: loss falls, held-out Dice beats chance, runs resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from mtl.config import ConfigError, load_config
from mtl.data.pipeline import open_sources
from mtl.evaluate.predict import dice_per_image, predict_split
from mtl.runfolder import read_history
from mtl.train import cosine_learning_rate, resume_config, train

from conftest import LEARNING as TINY  # tiny networks that learn within a few epochs


def tiny_config(tmp_path, *extra):
    return load_config(overrides=TINY + [f"train.runs_dir={tmp_path}", *extra])


@pytest.fixture
def killed_run(tmp_path_factory):
    """A real `mtl train` process (4 epochs of 3 steps), SIGKILLed by a watcher thread as soon
    as state.json says an epoch is saved: (process, run folder, watcher, outcome).

    Started by the test that resumes it, not earlier: under pytest-xdist a module-wide fixture
    would start it in every worker process that runs any test of this module.

    The run also trains in mixed bfloat16 with Kendall's uncertainty weighting
    (loss.uncertainty), checked after its resume (each run costs a model build and a trace, the
    largest part of the suite's time). 32 px and batch 4: bfloat16 is emulated, slowly, on CPUs
    without bfloat16 instructions (most CI machines)."""
    tmp = tmp_path_factory.mktemp("killed")
    cmd = [sys.executable, "-m", "mtl.cli", "train", "--name", "killed", "--quiet",
           "--runs-dir", str(tmp), "--epochs", "4",
           "--set", "data.sources=[{format: phantoms, options: {n: 60, size: 64}}]",
           "--set", "train.steps_per_epoch=3", "--set", "train.val_steps=1"]
    for item in TINY + ["data.image_size=32", "train.batch_size=4",
                        "train.precision=mixed_bfloat16", "loss.uncertainty=true"]:
        cmd += ["--set", item]
    run_dir = tmp / "killed"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    outcome: dict[str, str] = {}

    def saved_epoch() -> int:
        try:
            return int(json.loads((run_dir / "state.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError):  # not written yet
            return 0

    def watch():
        try:
            deadline = time.time() + 900  # generous: a busy machine; it ends at epoch 1
            while time.time() < deadline:
                if saved_epoch() >= 1:
                    os.kill(proc.pid, signal.SIGKILL)
                    outcome["killed"] = "after an epoch"
                    return
                if proc.poll() is not None:
                    outcome["error"] = "training exited before it could be killed"
                    return
                time.sleep(0.2)
            outcome["error"] = "no epoch finished within 900 s"
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = f"watcher failed: {exc!r}"
        proc.kill()

    watcher = threading.Thread(target=watch, name="kill-mtl-train", daemon=True)
    watcher.start()
    try:
        yield proc, run_dir, watcher, outcome
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        watcher.join()


@pytest.fixture(scope="module")
def trained(learned_run):
    """7 epochs on 240 phantoms of two datasets (conftest.py; tests/test_evaluate.py evaluates
    the same run)."""
    return learned_run


@pytest.mark.xdist_group("learned_run")
def test_run_folder_holds_everything(trained):
    _, result = trained
    for name in ("config.yaml", "splits.json", "data_summary.json", "history.csv",
                 "state.json", "last.keras", "best.keras", "metrics.json", "plots/curves.png"):
        assert (result.run_dir / name).is_file(), name
    assert json.loads((result.run_dir / "state.json").read_text())["epoch"] == 7
    assert len(result.history) == 7
    copies = json.loads((result.run_dir / "data_summary.json").read_text())["_near_copies"]
    assert copies["cross_dataset_groups"] == 0  # phantoms of two seeds share no near-copies
    assert copies["split_groups"] >= 100


@pytest.mark.xdist_group("learned_run")
def test_training_lowers_the_loss(trained):
    _, result = trained
    losses = [float(r["loss"]) for r in result.history]
    assert np.mean(losses[-2:]) < 0.75 * np.mean(losses[:2])
    val = [float(r["val_loss"]) for r in result.history]
    assert min(val[-3:]) < val[0]


@pytest.mark.xdist_group("learned_run")
def test_held_out_dice_beats_chance(trained):
    config, result = trained
    model = keras.models.load_model(result.run_dir / "best.keras")
    sources = open_sources(config)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    assert [s.name for s in sources] == ["phantoms", "phantoms#1"]
    for source in sources:
        by_case = {r.case_id: i for i, r in enumerate(source.records)}
        source.splits = {k: [by_case[c] for c in v]
                         for k, v in splits[source.name]["case_ids"].items()}
    pred = predict_split(model, sources, config, "test")
    tumor = pred.targets["mask"].reshape(len(pred.case_ids), -1).max(1) > 0
    assert tumor.sum() >= 10
    dice = dice_per_image(pred.targets["mask"][tumor], pred.outputs["mask"][tumor]).mean()
    # chance: a prediction that marks every pixel as tumor
    chance = dice_per_image(pred.targets["mask"][tumor], np.ones_like(pred.outputs["mask"][tumor])).mean()
    assert chance < 0.1
    # the shared run reaches 0.66-0.82 (seeds 0-2, conftest.py) against a chance of about 0.03
    assert dice > 0.4, f"held-out Dice {dice:.3f} (chance {chance:.3f})"


@pytest.mark.xdist_group("tiny_variant_run")
def test_seed_makes_runs_reproducible_with_worker_processes_and_a_cosine_schedule(
        tiny_phantom_run, tiny_variant_run):
    """A second run with the shared run's config (conftest.py) gives the same splits and the
    same first-epoch loss, in a new folder.

    The second run (conftest.py) also checks worker processes (data.workers), which must give
    the same batches as the shared run's tf.data threads, and the cosine schedule, whose first
    epoch trains at the base rate as the shared run's plateau schedule does (it also runs under
    MirroredStrategy on one device: tests/test_distribute.py)."""
    a = tiny_phantom_run
    config, b = tiny_variant_run
    assert b.run_dir.name == "tiny2"  # never overwrites
    assert json.loads((a.run_dir / "splits.json").read_text()) == json.loads(
        (b.run_dir / "splits.json").read_text())
    la, lb = float(a.history[0]["loss"]), float(b.history[0]["loss"])
    assert la == pytest.approx(lb, rel=1e-3), (
        "same seed, same first-epoch loss (tf.data threads in the shared run, 2 worker "
        "processes, a cosine schedule and MirroredStrategy on one device in the second)")
    # worker processes: every epoch trained and validated
    history = read_history(b.run_dir / "history.csv")
    assert len(history) == 3 and all(np.isfinite(float(r["val_loss"])) for r in history), (
        f"training with data.workers=2: {history}")
    # cosine: the base rate at the first epoch, half-way down at the second, 10% at the last
    base = config.train.learning_rate
    rates = [float(row["learning_rate"]) for row in history]
    np.testing.assert_allclose(rates, [base, base * 0.55, base * 0.1], rtol=1e-5,
                               err_msg="learning rates of a 3-epoch cosine schedule")
    assert cosine_learning_rate(1, base=1.0, epochs=3, min_fraction=0.0) == pytest.approx(0.5)
    # the budget (600 min) held every epoch, and the run folder says so
    state = json.loads((b.run_dir / "state.json").read_text())
    metrics = json.loads((b.run_dir / "metrics.json").read_text())
    assert state["epochs_planned"] == metrics["epochs_planned"] == 3
    assert metrics["time_budget"]["minutes"] == 600 and not metrics["time_budget"]["stopped"]
    assert 0 < metrics["time_budget"]["seconds_used"] < 600 * 60


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


def br35h_source(root):
    return f"data.sources=[{{format: br35h, root: {root}, options: {{dedup: false}}}}]"


@pytest.fixture(scope="module")
def lenient_run(tmp_path_factory):
    """One run on a Br35H folder with a file that is not an image, skipped
    (data.on_error=skip), which early stopping ends (monitor loss, higher is better, patience
    1: it stops at the first epoch whose loss does not rise). Two behaviours checked on one
    run: each run costs a model build and a trace, the largest part of the suite's time."""
    tmp = tmp_path_factory.mktemp("lenient")
    root = br35h_with_a_bad_file(tmp / "br35h")
    config = tiny_config(tmp, "name=lenient", "data.on_error=skip", "train.epochs=6",
                         "train.steps_per_epoch=1", "train.val_steps=1",
                         "train.early_stopping_patience=1", "train.monitor=loss",
                         "train.monitor_mode=max", br35h_source(root))
    return tmp, root, config, train(config, verbose=0)


def test_bad_data_is_found_before_the_first_epoch(lenient_run):
    from mtl.data.adapters import DataError

    tmp, root, _, result = lenient_run
    args = ("train.epochs=1", "train.steps_per_epoch=1", "train.val_steps=1", br35h_source(root))
    with pytest.raises(DataError, match="no99.jpg"):
        train(tiny_config(tmp, "name=strict", *args), verbose=0)
    assert not (tmp / "strict" / "history.csv").exists()  # failed before training
    # data.on_error=skip: the same folder trains, the bad file counted and named
    summary = json.loads((result.run_dir / "metrics.json").read_text())
    assert summary["skipped_at_preflight"] == 1
    assert "no99.jpg" in summary["skipped_examples"][0][0]
    assert result.epochs_done >= 1 and len(read_history(result.run_dir / "history.csv")) >= 1


def test_resume_respects_early_stopping(lenient_run):
    """A run that early stopping ended stays finished when resumed with the same epochs."""
    _, _, config, result = lenient_run
    es_dir = result.run_dir
    es_state = json.loads((es_dir / "state.json").read_text())
    assert es_state["stopped_early"] and es_state["epoch"] < 6, f"early stopping: {es_state}"
    assert result.epochs_done == es_state["epoch"]
    again = train(config, run_dir=es_dir, resume=True, verbose=0)
    assert again.epochs_done == es_state["epoch"]
    assert len(read_history(es_dir / "history.csv")) == es_state["epoch"]


def test_resume_trusts_the_checkpoint(tmp_path, tiny_phantom_run):
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


def test_unknown_learning_rate_schedule_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="lr_schedule"):
        tiny_config(tmp_path, "train.lr_schedule=step")
    with pytest.raises(ConfigError, match="lr_min_fraction"):
        tiny_config(tmp_path, "train.lr_min_fraction=1.5")


def test_refit_trains_without_validation_on_the_val_patients(tmp_path):
    """data.refit: the run trains on train + val (val empty in splits.json, test as a plain
    run's), has no validation, picks best.keras on the training metric the val_ monitor
    falls back to, and leaves the model uncalibrated (no split to fit temperatures on)."""
    from mtl.data.splits import split_records
    from mtl.model.card import model_card

    config = tiny_config(tmp_path, "data.refit=true", "name=refit", "train.epochs=1",
                         "train.steps_per_epoch=2", "train.monitor=val_dice",
                         "train.monitor_mode=max", "data.link_copies=false",
                         "data.sources=[{format: phantoms, options: {n: 40, size: 64}}]")
    result = train(config, verbose=0)
    assert result.epochs_done == 1 and result.best_epoch == 1
    assert not [k for k in result.history[0] if k.startswith("val_")]
    splits = json.loads((result.run_dir / "splits.json").read_text())["phantoms"]["case_ids"]
    records = open_sources(config)[0].records
    plain = split_records(records, config.data.split, seed=config.seed)
    assert splits["val"] == [] and plain["val"]
    assert sorted(splits["test"]) == sorted(records[i].case_id for i in plain["test"])
    assert sorted(splits["train"]) == sorted(
        records[i].case_id for i in plain["train"] + plain["val"])
    assert json.loads((result.run_dir / "data_summary.json").read_text())["_refit"] is True
    card = model_card(keras.models.load_model(result.run_dir / "best.keras", compile=False))
    assert card["calibration"] == {"presence_temperature": 1.0, "type_temperature": 1.0,
                                   "split": None}


def test_resume_after_a_killed_run_continues_from_the_saved_epoch(killed_run):
    """A real `mtl train` process is SIGKILLed mid-run (the fixture above); `--resume` picks up
    where it stopped. The run is in mixed bfloat16 with uncertainty weighting: resuming must
    rebuild the model under the run's precision, and the saved model predict in float32."""
    proc, run_dir, watcher, outcome = killed_run
    watcher.join(timeout=1000)
    proc.wait(timeout=60)
    if "error" in outcome:
        pytest.fail(outcome["error"])
    assert outcome == {"killed": "after an epoch"}, outcome
    saved = json.loads((run_dir / "state.json").read_text())["epoch"]
    assert 1 <= saved < 4
    before = read_history(run_dir / "history.csv")[:saved]
    saved_iterations = int(keras.models.load_model(run_dir / "last.keras").optimizer.iterations)
    assert saved_iterations == 3 * saved

    config = load_config(run_dir / "config.yaml")
    assert config.train.precision == "mixed_bfloat16"
    result = train(config, run_dir=run_dir, resume=True, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    history = read_history(run_dir / "history.csv")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # counted from 1, as on the console
    assert history[:saved] == before  # finished epochs are kept as they were
    assert all(np.isfinite(float(row["loss"])) for row in history), f"bfloat16 losses {history}"
    model = keras.models.load_model(run_dir / "last.keras")
    assert int(model.optimizer.iterations) == 3 * 4  # optimizer state carried over
    assert result.epochs_done == 4
    # a finished run resumed again does nothing
    again = train(config, run_dir=run_dir, resume=True, verbose=0)
    assert again.epochs_done == 4 and len(read_history(run_dir / "history.csv")) == 4

    # mixed bfloat16: outside training the saved model computes in float32
    model = keras.models.load_model(run_dir / "last.keras", compile=False)
    convs = [layer for layer in model.net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convs} == {"float32"}, "saved model under bfloat16"
    out = model(np.random.default_rng(0).random((2, 32, 32, 1), np.float32), training=False)
    assert all("float32" in str(v.dtype) for v in out.values()), "predictions not in float32"
    # uncertainty weighting learned its log-variances (they start at 0)
    log_vars = model.multitask_loss.log_vars.numpy()[:3]
    assert np.abs(log_vars).max() > 0, f"loss.uncertainty: log-variances not learned {log_vars}"
