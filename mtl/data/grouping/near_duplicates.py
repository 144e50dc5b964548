"""Patient groups from near-duplicate images (Br35H): perceptual hashes checked by correlation.

Near-duplicates are copies of one slice: resized, re-contrasted, sharpened, cropped, mirrored or
byte-identical. :func:`duplicate_groups` compares perceptual hashes (``imagehash.phash``, 64
bits) of each image whole and cropped to the head (:func:`~mtl.data.grouping.features.head_crop`),
also against the mirrored image, and takes the smallest distance. Two images are linked when
that distance is at most ``sure_hash_distance`` (6) bits, or at most ``max_hash_distance`` (16)
bits *and* their 32x32 head-cropped thumbnails, rank-normalised so that contrast and brightness
changes do not matter, correlate at least ``min_correlation`` (0.9, plain or mirrored). Linked
images are joined into groups (connected components, i.e. union-find). Between 8 and 16 bits
the hash alone also matches different slices of similar heads; the correlation check keeps
those apart, so that groups do not chain into large clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import rankdata

from mtl.data.grouping.features import THUMB_SIZE, ImageFeatures, image_features, unit_rows

#: hashes this close (bits of 64) mark a duplicate on their own
SURE_HASH_DISTANCE = 6
#: hashes up to this far apart mark a duplicate if the thumbnails also correlate
MAX_HASH_DISTANCE = 16
MIN_CORRELATION = 0.9


def _rank_normalised(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as unit rows of pixel ranks: invariant to monotone contrast changes."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    if flat.size == 0:
        return np.zeros((0, THUMB_SIZE * THUMB_SIZE), np.float32)
    return unit_rows(rankdata(flat, axis=1))


def _mirrored(thumbs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(thumbs[:, :, ::-1])



def _hash_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between the 0/1 rows of ``a`` and of ``b`` (float32 matrices)."""
    return a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - 2 * (a @ b.T)


def duplicate_pairs(
    features: ImageFeatures,
    *,
    sure_hash_distance: int = SURE_HASH_DISTANCE,
    max_hash_distance: int = MAX_HASH_DISTANCE,
    min_correlation: float = MIN_CORRELATION,
    chunk: int = 512,
) -> list[tuple[int, int]]:
    """Pairs (i < j) of near-duplicate images.

    Two images are near-duplicates when their perceptual hashes differ in at most
    ``sure_hash_distance`` bits, or in at most ``max_hash_distance`` bits and their head-cropped
    thumbnails correlate at least ``min_correlation``. The hash distance is the smallest over
    the whole and the head-cropped image, the second image taken plain or mirrored; the
    correlation the larger of plain and mirrored. Unreadable images pair with nothing.
    """
    valid = np.flatnonzero(features.ok)
    if len(valid) < 2:
        return []
    hashes = [
        (plain[valid].astype(np.float32), mirror[valid].astype(np.float32))
        for plain, mirror in (
            (features.phash, features.phash_mirror),
            (features.phash_full, features.phash_full_mirror),
        )
    ]
    z = _rank_normalised(features.thumb[valid])
    z_mirror = _rank_normalised(_mirrored(features.thumb[valid]))
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(valid), chunk):
        stop = min(start + chunk, len(valid))
        distance = np.min(
            [_hash_distance(h[start:stop], other) for h, m in hashes for other in (h, m)], axis=0
        )
        rows, cols = np.nonzero(distance <= max_hash_distance + 0.5)
        keep = cols > rows + start
        rows, cols = rows[keep], cols[keep]
        if rows.size == 0:
            continue
        za = z[rows + start]
        correlation = np.maximum(
            np.einsum("ij,ij->i", za, z[cols]), np.einsum("ij,ij->i", za, z_mirror[cols])
        )
        linked = (distance[rows, cols] <= sure_hash_distance + 0.5) | (
            correlation >= min_correlation
        )
        pairs.extend(zip(valid[rows[linked] + start].tolist(), valid[cols[linked]].tolist()))
    return pairs


def group_labels(n: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Connected components of ``n`` items linked by ``pairs``: a component index per item."""
    if not pairs:
        return np.arange(n)
    rows, cols = np.asarray(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def duplicate_groups(
    paths: Sequence[str | Path],
    *,
    sure_hash_distance: int = SURE_HASH_DISTANCE,
    max_hash_distance: int = MAX_HASH_DISTANCE,
    min_correlation: float = MIN_CORRELATION,
    cache: str | Path | None = None,
) -> list[str]:
    """A group id per image so that near-duplicates share one.

    An image without duplicates keeps its file stem as group id; a group of near-duplicates is
    named ``dup-<stem>`` after the stem of its first member (in the order of ``paths``).
    Unreadable images are left alone.
    """
    paths = [Path(p) for p in paths]
    features = image_features(paths, cache=cache)
    pairs = duplicate_pairs(
        features,
        sure_hash_distance=sure_hash_distance,
        max_hash_distance=max_hash_distance,
        min_correlation=min_correlation,
    )
    component = group_labels(len(paths), pairs)
    sizes = np.bincount(component, minlength=1)
    first: dict[int, int] = {}
    for index, c in enumerate(component):
        first.setdefault(int(c), index)
    return [
        f"dup-{paths[first[int(c)]].stem}" if sizes[c] > 1 else paths[index].stem
        for index, c in enumerate(component)
    ]
