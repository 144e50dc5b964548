"""Run a model over a split and collect targets, weights and predictions as NumPy arrays.

Masks are also scored as ``mtl infer`` exports them: each predicted probability map is taken
back to its source image's own size (:func:`mtl.data.preprocess.unletterbox`, as
:class:`mtl.infer.predict.Predictor` does), thresholded there and compared with the dataset's
own mask at full resolution (:func:`source_geometry_scores`).
"""

from __future__ import annotations

import logging
import math
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
from mtl.model.ensemble import is_ensemble
from mtl.model.inference import compiled_forward, jit_for_batches, with_flip_tta

log = logging.getLogger(__name__)


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
    #: the model's calibration temperatures, {"presence": T, "type": T} (outputs have them
    #: applied); None for an ensemble, whose members apply their own
    temperatures: dict[str, float] = field(default_factory=dict)
    #: with a largest region kept per volume: the scores of the masks the presence rule gated
    #: at ``gated_at`` before the region was chosen, as ``mtl infer`` does (None: not needed,
    #: the rule and the region commute)
    native_gated: MaskScores | None = None
    gated_at: float | None = None

    def native_under(self, rule: str, presence_threshold: float) -> MaskScores | None:
        """:attr:`native` under a mask rule (:func:`mtl.infer.predict.apply_mask_rule`) with
        each item's presence probability and ``presence_threshold``: the masks ``mtl infer``
        would export."""
        if self.native is None or rule == "independent":
            return self.native
        if rule != "presence":
            raise ValueError(f"unknown mask rule {rule!r}")
        presence = np.nan_to_num(self.outputs["presence"].reshape(-1), nan=0.0)
        base = self.native
        if self.native_gated is not None:
            if math.isclose(presence_threshold, self.gated_at):
                base = self.native_gated  # the region chosen after the gate, as infer does
            else:
                log.warning("masks gated at presence %g were scored with the 3-D region chosen "
                            "before the gate (predict_split scored the gate of %g first, as "
                            "mtl infer does)", presence_threshold, self.gated_at)
        return base.withhold(presence > presence_threshold)

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
            self.native_gated.select(keep) if self.native_gated is not None else None,
            self.gated_at,
        )


def source_geometry_scores(sources: list[Source], plan, mask_probs: np.ndarray,
                           mask_weights: np.ndarray, threshold: float = 0.5,
                           progress: bool = True, largest_component: bool = False,
                           gate: np.ndarray | None = None) -> MaskScores:
    """Mask scores of every planned item in its source image's geometry.

    Each item with a mask label is loaded again through its adapter; the network-size
    probability map goes back to the image's size (unletterbox, as ``mtl infer`` does) and is
    thresholded there: the mask head alone (:meth:`SplitPredictions.native_under` applies a
    mask rule). ``largest_component`` keeps only the largest connected region, as ``mtl infer
    --largest-component`` exports it: per image for single images, and one 3-D region per
    volume for the slices of a volume (:meth:`Adapter.volume_slice`; slice numbers missing
    from the split are blank slices between the others). ``gate`` (per item, False: the mask
    rule empties that item's mask) is applied before the region is chosen, as ``mtl infer``
    applies its mask rule first. HD95 is in mm when every tumor item carries
    ``meta["spacing"]``, else in source pixels ("source px": each image's own pixels). Items
    without a mask label, or unreadable now, are not scored (``scored`` False).
    """
    (scores,) = source_geometry_passes(sources, plan, mask_probs, mask_weights, threshold,
                                       progress, largest_component, gates=(gate,))
    return scores


def source_geometry_passes(sources: list[Source], plan, mask_probs: np.ndarray,
                           mask_weights: np.ndarray, threshold: float = 0.5,
                           progress: bool = True, largest_component: bool = False,
                           gates: tuple[np.ndarray | None, ...] = (None,)
                           ) -> list[MaskScores]:
    """:func:`source_geometry_scores` once per entry of ``gates`` (None: no gate), with each
    item loaded once for all of them."""
    from tqdm import tqdm

    size = mask_probs.shape[1]
    rows: list[list[tuple[int, tuple, tuple | None, Any, int]]] = [[] for _ in gates]
    gaps = 0
    bar = tqdm(total=int((mask_weights > 0).sum()), desc="scoring masks at source size",
               unit="item", disable=not progress, leave=False)
    for group in _scoring_groups(sources, plan, mask_weights, largest_component):
        loaded = []
        for j, number in group:
            bar.update()
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
            loaded.append((j, number, truth, prob > threshold, spacing))  # as infer decides
        for g, gate in enumerate(gates):
            gated = [[j, number, truth, pred & bool(gate is None or gate[j]), spacing]
                     for j, number, truth, pred, spacing in loaded]
            if largest_component:
                missing = _keep_largest_regions(gated)
                gaps += missing if g == 0 else 0  # (another gate over the same slices: the same)
            for j, _number, truth, pred, spacing in gated:
                in_px = score_mask(truth, pred, None)
                in_mm = score_mask(truth, pred, tuple(spacing[:2])) if spacing is not None else None
                rows[g].append((j, in_px, in_mm, spacing, int(np.count_nonzero(truth > 0))))
    bar.close()
    if gaps:
        log.warning("%d volume(s) have slices that are not in the split (adapter options such as "
                    "keep or slice_step leave slices out): the 3-D region takes them as blank, "
                    "while mtl infer on the whole volume could join regions across them", gaps)
    return [_mask_scores(r, len(plan)) for r in rows]


