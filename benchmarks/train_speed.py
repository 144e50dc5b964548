"""Training throughput (images/s) of three input paths into the same model, in one process.

Per model, three ways of feeding ``model.fit`` the same planned samples (same items, same
augmentation seeds, same batch size):

- ``pipeline``: mtl's real input pipeline, :func:`mtl.data.pipeline.make_dataset` over a
  :func:`~mtl.data.pipeline.plan_training` plan, as ``mtl train`` builds it (decode,
  letterbox, albumentations in a parallel tf.data map, batch, prefetch). One difference:
  ``drop_remainder=True`` so that all three variants share one traced train step (the plan
  holds whole batches, so no sample is dropped).
- ``memory``: the same batches, taken from the pipeline once before timing and held in memory as
  ``tf.data.Dataset.from_tensor_slices(batches).cache().repeat()``: the model's own speed.
- ``naive``: a Python generator that loads each sample and runs
  :meth:`~mtl.data.pipeline.SampleEncoder.encode` (albumentations) one by one, stacks a batch and
  yields it through ``tf.data.Dataset.from_generator`` with prefetch injection and autotuning
  switched off, so loading runs serially with the training step, as a hand-written loop would.

Each measurement is one ``model.fit(steps_per_epoch=warmup + steps)``; a callback stamps the end
of every step and images/s is ``steps * batch / (t[warmup + steps] - t[warmup])``: the first
``warmup`` steps (iterator start-up, buffer filling) are excluded. Before the first round every
variant runs one untimed fit (tracing, oneDNN primitive creation). Rounds are interleaved
``pipeline, memory, naive, pipeline, memory, naive, ...`` so machine noise hits all three alike;
the ratios are taken per round and their median reported.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from typing import Any, Callable

import numpy as np

from benchmarks.common import log, stats
from benchmarks.fixtures import describe_config, open_train_sources

VARIANTS = ("pipeline", "memory", "naive")


def _keras_clock():
    import keras

    class StepClock(keras.callbacks.Callback):
        """perf_counter at the start of fit and at the end of every train step."""

        def __init__(self) -> None:
            super().__init__()
            self.t: list[float] = []

        def on_train_begin(self, logs=None):
            self.t = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.t.append(time.perf_counter())

    return StepClock()


def fit_steps(model, dataset, *, warmup: int, steps: int, batch: int) -> dict[str, Any]:
    """One timed ``model.fit``; images/s over the ``steps`` after ``warmup`` steps.

    With ``steps_per_execution`` N > 1 (``train.steps_per_execution``) Keras reports one batch
    end per N steps: ``warmup`` and ``steps`` must be multiples of N, and ``step_seconds`` are
    each execution's seconds / N."""
    per = int(getattr(model, "steps_per_execution", 1) or 1)
    if warmup % per or steps % per:
        raise ValueError(f"warmup {warmup} and steps {steps} must be multiples of the model's "
                         f"steps_per_execution {per}")
    clock = _keras_clock()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[clock],
              shuffle=False)
    t = clock.t
    if len(t) != (warmup + steps) // per + 1:
        raise RuntimeError(f"fit ran {(len(t) - 1) * per} steps, expected {warmup + steps} "
                           "(dataset too short?)")
    first, last = warmup // per, (warmup + steps) // per
    measured = t[last] - t[first]
    return {
        "images_per_s": steps * batch / measured,
        "seconds": measured,
        "warmup_seconds": t[first] - t[0],
        "step_seconds": (np.diff(t[first:]) / per).round(6).tolist(),
    }


# --------------------------------------------------------------------------- the three inputs


def _naive_dataset(sources, plan, encoder, batch: int, element_spec):
    import tensorflow as tf

    from mtl.data.pipeline import INFO_KEYS
    from mtl.tasks import TASK_NAMES

    n_batches = len(plan) // batch

    def generate():
        for b in range(n_batches):
            images, targets, weights = [], [], []
            for i in range(b * batch, (b + 1) * batch):
                source = sources[int(plan.source[i])]
                sample = source.load(source.records[int(plan.item[i])])
                image, t, w = encoder.encode(sample, source, int(plan.aug_seed[i]))
                images.append(image)
                targets.append(t)
                weights.append(w)
            yield (np.stack(images),
                   {k: np.stack([t[k] for t in targets]) for k in TASK_NAMES + INFO_KEYS},
                   {k: np.stack([w[k] for w in weights]) for k in TASK_NAMES})

    ds = tf.data.Dataset.from_generator(generate, output_signature=element_spec)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return ds.with_options(options)


def _memory_dataset(pipeline_ds, n_batches: int):
    import tensorflow as tf

    batches = list(pipeline_ds.take(n_batches).as_numpy_iterator())
    stacked = tf.nest.map_structure(lambda *xs: np.stack(xs), *batches)
    nbytes = sum(a.nbytes for a in tf.nest.flatten(stacked))
    return tf.data.Dataset.from_tensor_slices(stacked).cache().repeat(), nbytes


