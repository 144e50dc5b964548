"""A new run that starts from a trained model's weights (``train.init_from``) instead of
random ones: the same network (backbone, decoder, heads, classes, MR sequences), trained on.

The one change allowed between the two is the input's slice context: a model trained on
single slices can start a model that also reads ``k`` neighbouring slices on either side
(``data.context_slices``, :mod:`mtl.data.context`). Its input weights are widened so that the
new model computes, at its first step, exactly what the old one did: each input convolution
kernel sees the slice itself through the old kernel and its neighbours through zeros, and
per-channel statistics of the input (the backbone's first BatchNormalization) are repeated
for every slice. Training then learns how much the neighbours help.

The optimizer, the schedule and the epoch count start afresh; only weights are taken.

A model that trained on an item this run validates or tests on would make its scores
dishonest, so :func:`trained_on_held_out` compares the run's split with the ``splits.json`` of
the model's own run folder (beside the model file) and the run is refused if they overlap.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.config import ConfigError
from mtl.data.preprocess import context_slices, sequence_names


class WarmStartError(ConfigError):
    """The model named by ``train.init_from`` cannot start this run; the message says why."""


#: spec fields that must be the same in both models (the input size and channels may differ)
SAME_FIELDS = ("backbone", "decoder_filters", "decoder_block_type", "head_units",
               "deep_supervision", "classes")


def resolve_init_path(value: str | Path) -> Path:
    """``train.init_from``: a model file, or a run folder (its best.keras)."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise WarmStartError(f"train.init_from: {path} not found (give a .keras model file or a "
                             "run folder holding best.keras)")
    return path


def widening(src: dict[str, Any], src_pre: dict[str, Any], tgt: dict[str, Any],
             tgt_pre: dict[str, Any]) -> int:
    """How many slices the target reads for each slice the source read, from both networks'
    specs and preprocessing (dicts, as models store them): 1 for the same input, 2k + 1 when
    the source read single slices and the target reads k neighbours per side. Raises
    WarmStartError where the two networks differ otherwise."""
    from mtl.model.network import Architecture

    defaults = asdict(Architecture())  # fields added after the model was saved: their default
    src, tgt = {**defaults, **src}, {**defaults, **tgt}
    differ = [f for f in SAME_FIELDS if src.get(f) != tgt.get(f)]
    if differ:
        shown = "; ".join(f"{f}: {src.get(f)!r} there, {tgt.get(f)!r} here" for f in differ)
        raise WarmStartError(f"train.init_from: the model is another network ({shown})")
    if sequence_names(src_pre) != sequence_names(tgt_pre):
        raise WarmStartError(f"train.init_from: the model reads {sequence_names(src_pre)}, this "
                             f"run {sequence_names(tgt_pre)} (data.channel_names)")
    k_src, k_tgt = context_slices(src_pre), context_slices(tgt_pre)
    if k_src == k_tgt:
        return 1
    if k_src == 0:
        return 2 * k_tgt + 1
    raise WarmStartError(f"train.init_from: the model reads {k_src} neighbouring slice(s) per "
                         f"side, this run {k_tgt}; a model can only start one of the same "
                         "context or, from single slices, one of a wider context")


def check_init_from(path: Path, spec: Any, preprocessing: dict[str, Any]) -> int:
    """Whether the model file at ``path`` can start a network of ``spec`` (a NetworkSpec) and
    ``preprocessing``, read from its stored config without building it (before a run folder
    is made); returns :func:`widening`."""
    from mtl.model.card import read_model_config

    try:
        stored = read_model_config(path)
    except Exception as exc:  # noqa: BLE001 - not a zip, no config.json, bad JSON
        raise WarmStartError(f"train.init_from: {path} is not a readable .keras model "
                             f"({type(exc).__name__}: {exc})") from None
    if "spec" not in stored:
        raise WarmStartError(f"train.init_from: {path} is not an mtl model (no network spec)")
    return widening(stored["spec"], stored.get("preprocessing") or {}, asdict(spec),
                    preprocessing)


def source_splits(path: Path) -> dict[str, Any] | None:
    """The ``splits.json`` of the run the model file comes from (beside it), or None."""
    from mtl.runfolder import SPLITS, read_splits

    return read_splits(path.parent / SPLITS)