def _mask_scores(rows: list[tuple[int, tuple, tuple | None, Any, int]], n: int) -> MaskScores:
    """Per-item (item, px scores, mm scores, spacing, true pixels) rows as MaskScores; HD95 in
    mm only when every tumor item has a spacing, else in source pixels."""
    use_mm = bool(rows) and all(mm is not None for _, px, mm, *_ in rows if px[0])
    out = MaskScores.empty(n, "mm" if use_mm else "source px")
    for j, in_px, in_mm, spacing, n_true in rows:
        out.scored[j] = True
        out.true_pixels[j] = n_true
        scored = in_mm if use_mm and in_mm is not None else in_px
        out.tumor[j], out.dice[j], out.iou[j], out.hd95[j], out.pred_pixels[j] = scored
        out.pixel_area[j] = float(np.prod(spacing[:2])) if spacing is not None else np.nan
    return out


def _scoring_groups(sources: list[Source], plan, mask_weights: np.ndarray,
                    by_volume: bool) -> list[list[tuple[int, int | None]]]:
    """The items with a mask label as groups of (item, slice number): with ``by_volume`` the
    slices of one volume together (in the split's order), else one item per group (slice
    number None)."""
    groups: dict[Any, list[tuple[int, int | None]]] = {}
    for j in np.flatnonzero(mask_weights > 0):
        j = int(j)
        where = _volume_slice(sources, plan, j) if by_volume else None
        if where is None:
            groups[("item", j)] = [(j, None)]
        else:
            groups.setdefault((int(plan.source[j]), where[0]), []).append((j, where[1]))
    return list(groups.values())


def _keep_largest_regions(loaded: list[list]) -> bool:
    """In place on [item, slice number, truth, prediction, spacing] rows of one group: only the
    largest connected region of the prediction; across the slices of a volume in 3-D (slice
    numbers missing from the group are blank, so no region joins across them), else per row
    (also where the volume's slices differ in size). Returns whether slice numbers were
    missing between the first and the last."""
    numbers = [row[1] for row in loaded]
    shapes = {row[3].shape for row in loaded}
    if len(loaded) < 2 or None in numbers or len(shapes) != 1 or len(set(numbers)) != len(numbers):
        for row in loaded:
            row[3] = keep_largest_component(row[3]).astype(bool)
        return False
    first = min(numbers)
    volume = np.zeros((max(numbers) - first + 1, *shapes.pop()), bool)
    for row in loaded:
        volume[row[1] - first] = row[3]
    volume = keep_largest_component(volume).astype(bool)
    for row in loaded:
        row[3] = volume[row[1] - first]
    return len(volume) != len(loaded)


def predict_split(
    model: keras.Model, sources: list[Source], config: Config, split: str = "test",
    batch_size: int | None = None, threshold: float = 0.5, progress: bool = True,
    tta: bool = False, largest_component: bool = False, presence_threshold: float | None = None,
) -> SplitPredictions:
    """Run ``model`` over ``split`` of ``sources``; ``tta`` averages with mirrored inputs as
    ``mtl infer --tta`` does; masks are also scored at source size (see module docstring;
    :meth:`SplitPredictions.native_under` applies a mask rule; ``largest_component`` as
    :func:`source_geometry_scores`, where for volumes the masks gated by presence at
    ``presence_threshold`` (None: ``threshold``) are scored apart). Presence and type
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
    gates: tuple[np.ndarray | None, ...] = (None,)
    gated_at = None
    if largest_component and _has_volumes(sources, plan):
        gated_at = threshold if presence_threshold is None else presence_threshold
        gates += (np.nan_to_num(outputs_all["presence"].reshape(-1), nan=0.0) > gated_at,)
    native, *gated = source_geometry_passes(sources, plan, outputs_all["mask"],
                                            weights_all["mask"], threshold, progress=progress,
                                            largest_component=largest_component, gates=gates)
    native_gated = gated[0] if gated else None
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
        dict.fromkeys(("presence", "type")) if is_ensemble(model)  # (each member has its own)
        else dict(zip(("presence", "type"), temperatures(model))),
        native_gated,
        gated_at,
    )


def _volume_slice(sources: list[Source], plan, j: int) -> tuple[str, int] | None:
    """(volume, slice number) of planned item ``j`` (:meth:`Adapter.volume_slice`)."""
    source = sources[int(plan.source[j])]
    return source.adapter.volume_slice(source.records[int(plan.item[j])])


def _has_volumes(sources: list[Source], plan) -> bool:
    """Whether any planned item is the slice of a volume."""
    return any(_volume_slice(sources, plan, j) is not None for j in range(len(plan)))


def dice_per_image(truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard Dice per image, (N, H, W[, 1]); an empty truth and empty prediction score 1."""
    t = truth.reshape(len(truth), -1) > 0.5
    p = prob.reshape(len(prob), -1) > threshold
    inter = (t & p).sum(1)
    total = t.sum(1) + p.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