def build_inputs(config, sources, *, warmup: int, steps: int) -> tuple[dict[str, Any], dict]:
    """The three datasets over one plan of ``warmup + steps`` batches."""
    from mtl.data.pipeline import SampleEncoder, make_dataset, plan_training

    batch = config.train.batch_size
    plan = plan_training(sources, seed=config.seed, epochs=range(1), steps=warmup + steps,
                         batch_size=batch)
    encoder = SampleEncoder(config, augment=True, cache=config.data.cache)  # as mtl train
    pipeline = make_dataset(sources, plan, encoder, batch_size=batch,
                            on_error=config.data.on_error,
                            num_parallel_calls=config.data.num_parallel_calls,
                            workers=config.data.workers, drop_remainder=True)
    memory, nbytes = _memory_dataset(pipeline, warmup + steps)
    naive = _naive_dataset(sources, plan, SampleEncoder(config, augment=True), batch,
                           pipeline.element_spec)
    info = {"planned_batches": warmup + steps, "memory_variant_bytes": int(nbytes)}
    return {"pipeline": pipeline, "memory": memory, "naive": naive}, info


def input_only(dataset, *, warmup: int, steps: int, batch: int) -> float:
    """images/s of pulling batches from ``dataset`` with no model: the input path's own speed."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- section


def measure_model(config, *, warmup: int, steps: int, repeats: int,
                  between_rounds: Callable[[], None] | None = None,
                  sources: list | None = None) -> dict[str, Any]:
    import keras

    from mtl.train import build_model

    batch = config.train.batch_size
    if sources is None:
        sources = open_train_sources(config)
    datasets, info = build_inputs(config, sources, warmup=warmup, steps=steps)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    log(f"  {config.model.backbone}: untimed warm-up fit of each input "
        f"(batch {batch}, {config.data.image_size} px)")
    warm = {}
    for name in VARIANTS:
        t1 = time.perf_counter()
        fit_steps(model, datasets[name], warmup=0, steps=max(1, min(2, warmup + steps)), batch=batch)
        warm[name] = time.perf_counter() - t1
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for name in VARIANTS:
            runs[name].append(fit_steps(model, datasets[name], warmup=warmup, steps=steps,
                                        batch=batch))
        if between_rounds is not None:
            between_rounds()
        log(f"  {config.model.backbone} round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {runs[n][-1]['images_per_s']:.2f}" for n in VARIANTS) + " img/s")
    # the input paths alone (no model): what the pipeline gains where the step is cheap (GPU)
    alone: dict[str, list[float]] = {"pipeline": [], "naive": []}
    for _ in range(repeats):
        for name in alone:
            alone[name].append(input_only(datasets[name], warmup=warmup, steps=steps, batch=batch))
    log(f"  {config.model.backbone} input only: " + ", ".join(
        f"{n} {float(np.median(v)):.1f}" for n, v in alone.items()) + " img/s")
    ips = {name: [run["images_per_s"] for run in runs[name]] for name in VARIANTS}
    ratio_memory = [a / b for a, b in zip(ips["pipeline"], ips["memory"])]
    ratio_naive = [a / c for a, c in zip(ips["pipeline"], ips["naive"])]
    ceiling = [b / c for b, c in zip(ips["memory"], ips["naive"])]
    alone_ratio = [a / c for a, c in zip(alone["pipeline"], alone["naive"])]
    result = {
        "config": describe_config(config),
        "batch_size": batch,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "repeats": repeats,
        "order": "interleaved per round: " + ", ".join(VARIANTS),
        "warmup_fit_seconds": warm,
        **info,
        "images_per_s": {name: stats(ips[name]) for name in VARIANTS},
        "ratios": {
            "pipeline_over_memory": stats(ratio_memory),
            "pipeline_over_naive": stats(ratio_naive),
            "memory_over_naive": stats(ceiling),
            "input_only_pipeline_over_naive": stats(alone_ratio),
            "note": "per round (same round, back to back), median over rounds; "
                    "memory_over_naive is the ceiling of pipeline_over_naive: no input "
                    "pipeline trains faster than tensors already in memory",
        },
        "input_only_images_per_s": {name: stats(v) for name, v in alone.items()},
        "runs": runs,
    }
    del model, datasets
    gc.collect()
    return result


def run_section(configs: dict[str, Any], *, warmup: int, steps: int, repeats: int,
                between_rounds: Callable[[], None] | None = None) -> dict[str, Any]:
    """``configs``: role ("default", "large") -> Config. Results keyed by role."""
    out: dict[str, Any] = {"models": {}}
    opened: dict[str, list] = {}  # the models differ in backbone only: scan each data set once
    for role, config in configs.items():
        log(f"train: {role} model {config.model.backbone}")
        key = json.dumps(dataclasses.asdict(config.data), sort_keys=True, default=str)
        t0 = time.perf_counter()
        if key not in opened:
            opened[key] = open_train_sources(config)
            log(f"  opened the data sources in {time.perf_counter() - t0:.1f} s")
        open_seconds = time.perf_counter() - t0  # ~0 when shared with the model before
        out["models"][role] = measure_model(config, warmup=warmup, steps=steps, repeats=repeats,
                                            between_rounds=between_rounds, sources=opened[key])
        out["models"][role]["open_sources_seconds"] = open_seconds
    return out
