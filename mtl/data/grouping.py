"""Patient groups for datasets that lost their patient ids: slice runs and near-duplicate images.

Splits keep each ``Record.patient_id`` on one side (see :mod:`mtl.data.splits`), so a held-out
score is only honest if items of one patient, or copies of one image, share a ``patient_id``.
Two datasets here need the groups guessed from the data:

**Runs of slices** (figshare JPEG layout): ids are numbered patient by patient, each patient a
few stacks of neighbouring slices. :func:`patient_blocks` groups consecutive ids and cuts only
where a new patient is likely:

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

**Near-duplicate images** (Br35H): copies of one slice, resized, re-contrasted, sharpened,
cropped, mirrored or byte-identical. :func:`duplicate_groups` compares perceptual hashes
(``imagehash.phash``, 64 bits) of each image whole and cropped to the head (:func:`head_crop`),
also against the mirrored image, and takes the smallest distance. Two images are linked when
that distance is at most ``sure_hash_distance`` (6) bits, or at most ``max_hash_distance`` (16)
bits *and* their 32x32 head-cropped thumbnails, rank-normalised so that contrast and brightness
changes do not matter, correlate at least ``min_correlation`` (0.9, plain or mirrored). Linked
images are joined into groups (connected components, i.e. union-find). Between 8 and 16 bits
the hash alone also matches different slices of similar heads; the correlation check keeps
those apart, so that groups do not chain into large clusters.

Image features are read once and cached in ``$MTL_CACHE_DIR`` (default ``~/.cache/mtl``), keyed
by path, size and modification time: never inside the dataset folder, which may be read-only.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import rankdata

#: environment variable that overrides the cache folder
CACHE_ENV = "MTL_CACHE_DIR"
#: bump when the features change, so old cache files are not read
FEATURE_VERSION = 2
#: JPEGs are decoded at reduced size (DCT scaling) to at least this many pixels a side
READ_SIZE = 128
#: side of the stored thumbnail
THUMB_SIZE = 32
#: bits of ``imagehash.phash`` (8 x 8)
HASH_BITS = 64

# --- slice runs (figshare JPEG) defaults ---
DEFAULT_TARGET_SIZE = 20
#: smallest box jump at which two neighbouring slices may belong to different patients
MIN_JUMP = 1.0
#: neighbouring images correlating at least this much are one stack: never cut between them
MAX_SIMILARITY = 0.9
#: weight of the image dissimilarity (1 - correlation) when ranking candidate cuts
SIMILARITY_WEIGHT = 3.0
#: box sizes below this fraction of the image count as this size (tiny boxes are noisy)
BOX_FLOOR = 0.05

# --- near-duplicates defaults ---
#: hashes this close (bits of 64) mark a duplicate on their own
SURE_HASH_DISTANCE = 6
#: hashes up to this far apart mark a duplicate if the thumbnails also correlate
MAX_HASH_DISTANCE = 16
MIN_CORRELATION = 0.9


# --- cache and image features -------------------------------------------------------------------


def cache_dir() -> Path:
    """Folder for cached image features: ``$MTL_CACHE_DIR`` or ``~/.cache/mtl``."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "mtl"


@dataclass(frozen=True)
class ImageFeatures:
    """Per-image features, in the order of the paths they were computed for.

    Hashes are ``imagehash.phash`` bits (64) of the image and of its mirror image, once of the
    whole image and once of the head-cropped image (:func:`head_crop`); thumbnails are 32x32
    grayscale. ``ok[i]`` is False for a file that could not be decoded; its other rows are zeros.
    """

    ok: np.ndarray  # (n,) bool
    phash: np.ndarray  # (n, 64) bool, head-cropped image
    phash_mirror: np.ndarray  # (n, 64) bool, head-cropped image mirrored
    phash_full: np.ndarray  # (n, 64) bool, whole image
    phash_full_mirror: np.ndarray  # (n, 64) bool, whole image mirrored
    thumb: np.ndarray  # (n, 32, 32) uint8, head-cropped image
    thumb_full: np.ndarray  # (n, 32, 32) uint8, whole image

    def __len__(self) -> int:
        return len(self.ok)


#: name -> (dtype, shape of one row) of every field of :class:`ImageFeatures`
FEATURE_FIELDS: dict[str, tuple[type, tuple[int, ...]]] = {
    "ok": (bool, ()),
    "phash": (bool, (HASH_BITS,)),
    "phash_mirror": (bool, (HASH_BITS,)),
    "phash_full": (bool, (HASH_BITS,)),
    "phash_full_mirror": (bool, (HASH_BITS,)),
    "thumb": (np.uint8, (THUMB_SIZE, THUMB_SIZE)),
    "thumb_full": (np.uint8, (THUMB_SIZE, THUMB_SIZE)),
}
FeatureRow = dict[str, Any]


def _read_small_gray(path: Path) -> Image.Image:
    """The image as 8-bit grayscale, decoded at reduced size where the format allows it.

    EXIF orientation is applied and an alpha channel composited onto black, as
    :func:`mtl.data.adapters.class_folders.read_gray_image` does.
    """
    with Image.open(path) as img:
        img.draft("L", (READ_SIZE, READ_SIZE))
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        return img.convert("L")


