"""Run a model over a split and collect targets, weights and predictions as NumPy arrays.

Masks are also scored as ``mtl infer`` exports them: each predicted probability map is taken
back to its source image's own size (:func:`mtl.data.preprocess.unletterbox`, as
:class:`mtl.infer.predict.Predictor` does), thresholded there and compared with the dataset's
own mask at full resolution (:func:`source_geometry_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from mtl.config import Config
from mtl.data.pipeline import INFO_KEYS, TASK_NAMES, LoadErrors, SampleEncoder, Source, make_dataset, plan_split
from mtl.data.preprocess import letterbox_info, unletterbox
from mtl.evaluate.metrics import MaskScores, score_mask
from mtl.infer.predict import keep_largest_component
from mtl.infer.channels import overlay_index
from mtl.model.calibration import temperatures
from mtl.model.inference import compiled_forward, jit_for_batches, with_flip_tta


@dataclass
class SplitPredictions:
    """Everything needed to score one split; arrays are aligned by item."""

    case_ids: list[str]
    source_names: list[str]
    #: (N, S, S, 1): the network input's channel that pictures show (:func:`overlay_index`)
    images: np.ndarray
    targets: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]
    #: "<dataset>/<patient>" per item: the unit the bootstrap resamples (empty: unknown)
    patient_ids: list[str] = field(default_factory=list)
    #: mask scores in each source image's own geometry, mask head alone (None: not computed)
    native: MaskScores | None = None
    #: the model's calibration temperatures, {"presence": T, "type": T} (outputs have them applied)
    temperatures: dict[str, float] = field(default_factory=dict)

    def native_under(self, rule: str, presence_threshold: float) -> MaskScores | None:
        """:attr:`native` under a mask rule (:func:`mtl.infer.predict.apply_mask_rule`) with
        each item's presence probability and ``presence_threshold``: the masks ``mtl infer``
        would export."""
        if self.native is None or rule == "independent":
            return self.native
        if rule != "presence":
            raise ValueError(f"unknown mask rule {rule!r}")
        presence = np.nan_to_num(self.outputs["presence"].reshape(-1), nan=0.0)
        return self.native.withhold(presence > presence_threshold)

    def select(self, keep: np.ndarray) -> "SplitPredictions":
        """The items where ``keep`` is True."""
        keep = np.asarray(keep, bool)
        return SplitPredictions(
            [c for c, k in zip(self.case_ids, keep) if k],
            [s for s, k in zip(self.source_names, keep) if k],
            self.images[keep],
            {k: v[keep] for k, v in self.targets.items()},
            {k: v[keep] for k, v in self.weights.items()},
            {k: v[keep] for k, v in self.outputs.items()},
            self.skipped,
            [p for p, k in zip(self.patient_ids, keep) if k],
            self.native.select(keep) if self.native is not None else None,
            self.temperatures,
        )


def source_geometry_scores(sources: list[Source], plan, mask_probs: np.ndarray,
                           mask_weights: np.ndarray, threshold: float = 0.5,
                           progress: bool = True, largest_component: bool = False) -> MaskScores:
    """Mask scores of every planned item in its source image's geometry.

    Each item with a mask label is loaded again through its adapter; the network-size
    probability map goes back to the image's size (unletterbox, as ``mtl infer`` does) and is
    thresholded there: the mask head alone (:meth:`SplitPredictions.native_under` applies a
    mask rule), with ``largest_component`` only its largest connected region (as ``mtl infer
    --largest-component`` exports a 2-D image; the presence rule empties a mask or leaves it
    whole, so the two commute). HD95 is in mm when every tumor item carries ``meta["spacing"]``, else in
    source pixels ("source px": each image's own pixels). Items without a mask label, or
    unreadable now, are not scored (``scored`` False).
    """
    from tqdm import tqdm

    size = mask_probs.shape[1]
    rows: list[tuple[int, tuple, tuple | None, Any]] = []
    for j in tqdm(range(len(plan)), desc="scoring masks at source size", unit="item",
                  disable=not progress, leave=False):
        if mask_weights[j] <= 0:
            continue
        source = sources[int(plan.source[j])]
        try:
            sample = source.adapter.load(source.records[int(plan.item[j])])
        except Exception:  # noqa: BLE001 - counted as skipped by the pipeline already
            continue
        truth = sample["mask"]
        if truth is None:
            continue
        h, w = sample["image"].shape[:2]  # placed into the network input as prepare() did
        prob = np.clip(unletterbox(mask_probs[j].reshape(size, size),
                                   letterbox_info(h, w, size)), 0.0, 1.0)
        spacing = sample["meta"].get("spacing")
        if spacing is not None and not (np.isfinite(spacing[:2]).all()
                                        and np.all(np.asarray(spacing[:2]) > 0)):
            spacing = None
        pred = prob > threshold  # as mtl infer decides a mask pixel
        if largest_component:
            pred = keep_largest_component(pred).astype(bool)
        in_px = score_mask(truth, pred, None)
        in_mm = score_mask(truth, pred, tuple(spacing[:2])) if spacing is not None else None
        rows.append((j, in_px, in_mm, spacing, int(np.count_nonzero(truth > 0))))
    # HD95 in mm only when every tumor item has a spacing, else in source pixels
    use_mm = bool(rows) and all(mm is not None for _, px, mm, *_ in rows if px[0])
    out = MaskScores.empty(len(plan), "mm" if use_mm else "source px")
    for j, in_px, in_mm, spacing, n_true in rows:
        out.scored[j] = True
        out.true_pixels[j] = n_true
        scored = in_mm if use_mm and in_mm is not None else in_px
        out.tumor[j], out.dice[j], out.iou[j], out.hd95[j], out.pred_pixels[j] = scored
        out.pixel_area[j] = float(np.prod(spacing[:2])) if spacing is not None else np.nan
    return out


def predict_split(
    model: keras.Model, sources: list[Source], config: Config, split: str = "test",
    batch_size: int | None = None, threshold: float = 0.5, progress: bool = True,
    tta: bool = False, largest_component: bool = False,
) -> SplitPredictions:
    """Run ``model`` over ``split`` of ``sources``; ``tta`` averages with mirrored inputs as
    ``mtl infer --tta`` does; masks are also scored at source size (see module docstring;
    :meth:`SplitPredictions.native_under` applies a mask rule; ``largest_component`` as
    :func:`source_geometry_scores`). Presence and type
    probabilities are calibrated with the model's temperatures; the outputs also hold the
    uncalibrated ones and the logits (:func:`mtl.model.inference.compiled_forward`)."""
    plan = plan_split(sources, split)
    if not len(plan):
        raise ValueError(f"the {split!r} split is empty")
    errors = LoadErrors()
    batch_size = batch_size or config.train.batch_size
    ds = make_dataset(
        sources, plan, SampleEncoder(config, augment=False),
        batch_size=batch_size, on_error=config.data.on_error,
        num_parallel_calls=config.data.num_parallel_calls, workers=config.data.workers,
        errors=errors,
    )
    targets = {k: [] for k in TASK_NAMES + INFO_KEYS}
    weights = {k: [] for k in TASK_NAMES}
    outputs: dict[str, list[np.ndarray]] = {}
    images = []  # the channel pictures show (FLAIR of the slice itself, where one is named)
    shown = overlay_index(config.data.channel_names, config.data.context_slices)
    forward = compiled_forward(model, config.data.image_size, config.data.input_channels,
                               jit_compile=jit_for_batches(batch_size))
    if tta:
        forward = with_flip_tta(forward)
    for x, y, w in ds:
        pred = forward(x.numpy())
        images.append(x.numpy()[..., shown:shown + 1])
        for k in TASK_NAMES + INFO_KEYS:
            targets[k].append(y[k].numpy())
        for k in TASK_NAMES:
            weights[k].append(w[k].numpy())
        for k, v in pred.items():
            outputs.setdefault(k, []).append(v)
    case_ids = [sources[int(s)].records[int(i)].case_id for s, i in zip(plan.source, plan.item)]
    names = [sources[int(s)].name for s in plan.source]
    patients = [f"{sources[int(s)].name}/{sources[int(s)].records[int(i)].patient_id}"
                for s, i in zip(plan.source, plan.item)]
    weights_all = {k: np.concatenate(v) for k, v in weights.items()}
    outputs_all = {k: np.concatenate(v) for k, v in outputs.items()}
    native = source_geometry_scores(sources, plan, outputs_all["mask"], weights_all["mask"],
                                    threshold, progress=progress,
                                    largest_component=largest_component)
    return SplitPredictions(
        case_ids,
        names,
        np.concatenate(images),
        {k: np.concatenate(v) for k, v in targets.items()},
        weights_all,
        outputs_all,
        errors.items,
        patients,
        native,
        dict(zip(("presence", "type"), temperatures(model))),
    )


def dice_per_image(truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard Dice per image, (N, H, W[, 1]); an empty truth and empty prediction score 1."""
    t = truth.reshape(len(truth), -1) > 0.5
    p = prob.reshape(len(prob), -1) > threshold
    inter = (t & p).sum(1)
    total = t.sum(1) + p.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
