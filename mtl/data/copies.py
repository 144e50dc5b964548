"""Near-copies across the datasets of one run, so that a slice and its copies share a split.

Public brain MRI sets copy each other: BRISC 2025 was collated from figshare and Br35H (among
others), Br35H holds copies of itself. Each adapter groups what it can see on its own (patients,
runs of slices, Br35H's near-duplicates), but a figshare test slice whose BRISC copy is trained
on is still a leak. :func:`link_copies` finds near-copies among the items of *all* sources of a
run with :func:`mtl.data.grouping.duplicate_pairs` (perceptual hashes, whole and head-cropped,
plain and mirrored, within ``MAX_HASH_DISTANCE`` bits, and head-cropped thumbnails correlating at
least :data:`COPY_MIN_CORRELATION`), and joins them with each
source's own patient groups into *split groups* (connected components). :func:`split_jointly`
then deals split groups, never items, into train/val/test, stratified by source and label.

Images are read once per file and cached (:func:`mtl.data.grouping.image_features`); items that
are not a 2-D image file of their own (a ``.mat`` slice, a slice of a volume) are loaded through
their adapter, with a progress bar, and not cached.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtl.data.adapters.base import Record
from mtl.data.grouping.features import (
    ImageFeatures,
    features_of_gray,
    image_features,
    stack_features,
    unreadable_features,
)
from mtl.data.grouping.near_duplicates import duplicate_pairs, group_labels
from mtl.data.splits import split_records

if TYPE_CHECKING:
    from mtl.data.pipeline import Source

log = logging.getLogger(__name__)

#: thumbnails (head-cropped, rank-normalised, plain or mirrored) correlating at least this much,
#: with perceptual hashes at most ``MAX_HASH_DISTANCE`` bits apart, mark a near-copy. Measured
#: on figshare + Br35H + BRISC: copies correlate 0.98-1.0, different slices rarely above 0.9
#: (3 of 2,603 figshare slices' neighbour pairs reach 0.95); a looser test chains different
#: slices of look-alike heads into groups of thousands.
COPY_MIN_CORRELATION = 0.95
#: the hash alone never decides across datasets: dark, similar heads share hashes
COPY_SURE_HASH_DISTANCE = -1

#: file suffixes read directly as one 2-D image (others are loaded through the adapter)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})


@dataclass
class CopyLinks:
    """Split groups over the items of several sources.

    ``group[k][i]`` is the split group of item ``i`` of source ``k``: items of one patient
    group of one source, and near-copies in any source, share it.
    """

    names: list[str]
    group: list[np.ndarray]
    #: near-copy pairs found, as ((source, item), (source, item))
    pairs: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts for ``data_summary.json``: how many groups span datasets, and which."""
        members: dict[int, set[int]] = defaultdict(set)
        sizes: Counter[int] = Counter()
        for k, groups in enumerate(self.group):
            for g in groups:
                members[int(g)].add(k)
                sizes[int(g)] += 1
        cross = [g for g, ks in members.items() if len(ks) > 1]
        by_pair: Counter[str] = Counter()
        for g in cross:
            by_pair["+".join(sorted(self.names[k] for k in members[g]))] += 1
        cross_pairs = sum(1 for (a, _), (b, _) in self.pairs if a != b)
        return {
            "cross_dataset_groups": len(cross),
            "items_in_cross_dataset_groups": int(sum(sizes[g] for g in cross)),
            "cross_dataset_groups_by_datasets": dict(sorted(by_pair.items())),
            "near_copy_pairs": len(self.pairs),
            "cross_dataset_near_copy_pairs": cross_pairs,
            "split_groups": len(sizes),
            "largest_split_group": max(sizes.values()) if sizes else 0,
        }


def _as_gray_image(array: np.ndarray):
    """A loaded slice as an 8-bit grayscale PIL image (min-max scaled), for the features."""
    from PIL import Image

    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
    scaled = np.zeros_like(a) if hi <= lo else (np.where(finite, a, lo) - lo) / (hi - lo) * 255.0
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def source_features(source: "Source", *, cache: str | Path | None = None,
                    progress: bool = True) -> ImageFeatures:
    """Features of every item of ``source``, in record order."""
    records = source.records
    counts = Counter(r.source for r in records)
    direct = [
        i for i, r in enumerate(records)
        if r.source and counts[r.source] == 1 and Path(r.source).suffix.lower() in IMAGE_SUFFIXES
    ]
    rows: list[Any] = [None] * len(records)
    if direct:
        found = image_features([records[i].source for i in direct], cache=cache)
        arrays = {name: getattr(found, name) for name in found.__dataclass_fields__}
        for j, i in enumerate(direct):
            rows[i] = {name: a[j] for name, a in arrays.items()}
    rest = [i for i, row in enumerate(rows) if row is None]
    if rest:
        from tqdm import tqdm

        for i in tqdm(rest, desc=f"reading {source.name} for copies", unit="item",
                      disable=not progress, leave=False):
            try:
                rows[i] = features_of_gray(_as_gray_image(source.adapter.load(records[i])["image"]))
            except Exception as exc:  # noqa: BLE001 - an unreadable item pairs with nothing
                log.debug("%s: no features (%s)", records[i].source, exc)
                rows[i] = unreadable_features()
    return ImageFeatures(**stack_features(rows))


