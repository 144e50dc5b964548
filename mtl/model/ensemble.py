"""Several trained models run as one: each output is the mean of the members' outputs.

An ensemble averages the presence probability, the type probabilities and the per-pixel tumor
probability of its members (each calibrated with its own temperatures), then the usual
thresholds, mask rule and largest region apply to the mean, in ``mtl evaluate``, ``mtl infer``
and ``mtl serve`` alike (``--ensemble``).

Members must read the same thing: the same classes in the same order, input size, intensity
scaling and MR sequences. They may differ in how many neighbouring slices they read
(``data.context_slices``): the ensemble takes the widest input and gives each member the
slices around the middle that it reads, so a single-slice model and a 2.5-D model of the
same sequences can be averaged.

The raw logits an ensemble reports are those of its mean probabilities (``presence_logit`` =
logit of the mean uncalibrated presence probability, ``type_logits`` = log of the mean
uncalibrated type probabilities), so the calibration report of ``mtl evaluate`` describes the
ensemble's own probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.data.preprocess import context_slices, sequence_names

#: preprocessing fields every member must share (context_slices, channels and channel_names
#: follow from the sequences and the context, which may differ)
SHARED_PREPROCESSING = ("image_size", "sequences", "intensity", "intensity_percentiles",
                        "geometry")


class EnsembleError(ValueError):
    """Models that cannot be averaged; the message names the difference."""


def _shared(pre: dict[str, Any], field: str) -> Any:
    return sequence_names(pre) if field == "sequences" else pre.get(field)


def check_members(members: Sequence[Any], names: Sequence[str]) -> None:
    """Refuse members that cannot be averaged (EnsembleError naming the first difference)."""
    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two models")
    first, first_pre = members[0], dict(members[0].preprocessing)
    for model, name in zip(members[1:], names[1:]):
        pre = dict(model.preprocessing)
        if list(model.classes) != list(first.classes):
            raise EnsembleError(f"{name} predicts classes {list(model.classes)}, {names[0]} "
                                f"{list(first.classes)}: an ensemble's members share their "
                                "classes, in the same order")
        fields = SHARED_PREPROCESSING + (() if sequence_names(pre) else ("channels",))
        for field in fields:
            if _shared(pre, field) != _shared(first_pre, field):
                raise EnsembleError(f"{name} reads {field}={_shared(pre, field)!r}, {names[0]} "
                                    f"{_shared(first_pre, field)!r}: an ensemble's members read "
                                    "the same input")


class Ensemble:
    """Loaded mtl models (``members``, from the files ``paths``) that predict as one.

    It offers what prediction reads from a model: ``preprocessing`` (the widest member's),
    ``classes``, ``spec`` (the first member's: the backbone named in reports), ``card`` (the
    members' cards) and ``calibration`` (the members' temperatures; each applies its own)."""

    def __init__(self, members: Sequence[Any], paths: Sequence[str | Path]) -> None:
        self.members = list(members)
        self.paths = [Path(p) for p in paths]
        if len(self.paths) != len(self.members):
            raise ValueError("one path per member")
        check_members(self.members, [str(p) for p in self.paths])
        widest = max(self.members, key=lambda m: context_slices(m.preprocessing))
        self.preprocessing = dict(widest.preprocessing)
        self.classes = list(self.members[0].classes)
        self.spec = self.members[0].spec
        from mtl.model.calibration import temperatures
        from mtl.model.card import model_card

        #: each member's temperatures, applied to its own outputs before the mean (no single
        #: temperature describes the ensemble: :func:`mtl.model.calibration.temperatures` of it
        #: is (1, 1), and reports say "per member")
        self.calibration = {"ensemble": [
            dict(zip(("path", "presence_temperature", "type_temperature"),
                     (str(p), *temperatures(m)))) for p, m in zip(self.paths, self.members)]}

        self.card = {"ensemble": [{"path": str(p), "card": model_card(m)}
                                  for p, m in zip(self.paths, self.members)]}

    def channel_window(self, member: Any) -> slice:
        """The input channels of ``member`` within the ensemble's (widest) input: the slices
        from offset -k to +k of a member that reads k neighbours per side."""
        per_slice = len(sequence_names(self.preprocessing) or []) or int(
            self.preprocessing.get("channels", 1))
        wide, own = context_slices(self.preprocessing), context_slices(member.preprocessing)
        return slice((wide - own) * per_slice, (wide + own + 1) * per_slice)

    def compiled_forward(self, image_size: int, channels: int, **options: Any):
        """The mean of the members' :func:`mtl.model.inference.compiled_forward` passes."""
        from mtl.model.inference import compiled_forward

        if int(channels) != int(self.preprocessing["channels"]):
            raise ValueError(f"this ensemble reads {self.preprocessing['channels']} channels, "
                             f"not {channels}")
        passes = []
        for member in self.members:
            window = self.channel_window(member)
            own = window.stop - window.start
            passes.append((window, compiled_forward(member, image_size, own, **options)))

        def forward(x: np.ndarray) -> dict[str, np.ndarray]:
            x = np.asarray(x, np.float32)
            outs = [f(np.ascontiguousarray(x[..., w])) for w, f in passes]
            return mean_outputs(outs)

        return forward


def mean_outputs(outs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The members' outputs averaged: probabilities as they are; logits as those of the mean
    uncalibrated probabilities (see the module docstring)."""
    keys = ("presence", "type", "mask", "presence_uncalibrated", "type_uncalibrated")
    mean = {k: np.mean([np.asarray(o[k], np.float32) for o in outs], axis=0)
            for k in keys if all(k in o for o in outs)}
    if "presence_uncalibrated" in mean:
        p = np.clip(mean["presence_uncalibrated"].astype(np.float64), 1e-7, 1 - 1e-7)
        mean["presence_logit"] = np.log(p / (1 - p)).astype(np.float32)
    if "type_uncalibrated" in mean:
        q = np.clip(mean["type_uncalibrated"].astype(np.float64), 1e-7, None)
        mean["type_logits"] = np.log(q).astype(np.float32)
    return mean


def member_file(target: str | Path, weights: str = "best") -> Path:
    """A member given as a ``.keras`` file, or as a run folder (its ``<weights>.keras``)."""
    target = Path(target)
    if target.is_dir():
        found = target / f"{weights}.keras"
        if not found.is_file():
            raise EnsembleError(f"{target}: the folder has no {weights}.keras (give "
                                "a run folder or a .keras model file)")
        return found
    if not target.is_file():
        raise EnsembleError(f"{target}: not found (give a run folder or a .keras "
                            "model file)")
    return target


def is_ensemble(model: Any) -> bool:
    return isinstance(model, Ensemble)


def load_ensemble(paths: Sequence[str | Path]) -> Ensemble:
    """The models in ``paths`` (``.keras`` files) as one :class:`Ensemble`; ModelError for an
    unreadable file, EnsembleError for models that cannot be averaged."""
    from mtl.infer.predict import load_model

    return Ensemble([load_model(p) for p in paths], paths)


__all__ = ["Ensemble", "EnsembleError", "SHARED_PREPROCESSING", "check_members", "is_ensemble",
           "load_ensemble", "mean_outputs", "member_file"]
