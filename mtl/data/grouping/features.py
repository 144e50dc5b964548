"""Image features for the grouping: perceptual hashes and thumbnails, read once and cached.

Each image is read small as 8-bit grayscale and described whole and cropped to the head
(:func:`head_crop`): ``imagehash.phash`` bits (64) of it and of its mirror image, and a 32x32
thumbnail (:class:`ImageFeatures`). :func:`unit_rows` turns thumbnails into rows whose dot
products are correlations.

Image features are read once and cached in ``$MTL_CACHE_DIR`` (default ``~/.cache/mtl``), keyed
by path, size and modification time: never inside the dataset folder, which may be read-only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps

from mtl.files import atomic_write

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
    :func:`mtl.data.adapters.base.read_gray_image` does.
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

        def write(tmp: Path) -> None:  # private to the user, as the cache names their files
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
                np.savez(fh, keys=np.array(list(keep), dtype=str),
                         **stack_features(list(keep.values())))

        try:
            atomic_write(self.path, write, force=True)
        except OSError as err:
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



def unit_rows(values: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length, so that row dot products are correlations."""
    values = values - values.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(values, axis=1, keepdims=True)
    return (values / np.where(norm > 0, norm, 1.0)).astype(np.float32)