def link_copies(
    sources: Sequence["Source"],
    *,
    features: Sequence[ImageFeatures] | None = None,
    cache: str | Path | None = None,
    progress: bool = True,
    **thresholds: Any,
) -> CopyLinks:
    """Split groups over all sources: each source's patient groups joined by near-copies.

    ``features`` (one :class:`ImageFeatures` per source, in record order) is computed when not
    given. ``thresholds`` go to :func:`mtl.data.grouping.duplicate_pairs`.
    """
    if features is None:
        features = [source_features(s, cache=cache, progress=progress) for s in sources]
    offsets = np.cumsum([0] + [len(s.records) for s in sources])
    n = int(offsets[-1])
    where = [(k, i) for k, s in enumerate(sources) for i in range(len(s.records))]
    links: list[tuple[int, int]] = []
    # the items of one patient group of one source are linked in a chain
    for k, source in enumerate(sources):
        first_of: dict[str, int] = {}
        for i, record in enumerate(source.records):
            node = int(offsets[k]) + i
            if record.patient_id in first_of:
                links.append((first_of[record.patient_id], node))
            else:
                first_of[record.patient_id] = node
    joint = ImageFeatures(**{
        name: np.concatenate([getattr(f, name) for f in features])
        for name in ImageFeatures.__dataclass_fields__
    })
    thresholds.setdefault("min_correlation", COPY_MIN_CORRELATION)
    thresholds.setdefault("sure_hash_distance", COPY_SURE_HASH_DISTANCE)
    copies = duplicate_pairs(joint, **thresholds)
    links.extend(copies)
    component = group_labels(n, links)
    group = [component[offsets[k]:offsets[k + 1]] for k in range(len(sources))]
    return CopyLinks(
        names=[s.name for s in sources],
        group=group,
        pairs=[(where[a], where[b]) for a, b in copies],
    )


def linked_sources(links: CopyLinks) -> list[list[int]]:
    """The sources, in groups joined by at least one cross-dataset split group (in order).

    A source with no near-copy in any other is a group of its own.
    """
    n = len(links.group)
    parent = list(range(n))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    owner: dict[int, int] = {}
    for k, groups in enumerate(links.group):
        for g in np.unique(groups):
            j = owner.setdefault(int(g), k)
            if root(j) != root(k):
                parent[max(root(j), root(k))] = min(root(j), root(k))
    joined: dict[int, list[int]] = defaultdict(list)
    for k in range(n):
        joined[root(k)].append(k)
    return [joined[r] for r in sorted(joined)]


def split_jointly(
    sources: Sequence["Source"], links: CopyLinks, fractions: Mapping[str, float], seed: int,
    cv: tuple[int, int] | None = None, refit: bool = False,
) -> list[dict[str, list[int]]]:
    """Train/val/test indices per source, so that every split group lies in one split.

    Groups are dealt by :func:`mtl.data.splits.split_records`, stratified by source and label,
    so each dataset is split in about the requested proportions. Sources that share no
    near-copy are split apart (:func:`linked_sources`): adding a dataset with no copies in the
    others leaves their splits as they were, so models trained before and after it can be
    compared on the same test slices. ``cv``: ``(folds, fold)``, the cross-validation fold of
    each such part (:func:`mtl.data.splits.cross_validation_fold`), groups kept together;
    ``refit``: the val split trains too (:func:`mtl.data.splits.refit_split`).
    """
    result: list[dict[str, list[int]]] = [{} for _ in sources]
    for members in linked_sources(links):
        joint = [
            Record(
                case_id=f"{k}/{r.case_id}",
                patient_id=f"g{int(links.group[k][i])}",
                presence=r.presence,
                label=f"{sources[k].name}:{r.stratum}",
                has_mask=r.has_mask,
            )
            for k in members
            for i, r in enumerate(sources[k].records)
        ]
        try:
            parts = split_records(joint, fractions, seed=seed, cv=cv, refit=refit)
        except ValueError as exc:  # name the datasets split together
            raise ValueError(f"{' + '.join(sources[k].name for k in members)}: {exc}") from None
        offsets = np.cumsum([0] + [len(sources[k].records) for k in members])
        for k in members:
            result[k] = {name: [] for name in parts}
        for name, indices in parts.items():
            for index in indices:
                m = int(np.searchsorted(offsets, index, side="right") - 1)
                result[members[m]][name].append(int(index - offsets[m]))
    return result


def train_once(links: CopyLinks, splits: Sequence[dict[str, list[int]]]) -> dict[str, int]:
    """Leave all but one item of each group of near-copies out of the training split, in place.

    Groups are the connected components of the near-copy pairs among training items (patient
    links do not count: a patient's other slices are other images). The item kept is the one
    of the first-listed source, then the first in record order: the original over its copies,
    when the run lists the original dataset first. Returns the items left out per source name
    (every source named, 0 where none)."""
    nodes = sorted((k, i) for k, parts in enumerate(splits) for i in parts.get("train", []))
    index = {node: n for n, node in enumerate(nodes)}
    pairs = [(index[a], index[b]) for a, b in links.pairs if a in index and b in index]
    component = group_labels(len(nodes), pairs)
    keep: dict[int, tuple[int, int]] = {}
    for node, c in zip(nodes, component):  # nodes are sorted: the first seen is kept
        keep.setdefault(int(c), node)
    dropped = {name: 0 for name in links.names}
    kept_nodes = set(keep.values())
    for k, parts in enumerate(splits):
        if "train" not in parts:
            continue
        before = len(parts["train"])
        parts["train"] = [i for i in parts["train"] if (k, i) in kept_nodes]
        dropped[links.names[k]] = before - len(parts["train"])
    return dropped


def check_groups_together(
    links: CopyLinks, splits: Sequence[Mapping[str, Sequence[int]]]
) -> None:
    """Raise ValueError if a split group (patient or near-copies) falls into two splits."""
    split_of: dict[int, set[str]] = defaultdict(set)
    for k, parts in enumerate(splits):
        for name, indices in parts.items():
            for i in indices:
                split_of[int(links.group[k][i])].add(name)
    broken = [g for g, names in split_of.items() if len(names) > 1]
    if broken:
        raise ValueError(f"{len(broken)} group(s) of near-copies span more than one split")
