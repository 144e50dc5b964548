"""How far two datasets' masks of the same slice agree: near-copies as a second annotator.

BRISC 2025 took many of its slices from figshare (and some from Br35H) and drew its own tumor
masks for them. Where both datasets of a run hold a slice with a mask, the two masks are two
expert readings of one image, and the Dice between them says how far experts agree on that kind
of tumor: what a second expert's outline scores against the first. That is the human level a
model's Dice can be read against (it is not a hard ceiling: a model that draws between the two
outlines can score above it against each).

:func:`copy_mask_agreement` takes the near-copy pairs that :func:`mtl.data.copies.link_copies`
found, brings the second slice onto the first one's pixel grid (resized, and mirrored, flipped or
turned if that matches the first image better, since copies are found in those forms too), and
scores the second mask against the first (:func:`mtl.evaluate.metrics.dice_iou`). A pair
whose images do not line up after that (a crop, say) is counted but not scored.
:func:`agreement_summary` condenses the rows per tumor type and per pair of datasets.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mtl.data.copies import CopyLinks
from mtl.evaluate.metrics import dice_iou

if TYPE_CHECKING:
    from mtl.data.pipeline import Source

#: the images of a pair must correlate at least this much on one grid to be scored: copies
#: (re-encoded, resized) correlate 0.98-1.0; below, the second one is likely cropped or shifted
ALIGN_MIN_CORRELATION = 0.9

#: the orientations tried when bringing the second copy onto the first one's grid
ORIENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": lambda a: a,
    "mirrored": lambda a: a[:, ::-1],
    "flipped": lambda a: a[::-1, :],
    "turned": lambda a: a[::-1, ::-1],
}


@dataclass
class CopyMaskPair:
    """Two masks of one slice, from two items (``a`` is the first in the run's source order)."""

    source_a: str
    case_a: str
    source_b: str
    case_b: str
    label_a: str | None
    label_b: str | None
    #: how b was turned to match a (a key of :data:`ORIENTATIONS`)
    orientation: str
    #: correlation of the two images on a's grid after that
    correlation: float
    #: Dice of b's mask against a's, on a's grid (NaN: the images did not line up)
    dice: float
    pixels_a: int
    pixels_b: int

    @property
    def scored(self) -> bool:
        return bool(np.isfinite(self.dice))

    @property
    def label(self) -> str:
        """The tumor type both items carry; "a/b" where they disagree; the known one where only
        one dataset types its slices (Br35H does not)."""
        if self.label_a is None or self.label_b is None:
            return str(self.label_a or self.label_b)
        return self.label_a if self.label_a == self.label_b else f"{self.label_a}/{self.label_b}"

    @property
    def datasets(self) -> str:
        return "+".join(sorted({self.source_a, self.source_b}))


def _gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, np.float64)
    return a.mean(axis=-1) if a.ndim == 3 else a


def _standardised(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a)
    return (a - a.mean()) / (a.std() + 1e-9)


