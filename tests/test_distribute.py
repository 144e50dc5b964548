"""tf.distribute in `mtl train`: mirrored on one device, and two real workers on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from test_subprocess_support import finish

import mtl.model.multitask  # noqa: F401 - registers MultiTaskModel for keras.models.load_model
from mtl.config import ConfigError, load_config
from mtl.distribute import cluster_role, make_strategy
from mtl.runfolder import read_history

TINY = [
    "data.image_size=64", "model.decoder_filters=[16,16,8,8,8]", "model.head_units=8",
    "data.sources=[{format: phantoms, options: {n: 96, size: 64}}]",
    "train.batch_size=4", "train.steps_per_epoch=3", "train.reduce_lr_patience=null",
]

#: the environment of the training subprocesses: one thread in each of TensorFlow's pools (and
#: oneDNN's). The two workers share 2 cores (CI), and TensorFlow's
#: default of a thread per core in every pool of every process oversubscribes them (idle pool
#: threads spin); steps on batches of 4 tiny images gain nothing from a second thread. Only the
#: speed changes: the workers still synchronise every step, and the assertions are the same
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
              "OMP_NUM_THREADS": "1"}


TWO_CPU_REPLICAS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mtl.config import load_config
from mtl.train import train
result = train(load_config(overrides=json.loads(sys.argv[1])), verbose=0)
print("RUN_DIR=" + str(result.run_dir))
"""


def test_cluster_role_from_tf_config():
    assert cluster_role({}).is_chief and cluster_role({}).num_workers == 1
    cfg = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    role = cluster_role({"TF_CONFIG": json.dumps(cfg)})
    assert (role.num_workers, role.task_index, role.is_chief) == (2, 1, False)
    cfg["task"]["index"] = 0
    assert cluster_role({"TF_CONFIG": json.dumps(cfg)}).is_chief
    cfg = {"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    role = cluster_role({"TF_CONFIG": json.dumps(cfg)})
    assert role.num_workers == 2 and not role.is_chief
    with pytest.raises(ValueError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": "{not json"})


def test_strategy_names_are_checked():
    with pytest.raises(ConfigError, match="strategy"):
        load_config(overrides=["train.strategy=horovod"])
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("horovod")
    assert make_strategy("auto").num_replicas_in_sync == 1  # no GPUs, no TF_CONFIG here


@pytest.mark.xdist_group("tiny_variant_run")
def test_mirrored_runs_on_one_device(tiny_variant_run):
    """The suite's second tiny run (conftest.py) trains under MirroredStrategy on this one
    device (its first-epoch loss equals the default strategy's: tests/test_train.py)."""
    config, result = tiny_variant_run
    assert config.train.strategy == "mirrored"
    dist = json.loads((result.run_dir / "distribution.json").read_text())
    assert dist["strategy"] == "MirroredStrategy" and dist["replicas"] == 1
    assert dist["global_batch"] == config.train.batch_size
    assert dist["learning_rate"] == dist["base_learning_rate"]
    assert [r["epoch"] for r in read_history(result.run_dir / "history.csv")] == [1, 2, 3]
    assert (result.run_dir / "last.keras").is_file()


def test_mirrored_splits_batches_over_two_replicas(tmp_path):
    """Two logical CPU devices stand in for two GPUs: they must be set before TensorFlow
    starts, so `mtl train` runs in a subprocess. Batch norm is not synchronized here: its
    cross-replica moments cost half of this test's time (a trace of 29 synchronized layers), and
    the two-worker test below checks them (its workers' moving statistics differ without them)."""
    overrides = TINY + [f"train.runs_dir={tmp_path}", "train.epochs=1", "train.strategy=mirrored",
                        "train.steps_per_epoch=2", "model.sync_batchnorm=false"]
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", TWO_CPU_REPLICAS, json.dumps(overrides)],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        finish(proc, 600, "the two-replica run")
    assert proc.returncode == 0, log.read_text()[-3000:]
    run_dir = tmp_path / "run"
    dist = json.loads((run_dir / "distribution.json").read_text())
    assert dist["replicas"] == 2 and dist["global_batch"] == 8
    history = read_history(run_dir / "history.csv")
    assert len(history) == 1 and "val_loss" in history[0]
    assert int(keras.models.load_model(run_dir / "last.keras").optimizer.iterations) == 2


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_cluster(tmp_path, args, tag):
    """Run `mtl train ARGS` as two workers on 127.0.0.1; returns their logs; always cleans up."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    cmd = [sys.executable, "-m", "mtl.cli", "train", "--quiet", *args]
    procs = []
    try:
        for index in range(2):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **ONE_THREAD,
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            log = open(tmp_path / f"{tag}-worker{index}.log", "w")
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        deadline = time.time() + 400
        for proc, _ in procs:
            proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two-worker run {tag!r} did not finish within 400 s")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [(tmp_path / f"{tag}-worker{i}.log").read_text() for i in range(2)]
    for (proc, _), text in zip(procs, logs):
        assert proc.returncode == 0, text[-3000:]
    return logs


def test_two_workers_train_the_same_weights_and_resume(tmp_path):
    sets = [a for item in TINY + ["train.val_steps=1", "train.steps_per_epoch=2"]
            for a in ("--set", item)]
    run_cluster(tmp_path, ["--name", "mw", "--runs-dir", str(tmp_path), "--epochs", "1",
                           "--strategy", "multiworker", *sets], "first")
    chief_dir = tmp_path / "mw"
    assert json.loads((chief_dir / "state.json").read_text())["epoch"] == 1
    # the cluster stopped after epoch 1 (as after a lost worker): resume both workers
    run_cluster(tmp_path, ["--resume", str(chief_dir), "--epochs", "2"], "resumed")
    worker_dir = tmp_path / ".workers" / "mw-worker1"
    assert (chief_dir / "last.keras").is_file() and (chief_dir / "best.keras").is_file()
    assert not (tmp_path / "mw2").exists()  # only the chief made a run folder
    dist = json.loads((chief_dir / "distribution.json").read_text())
    assert dist["replicas"] == 2 and dist["workers"] == 2 and dist["global_batch"] == 8
    assert dist["learning_rate"] == pytest.approx(2 * dist["base_learning_rate"])
    assert [r["epoch"] for r in read_history(chief_dir / "history.csv")] == [1, 2]
    chief = keras.models.load_model(chief_dir / "last.keras")
    other = keras.models.load_model(worker_dir / "last.keras")
    assert int(chief.optimizer.iterations) == 2 * 2  # optimizer state carried over the restart
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_the_scaling_reads_as_one_line() -> None:
    from mtl.distribute import Scaling

    one = Scaling("_DefaultDistributionStrategy", 1, 1, 16, 16, 1e-3, 1e-3, "linear")
    assert one.describe() == "1 replica on 1 worker, batch 16, learning rate 0.001"
    four = Scaling("MirroredStrategy", 4, 2, 8, 32, 1e-3, 4e-3, "linear")
    assert four.describe() == ("4 replicas on 2 workers, batch 32 (8 per replica), learning rate "
                               "0.004 (0.001 x 4, linear scaling)")
