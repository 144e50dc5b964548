"""Training past one device through TensorFlow's own distribution engine (tf.distribute).

- ``default``: the default strategy (one device: a GPU if TensorFlow sees one, else the CPU);
- ``mirrored``: ``MirroredStrategy`` over every local GPU (synchronous data parallelism);
- ``multiworker``: ``MultiWorkerMirroredStrategy``; the cluster comes from the standard
  ``TF_CONFIG`` environment variable, one process per machine;
- ``auto``: multiworker when ``TF_CONFIG`` names more than one worker, mirrored when more than
  one GPU is visible, default otherwise.

``train.batch_size`` is the batch per replica; the global batch is that times the number of
replicas, and with ``train.lr_scaling: linear`` the learning rate is multiplied by the number of
replicas (the linear scaling rule). Both are printed and written to ``distribution.json``.
Each worker reads only its own shard of every epoch plan. Only the chief writes the run folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in the cluster described by TF_CONFIG (a lone process otherwise)."""

    task_type: str = "worker"
    task_index: int = 0
    num_workers: int = 1
    has_chief: bool = False  # the cluster names a separate "chief" task

    @property
    def is_chief(self) -> bool:
        if self.has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def cluster_role(environ: dict[str, str] | None = None) -> ClusterRole:
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG")
    if not raw:
        return ClusterRole()
    try:
        spec = json.loads(raw)
        cluster, task = spec.get("cluster", {}), spec.get("task", {})
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return ClusterRole(str(task.get("type", "worker")), int(task.get("index", 0)),
                           max(workers, 1), has_chief="chief" in cluster)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON with cluster/task: {exc}") from None


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if cluster_role().num_workers > 1:
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    return type(strategy).__name__


@dataclass(frozen=True)
class Scaling:
    strategy: str
    replicas: int
    workers: int
    per_replica_batch: int
    global_batch: int
    base_learning_rate: float
    learning_rate: float
    lr_scaling: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the terminal, e.g. "1 replica on 1 worker, batch 16, learning rate
        0.001"."""
        line = (f"{self.replicas} replica{'s' * (self.replicas != 1)} on {self.workers} "
                f"worker{'s' * (self.workers != 1)}, batch {self.global_batch}")
        if self.global_batch != self.per_replica_batch:
            line += f" ({self.per_replica_batch} per replica)"
        line += f", learning rate {self.learning_rate:g}"
        if self.learning_rate != self.base_learning_rate:
            line += f" ({self.base_learning_rate:g} x {self.replicas}, {self.lr_scaling} scaling)"
        return line


def scaling(strategy: tf.distribute.Strategy, batch_size: int, learning_rate: float,
            lr_scaling: str) -> Scaling:
    if lr_scaling not in ("linear", "none"):
        raise ValueError(f"train.lr_scaling must be 'linear' or 'none', not {lr_scaling!r}")
    replicas = int(strategy.num_replicas_in_sync)
    factor = replicas if lr_scaling == "linear" else 1
    return Scaling(strategy_name(strategy), replicas, cluster_role().num_workers, batch_size,
                   batch_size * replicas, learning_rate, learning_rate * factor, lr_scaling)


def distributed_dataset(strategy: tf.distribute.Strategy, build, per_replica_batch: int):
    """``build(shard_index, num_shards, batch)`` -> tf.data.Dataset, one shard per worker.

    On one device the dataset is used as built. Otherwise every worker builds only its own shard
    of the plan, batched per replica, through ``distribute_datasets_from_function``.
    """
    if strategy.num_replicas_in_sync == 1 and cluster_role().num_workers == 1:
        return build(0, 1, per_replica_batch)
    global_batch = per_replica_batch * strategy.num_replicas_in_sync

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return build(ctx.input_pipeline_id, ctx.num_input_pipelines,
                     ctx.get_per_replica_batch_size(global_batch))

    return strategy.distribute_datasets_from_function(dataset_fn)


def synchronize_batchnorm(model) -> int:
    """Switch every BatchNormalization layer to cross-replica moments; returns how many."""
    import keras

    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count