def head_crop(gray: Image.Image) -> Image.Image:
    """Crop to the bounding box of the bright (non-background) rows and columns.

    A row or column counts when more than 2% of its pixels exceed a tenth of the maximum, so
    borders, padding and small text marks are dropped and zoomed copies line up.
    """
    pixels = np.asarray(gray)
    bright = pixels > max(8.0, 0.1 * float(pixels.max()))
    rows = np.flatnonzero(bright.mean(axis=1) > 0.02)
    cols = np.flatnonzero(bright.mean(axis=0) > 0.02)
    if rows.size < 4 or cols.size < 4:
        return gray
    return gray.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


def unreadable_features() -> FeatureRow:
    return {name: np.zeros(shape, dtype) for name, (dtype, shape) in FEATURE_FIELDS.items()}


def _thumbnail(gray: Image.Image) -> np.ndarray:
    return np.asarray(gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX), np.uint8)


def _phash_bits(gray: Image.Image) -> np.ndarray:
    return np.asarray(imagehash.phash(gray).hash, dtype=bool).ravel()


def _features_of(path: Path) -> FeatureRow:
    try:
        full = _read_small_gray(path)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return unreadable_features()
    return features_of_gray(full)


def features_of_gray(full: Image.Image) -> FeatureRow:
    """Features of one 8-bit grayscale image (see :class:`ImageFeatures`)."""
    head = head_crop(full)
    return {
        "ok": np.True_,
        "phash": _phash_bits(head),
        "phash_mirror": _phash_bits(ImageOps.mirror(head)),
        "phash_full": _phash_bits(full),
        "phash_full_mirror": _phash_bits(ImageOps.mirror(full)),
        "thumb": _thumbnail(head),
        "thumb_full": _thumbnail(full),
    }


def stack_features(rows: Sequence[FeatureRow]) -> dict[str, np.ndarray]:
    """Feature rows as arrays named like the fields of :class:`ImageFeatures`."""
    return {
        name: np.array([r[name] for r in rows], dtype=dtype).reshape(-1, *shape)
        for name, (dtype, shape) in FEATURE_FIELDS.items()
    }


def _file_key(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}"


class _FeatureCache:
    """Image features by file key (path, size, mtime) in one ``.npz`` file."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"image-features-v{FEATURE_VERSION}.npz"
        self.rows: dict[str, FeatureRow] = {}
        self.changed = False
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in FEATURE_FIELDS}
                for i, key in enumerate(data["keys"]):
                    self.rows[str(key)] = {name: a[i] for name, a in arrays.items()}
        except (OSError, KeyError, ValueError, IndexError, EOFError):
            self.rows = {}  # absent or unreadable: start afresh

    def save(self) -> None:
        """Write the cache (atomically), leaving out entries whose file changed or vanished."""
        if not self.changed:
            return
        keep = {}
        for key, row in self.rows.items():
            if _file_key(Path(key.split("\t", 1)[0])) == key:
                keep[key] = row
        tmp_name = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=self.path.parent, prefix=".features-", suffix=".npz", delete=False
            ) as tmp:
                tmp_name = tmp.name
                np.savez(tmp, keys=np.array(list(keep), dtype=str),
                         **stack_features(list(keep.values())))
            os.replace(tmp_name, self.path)
        except OSError as err:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
            warnings.warn(f"cannot write the image feature cache {self.path}: {err}", stacklevel=3)


def image_features(
    paths: Sequence[str | Path], *, cache: str | Path | None = None, workers: int | None = None
) -> ImageFeatures:
    """Perceptual hashes and thumbnails of the images, read once and then from the cache.

    ``cache`` is the cache folder (default :func:`cache_dir`). Files that cannot be read get
    ``ok=False`` (they are remembered too, until the file changes).
    """
    store = _FeatureCache(Path(cache) if cache is not None else cache_dir())
    paths = [Path(p) for p in paths]
    keys = [_file_key(p) for p in paths]
    missing = sorted({k for k in keys if k is not None and k not in store.rows})
    if missing:
        todo = [Path(k.split("\t", 1)[0]) for k in missing]
        n_workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for key, row in zip(missing, pool.map(_features_of, todo)):
                store.rows[key] = row
        store.changed = True
        store.save()
    rows = [store.rows[k] if k is not None else unreadable_features() for k in keys]
    return ImageFeatures(**stack_features(rows))


def _unit_rows(values: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length, so that row dot products are correlations."""
    values = values - values.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(values, axis=1, keepdims=True)
    return (values / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _rank_normalised(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as unit rows of pixel ranks: invariant to monotone contrast changes."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    if flat.size == 0:
        return np.zeros((0, THUMB_SIZE * THUMB_SIZE), np.float32)
    return _unit_rows(rankdata(flat, axis=1))


def _mirrored(thumbs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(thumbs[:, :, ::-1])


# --- runs of slices (figshare JPEG) -------------------------------------------------------------


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
    z = _unit_rows(features.thumb_full.reshape(len(features), -1).astype(np.float64))
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


# --- near-duplicate images ----------------------------------------------------------------------


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