def _on_grid(image: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """``image`` resampled to ``shape`` (order 0 for masks, 1 for images)."""
    from skimage.transform import resize

    if image.shape == shape:
        return image
    return resize(image, shape, order=order, preserve_range=True,
                  anti_aliasing=order > 0 and image.shape[0] > shape[0])


def align(image_a: np.ndarray, image_b: np.ndarray) -> tuple[str, float]:
    """(orientation, correlation): the orientation of :data:`ORIENTATIONS` that, with ``image_b``
    resampled to ``image_a``'s size, makes the two images correlate best, and that correlation."""
    a = _standardised(_gray(image_a))
    b = _standardised(_on_grid(_gray(image_b), a.shape, order=1))
    scores = {name: float((a * turn(b)).mean()) for name, turn in ORIENTATIONS.items()}
    best = max(scores, key=scores.__getitem__)
    return best, scores[best]


def compare_masks(sample_a: dict[str, Any], sample_b: dict[str, Any],
                  min_correlation: float = ALIGN_MIN_CORRELATION) -> tuple[str, float, float, int, int]:
    """(orientation, correlation, Dice, pixels of a's mask, pixels of b's mask on a's grid) of two
    loaded samples; Dice is NaN when the images do not line up (correlation below
    ``min_correlation``)."""
    orientation, correlation = align(sample_a["image"], sample_b["image"])
    truth = np.asarray(sample_a["mask"]).squeeze() > 0
    other = ORIENTATIONS[orientation](
        _on_grid(np.asarray(sample_b["mask"], np.float64).squeeze(), truth.shape, order=0) > 0.5)
    dice = dice_iou(truth, other)[0] if correlation >= min_correlation else float("nan")
    return orientation, correlation, float(dice), int(truth.sum()), int(other.sum())


def copy_mask_agreement(sources: Sequence["Source"], links: CopyLinks,
                        min_correlation: float = ALIGN_MIN_CORRELATION,
                        progress: bool = True) -> list[CopyMaskPair]:
    """One :class:`CopyMaskPair` per near-copy pair of ``links`` whose two items both have a
    tumor and a mask (within a dataset too: BRISC holds copies of its own slices)."""
    from tqdm import tqdm

    todo = []
    for (k, i), (m, j) in links.pairs:
        if (m, j) < (k, i):
            (k, i), (m, j) = (m, j), (k, i)
        ra, rb = sources[k].records[i], sources[m].records[j]
        if ra.has_mask and rb.has_mask and ra.presence == 1 and rb.presence == 1:
            todo.append(((k, i), (m, j)))
    rows = []
    for (k, i), (m, j) in tqdm(todo, desc="comparing the masks of copies", unit="pair",
                               disable=not progress, leave=False):
        ra, rb = sources[k].records[i], sources[m].records[j]
        sample_a, sample_b = sources[k].adapter.load(ra), sources[m].adapter.load(rb)
        if sample_a["mask"] is None or sample_b["mask"] is None:
            continue
        compared = compare_masks(sample_a, sample_b, min_correlation)
        rows.append(CopyMaskPair(sources[k].name, ra.case_id, sources[m].name, rb.case_id,
                                 ra.label, rb.label, *compared))
    return rows


def _figures(dice: np.ndarray) -> dict[str, Any]:
    if not len(dice):
        return {"pairs": 0}
    return {
        "pairs": int(len(dice)),
        "dice_mean": round(float(dice.mean()), 4),
        "dice_median": round(float(np.median(dice)), 4),
        "dice_p10": round(float(np.quantile(dice, 0.1)), 4),
        "below_0.8": round(float((dice < 0.8).mean()), 4),
    }


def agreement_summary(rows: Sequence[CopyMaskPair]) -> dict[str, Any]:
    """Dice between the two masks of copies: overall, per tumor type (all pairs, and pairs of
    two datasets), per pair of datasets (scored pairs); how many pairs could not be lined up,
    and how the second copies were turned."""
    scored = [r for r in rows if r.scored]
    by_label: dict[str, list[float]] = defaultdict(list)
    across: dict[str, list[float]] = defaultdict(list)
    seconds: dict[str, set[tuple[str, str]]] = defaultdict(set)  # items of the later dataset
    by_datasets: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        by_label[r.label].append(r.dice)
        if r.source_a != r.source_b:
            across[r.label].append(r.dice)
            seconds[r.label].add((r.source_b, r.case_b))
        by_datasets[r.datasets].append(r.dice)
    return {
        "pairs_with_two_masks": len(rows),
        "not_lined_up": len(rows) - len(scored),
        # how the second copy was turned to match the first (mirrored: a left-right flip)
        "orientations": dict(sorted(Counter(r.orientation for r in rows).items())),
        "overall": _figures(np.array([r.dice for r in scored])),
        "by_type": {k: _figures(np.array(v)) for k, v in sorted(by_label.items())},
        # two datasets' masks of one slice: two teams of annotators (copies inside one dataset
        # may carry the same mask twice)
        "by_type_across_datasets": {
            k: _figures(np.array(v)) | {"second_items": len(seconds[k])}
            for k, v in sorted(across.items())},
        "by_datasets": {k: _figures(np.array(v)) for k, v in sorted(by_datasets.items())},
    }


def as_dicts(rows: Sequence[CopyMaskPair]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (NaN Dice as None)."""
    out = []
    for r in rows:
        d = asdict(r)
        d["dice"] = round(r.dice, 4) if r.scored else None
        d["correlation"] = round(r.correlation, 4)
        out.append(d)
    return out
