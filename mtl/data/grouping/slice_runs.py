"""Patient groups from runs of slices (figshare JPEG layout), where ids run patient by patient.

Ids are numbered patient by patient, each patient a few stacks of neighbouring slices.
:func:`patient_blocks` groups consecutive ids and cuts only where a new patient is likely:

* a change of tumor class (a patient has one tumor type) or a gap in the ids always cuts;
* elsewhere a cut needs a clear *jump* between the two neighbouring slices: the tumor box moves
  or changes size (:func:`box_jumps`, at least ``min_jump``) and, when image similarities are
  given (:func:`consecutive_similarity`), the two images do not look alike (correlation below
  ``max_similarity``). Neighbouring slices of one stack rarely pass both tests;
* of those candidates the strongest jumps are taken first, and a cut closer than ``target_size``
  items to another cut or to the end of its run is not taken, so groups hold at least
  ``target_size`` items where the data allow it (between ``target_size`` and about twice that,
  or longer where no clear jump exists).

Putting two patients into one group costs nothing but a coarser split; cutting inside a patient
is the leak, so the rule errs towards larger groups. It cannot tell two stacks of one patient
(another plane or series) from two patients: a cut between such stacks still splits a patient,
which groups of several stacks make rarer but not impossible. :func:`estimate_straddles` counts
the obvious leaks, neighbouring slices that look alike but fall into different groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.data.grouping.features import image_features, unit_rows

DEFAULT_TARGET_SIZE = 20
#: smallest box jump at which two neighbouring slices may belong to different patients
MIN_JUMP = 1.0
#: neighbouring images correlating at least this much are one stack: never cut between them
MAX_SIMILARITY = 0.9
#: weight of the image dissimilarity (1 - correlation) when ranking candidate cuts
SIMILARITY_WEIGHT = 3.0
#: box sizes below this fraction of the image count as this size (tiny boxes are noisy)
BOX_FLOOR = 0.05


def box_jumps(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """How much the tumor box changes from each item to the next: ``len(boxes) - 1`` values.

    Boxes are normalised corners ``(x0, y0, x1, y1)``. The jump is the centre shift in box widths
    and heights plus the absolute log change of width and height (sizes below
    :data:`BOX_FLOOR` of the image count as that size). Neighbouring slices of one stack
    mostly stay below 1; a new stack or patient mostly jumps by 2 or more.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) < 2:
        return np.zeros(0)
    xc, yc = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    w = np.maximum(b[:, 2] - b[:, 0], BOX_FLOOR)
    h = np.maximum(b[:, 3] - b[:, 1], BOX_FLOOR)
    shift = np.abs(np.diff(xc)) / np.maximum(w[1:], w[:-1]) + np.abs(np.diff(yc)) / np.maximum(
        h[1:], h[:-1]
    )
    return shift + np.abs(np.diff(np.log(w))) + np.abs(np.diff(np.log(h)))


def consecutive_similarity(
    paths: Sequence[str | Path], *, cache: str | Path | None = None
) -> np.ndarray:
    """Correlation of each image's thumbnail with the next one's: ``len(paths) - 1`` values.

    Pearson correlation of the 32x32 thumbnails of the whole images, NaN where an image is
    unreadable. Neighbouring slices of one stack mostly correlate above 0.9.
    """
    features = image_features(paths, cache=cache)
    z = unit_rows(features.thumb_full.reshape(len(features), -1).astype(np.float64))
    similarity = np.einsum("ij,ij->i", z[:-1], z[1:]).astype(np.float64)
    similarity[~(features.ok[:-1] & features.ok[1:])] = np.nan
    return similarity


def _id_order(ids: Sequence[int]) -> np.ndarray:
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    sorted_ids = np.asarray(ids, dtype=np.int64)[order]
    if len(sorted_ids) > 1 and (np.diff(sorted_ids) == 0).any():
        raise ValueError("patient_blocks needs distinct ids")
    return order


def forced_cuts(ids: Sequence[int], labels: Sequence[object]) -> np.ndarray:
    """For items sorted by id: True between two items with different labels or an id gap."""
    ids_arr = np.asarray(ids, dtype=np.int64)
    labels_arr = np.asarray([str(x) for x in labels], dtype=object)
    return (np.diff(ids_arr) != 1) | (labels_arr[1:] != labels_arr[:-1])


def _cut_scores(
    boxes: np.ndarray, similarity: np.ndarray | None, min_jump: float, max_similarity: float
) -> np.ndarray:
    """Score of cutting between item i and i+1 (sorted by id); -inf where a cut is not allowed."""
    jumps = box_jumps(boxes)
    scores = jumps.copy()
    allowed = jumps >= min_jump
    if similarity is not None:
        known = ~np.isnan(similarity)
        allowed &= ~known | (similarity < max_similarity)
        scores = scores + SIMILARITY_WEIGHT * np.where(known, 1.0 - similarity, 0.0)
    return np.where(allowed, scores, -np.inf)


