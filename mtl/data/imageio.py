"""Reading 2-D image files the same way for training and for inference.

8-bit images become uint8 greyscale (colour by ITU-R 601 luma, an alpha channel composited onto
black); 16-bit and floating-point images keep their values, because the network's per-image
percentile scaling (:mod:`mtl.data.preprocess`) is what maps intensities to [0, 1]. The format is
taken from the content, not the suffix, and EXIF orientation is applied as viewers display it.

:func:`read_channels` keeps an image's channels as stored instead, for models whose input
channels are named MR sequences (e.g. the LGG set's 3-channel TIFF slices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ImageReadError(ValueError):
    """An image file that cannot be read as one 2-D image; the message names the file."""


def describe_error(exc: BaseException) -> str:
    """An exception as one line: \"Type: message\"."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _pil_decode(path: Path, convert) -> tuple[np.ndarray | None, Exception | None]:
    """``convert`` of the EXIF-upright PIL image of ``path``: (array, None); a multi-frame file
    is refused; (None, error) for a TIFF PIL cannot read (tifffile takes over)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(f"{path}: holds {img.n_frames} frames, not a 2-D image "
                                     "(give a volume as NIfTI or DICOM)")
            return convert(ImageOps.exif_transpose(img)), None
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError...
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise ImageReadError(f"{path}: cannot read image ({describe_error(exc)})") from exc
        return None, exc


_RAW_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _on_black(img):
    """An RGBA copy with transparent pixels composited onto black."""
    from PIL import Image

    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)


def _gray_of(img) -> np.ndarray:
    if img.mode in _RAW_MODES:
        return np.array(img)
    if _has_alpha(img):
        img = _on_black(img)
    return np.array(img.convert("L"), dtype=np.uint8)


def _channels_of(img) -> np.ndarray:
    if img.mode in _RAW_MODES + ("L",):
        return np.array(img)
    if _has_alpha(img):
        return np.array(_on_black(img).convert("L" if img.mode == "LA" else "RGB"))
    if img.mode in ("1", "P"):
        return np.array(img.convert("RGB" if img.mode == "P" else "L"))
    return np.array(img)  # RGB, CMYK, ... as stored


def read_gray(path: str | Path) -> np.ndarray:
    """An image file -> (H, W) array (uint8 for 8-bit files, original values otherwise)."""
    path = Path(path)
    array, error = _pil_decode(path, _gray_of)
    return array if error is None else _read_tiff(path, error)


def read_channels(path: str | Path) -> np.ndarray:
    """An image file -> (H, W) for a grey image or (H, W, C) with its channels kept as they are
    stored (no luma, no copies): for models whose channels are MR sequences, e.g. the
    3-channel TIFF slices of the LGG set (pre-contrast, FLAIR, post-contrast). An alpha channel
    is composited onto black, as :func:`read_gray` does; a palette image is expanded."""
    path = Path(path)
    array, first_error = _pil_decode(path, _channels_of)
    if first_error is None:
        return array
    try:  # TIFFs PIL cannot open (float, 16-bit multi-sample, planar) through tifffile
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            array = np.asarray(page.asarray())
            planar = getattr(page, "planarconfig", None) == 2  # channels first (separate)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{path}: cannot read image ({describe_error(first_error)}; "
                             f"tifffile: {describe_error(exc)})") from exc
    if array.ndim == 3 and planar:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3):
        raise ImageReadError(f"{path}: TIFF of shape {array.shape} is not a 2-D image "
                             "(give a volume as NIfTI or DICOM)")
    return array


def _read_tiff(path: Path, first_error: Exception) -> np.ndarray:
    """TIFFs PIL cannot open (e.g. float or multi-sample) through tifffile."""
    try:
        import tifffile

        array = np.asarray(tifffile.imread(path))
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{path}: cannot read image ({describe_error(first_error)}; "
                             f"tifffile: {describe_error(exc)})") from exc
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if array.ndim != 2:
        raise ImageReadError(f"{path}: TIFF of shape {array.shape} is not a 2-D image "
                             "(give a volume as NIfTI or DICOM)")
    return array
