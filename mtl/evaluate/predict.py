"""Run a model over a split and collect targets, weights and predictions as NumPy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from mtl.config import Config
from mtl.data.pipeline import INFO_KEYS, TARGET_KEYS, LoadErrors, SampleEncoder, Source, make_dataset, plan_split
from mtl.model.inference import compiled_forward


@dataclass
class SplitPredictions:
    """Everything needed to score one split; arrays are aligned by item."""

    case_ids: list[str]
    source_names: list[str]
    images: np.ndarray
    targets: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]
    #: "<dataset>/<patient>" per item: the unit the bootstrap resamples (empty: unknown)
    patient_ids: list[str] = field(default_factory=list)


def predict_split(
    model: keras.Model, sources: list[Source], config: Config, split: str = "test",
    batch_size: int | None = None,
) -> SplitPredictions:
    plan = plan_split(sources, split)
    if not len(plan):
        raise ValueError(f"the {split!r} split is empty")
    errors = LoadErrors()
    ds = make_dataset(
        sources, plan, SampleEncoder(config, augment=False),
        batch_size=batch_size or config.train.batch_size, on_error=config.data.on_error,
        num_parallel_calls=config.data.num_parallel_calls, workers=config.data.workers,
        errors=errors,
    )
    targets = {k: [] for k in TARGET_KEYS + INFO_KEYS}
    weights = {k: [] for k in TARGET_KEYS}
    outputs: dict[str, list[np.ndarray]] = {}
    images = []
    forward = compiled_forward(model, config.data.image_size, config.data.channels)
    for x, y, w in ds:
        pred = forward(x)
        images.append(x.numpy())
        for k in TARGET_KEYS + INFO_KEYS:
            targets[k].append(y[k].numpy())
        for k in TARGET_KEYS:
            weights[k].append(w[k].numpy())
        for k, v in pred.items():
            outputs.setdefault(k, []).append(v)
    case_ids = [sources[int(s)].records[int(i)].case_id for s, i in zip(plan.source, plan.item)]
    names = [sources[int(s)].name for s in plan.source]
    patients = [f"{sources[int(s)].name}/{sources[int(s)].records[int(i)].patient_id}"
                for s, i in zip(plan.source, plan.item)]
    return SplitPredictions(
        case_ids,
        names,
        np.concatenate(images),
        {k: np.concatenate(v) for k, v in targets.items()},
        {k: np.concatenate(v) for k, v in weights.items()},
        {k: np.concatenate(v) for k, v in outputs.items()},
        errors.items,
        patients,
    )


def dice_per_image(truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard Dice per image, (N, H, W[, 1]); an empty truth and empty prediction score 1."""
    t = truth.reshape(len(truth), -1) > 0.5
    p = prob.reshape(len(prob), -1) > threshold
    inter = (t & p).sum(1)
    total = t.sum(1) + p.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