def _greedy_cuts(scores: np.ndarray, start: int, stop: int, min_size: int) -> list[int]:
    """Cut positions p (a cut before item p) inside [start, stop), strongest first, spaced."""
    taken = [start, stop]
    inner = np.arange(start + 1, stop)
    for p in inner[np.argsort(-scores[inner - 1], kind="stable")]:
        if not np.isfinite(scores[p - 1]):
            break
        if all(abs(p - q) >= min_size for q in taken):
            taken.append(int(p))
    return sorted(taken)[1:-1]


def patient_blocks(
    ids: Sequence[int],
    labels: Sequence[object],
    boxes: Sequence[Sequence[float]] | np.ndarray,
    target_size: int = DEFAULT_TARGET_SIZE,
    *,
    similarity: Sequence[float] | np.ndarray | None = None,
    min_jump: float = MIN_JUMP,
    max_similarity: float = MAX_SIMILARITY,
) -> list[str]:
    """A patient group per item (in the given order) from ids numbered patient by patient.

    ``labels`` are the tumor classes, ``boxes`` the normalised tumor boxes ``(x0, y0, x1, y1)``.
    ``similarity``, if given, holds the image correlation of each item with the next *in id
    order* (see :func:`consecutive_similarity`; NaN = unknown). See the module docstring for the
    rule. Groups are named ``ids-<first>-<last>`` by their id range.
    """
    if target_size < 1:
        raise ValueError(f"target_size must be >= 1, got {target_size}")
    n = len(ids)
    if not n == len(labels) == len(boxes):
        raise ValueError(f"got {n} ids, {len(labels)} labels and {len(boxes)} boxes")
    if n == 0:
        return []
    order = _id_order(ids)
    sorted_ids = np.asarray(ids, dtype=np.int64)[order]
    sorted_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order]
    sim = None
    if similarity is not None:
        sim = np.asarray(similarity, dtype=np.float64)
        if sim.shape != (n - 1,):
            raise ValueError(
                f"similarity needs {n - 1} values (one per neighbour), got shape {sim.shape}"
            )
    scores = _cut_scores(sorted_boxes, sim, min_jump, max_similarity)
    forced = forced_cuts(sorted_ids, [labels[i] for i in order])
    runs = [0, *(np.flatnonzero(forced) + 1).tolist(), n]
    cuts: list[int] = []
    for start, stop in zip(runs[:-1], runs[1:]):
        cuts.append(start)
        cuts.extend(_greedy_cuts(scores, start, stop, target_size))
    bounds = [*cuts, n]
    groups = [""] * n
    for start, stop in zip(bounds[:-1], bounds[1:]):
        name = f"ids-{sorted_ids[start]:04d}-{sorted_ids[stop - 1]:04d}"
        for k in range(start, stop):
            groups[int(order[k])] = name
    return groups


def fixed_blocks(ids: Sequence[int], block_size: int = DEFAULT_TARGET_SIZE) -> list[str]:
    """The old grouping, for comparison: id ``i`` in block ``i // block_size``."""
    return [f"block-{int(i) // block_size:04d}" for i in ids]


@dataclass(frozen=True)
class StraddleEstimate:
    """Neighbouring items (same class, consecutive ids) that a grouping puts apart."""

    boundaries: int  #: group boundaries between neighbouring items of one class run
    similar_boxes: int  #: ... of which the two boxes barely differ (jump < ``max_jump``)
    similar_images: int | None  #: ... of which the two images look alike (None: not measured)
    either: int | None  #: ... of which boxes or images look alike (None: not measured)


def estimate_straddles(
    ids: Sequence[int],
    labels: Sequence[object],
    boxes: Sequence[Sequence[float]] | np.ndarray,
    groups: Sequence[str],
    *,
    similarity: Sequence[float] | np.ndarray | None = None,
    max_jump: float = MIN_JUMP,
    min_similarity: float = MAX_SIMILARITY,
) -> StraddleEstimate:
    """Count group boundaries that most likely cut through one patient's stack of slices.

    A boundary between two neighbours (consecutive ids, same class) whose boxes barely differ
    (jump below ``max_jump``) or, if ``similarity`` (in id order) is given, whose images
    correlate at least ``min_similarity`` separates two slices of one stack: a patient split
    across groups, which splits can then put on both sides. This counts only such obvious cases;
    a cut between two stacks of one patient is not seen.
    """
    order = _id_order(ids)
    sorted_ids = np.asarray(ids, dtype=np.int64)[order]
    sorted_groups = np.asarray([str(groups[i]) for i in order], dtype=object)
    neighbours = ~forced_cuts(sorted_ids, [labels[i] for i in order])
    apart = neighbours & (sorted_groups[1:] != sorted_groups[:-1])
    jumps = box_jumps(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order])
    by_box = apart & (jumps < max_jump)
    if similarity is None:
        return StraddleEstimate(int(apart.sum()), int(by_box.sum()), None, None)
    sim = np.asarray(similarity, dtype=np.float64)
    by_image = apart & (np.nan_to_num(sim, nan=-1.0) >= min_similarity)
    return StraddleEstimate(
        int(apart.sum()), int(by_box.sum()), int(by_image.sum()), int((by_box | by_image).sum())
    )