def used_held_out(path: Path, sources: Sequence[Any], held_out: Sequence[str] = ("val", "test"),
                  used: Sequence[str] = ("train",), *, what: str, against: str) -> list[str]:
    """:func:`trained_on_held_out` for the model file ``path``, read from the ``splits.json``
    of its run; where there is none, a warning (``what``: how it names the model, ``against``:
    what it cannot be checked against) and no patients."""
    splits = source_splits(path)
    if splits is None:
        logging.getLogger(__name__).warning(
            "%s has no splits.json beside it, so it cannot be checked that it never trained on "
            "%s", what, against)
        return []
    return trained_on_held_out(splits, sources, held_out, used)


def trained_on_held_out(splits: dict[str, Any], sources: Sequence[Any],
                        held_out: Sequence[str] = ("val", "test"),
                        used: Sequence[str] = ("train",)) -> list[str]:
    """The patients of this run's ``held_out`` splits (``sources``: opened and split,
    :class:`mtl.data.pipeline.Source`) that the model's run trained on (``splits``: its
    splits.json; ``used``: the splits of that run that count, its training split by default),
    as ``"dataset: patient (split)"``. Items are matched by dataset format and
    case id, and a trained item counts for its whole patient (through this run's records), so
    other slices of a patient trained on (another ``slice_step`` or ``keep``) count too."""
    trained: dict[str, set[str]] = {}
    for entry in splits.values():
        for name in used:
            ids = entry.get("case_ids", {}).get(name, [])
            trained.setdefault(str(entry.get("format")), set()).update(ids)
    found = []
    for source in sources:
        ids = trained.get(source.config.format, set())
        if not ids:
            continue
        patients = {r.patient_id for r in source.records if r.case_id in ids}
        for split in held_out:
            held = {source.records[i].patient_id for i in source.splits.get(split, [])
                    if source.records[i].patient_id in patients}
            found.extend(f"{source.name}: {p} ({split})" for p in sorted(held))
    return found


def widen(weight: np.ndarray, shape: tuple[int, ...], channels: int, factor: int
          ) -> np.ndarray | None:
    """A source weight of the input's ``channels`` made the target's ``shape`` for ``factor``
    slices (the source's slice in the middle): an input convolution kernel (``kh, kw,
    channels, filters``) padded with zeros for the neighbours, a per-channel vector repeated
    for each slice; None where the weight is not one of those."""
    middle = factor // 2
    if weight.ndim == 4 and weight.shape[2] == channels and shape == (
            *weight.shape[:2], channels * factor, weight.shape[3]):
        out = np.zeros(shape, weight.dtype)
        out[:, :, middle * channels:(middle + 1) * channels] = weight
        return out
    if weight.ndim == 1 and weight.shape[0] == channels and shape == (channels * factor,):
        return np.tile(weight, factor)
    return None


def warm_start(target: Any, source: Any) -> dict[str, Any]:
    """Set ``target``'s weights from ``source`` (both mtl models, built). Returns what was
    done: ``{"weights": n, "widened": [names], "slices": factor}``."""
    factor = widening(asdict(source.spec), source.preprocessing or {}, asdict(target.spec),
                      target.preprocessing or {})
    src, tgt = source.weights, target.weights
    if len(src) != len(tgt):
        raise WarmStartError(f"train.init_from: the model holds {len(src)} weights, this "
                             f"network {len(tgt)}")
    channels = int((source.preprocessing or {}).get("channels", 1))
    widened = []
    for t, s in zip(tgt, src):
        value = np.asarray(s.numpy())
        shape = tuple(int(d) for d in t.shape)
        if value.shape != shape:
            grown = widen(value, shape, channels, factor) if factor > 1 else None
            if grown is None:
                raise WarmStartError(f"train.init_from: weight {s.path} is {value.shape} in the "
                                     f"model and {shape} here")
            value = grown
            widened.append(t.path)
        t.assign(value.astype(t.dtype))
    return {"weights": len(tgt), "widened": widened, "slices": factor}


__all__ = ["SAME_FIELDS", "WarmStartError", "check_init_from", "resolve_init_path",
           "source_splits", "trained_on_held_out", "warm_start", "widen", "widening"]
