"""Turning any slice into the network's input, and a mask back to the slice's own geometry.

Training and inference use these same functions with the parameters stored in the model
(:func:`preprocessing_spec`), so intensities are never re-typed by hand.

- channels: RGB -> grey by luminance, or grey repeated to 3 channels, as the model expects; a
  model whose channels are named MR sequences (``channel_names``, e.g. pre-contrast, FLAIR,
  post-contrast) takes exactly those channels, in that order, and nothing is ever copied or mixed;
- intensity: per-image linear scaling to [0, 1] between two percentiles of the image, computed
  for each channel on its own when the channels are named sequences (their ranges differ);
- geometry: letterbox, i.e. zero-pad to a square (keeping the aspect ratio) then resize.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from mtl.data.context import context_names


@dataclass(frozen=True)
class Letterbox:
    """How a (height, width) slice was placed into the square network input."""

    height: int
    width: int
    pad_top: int
    pad_left: int
    side: int  # the padded square's side, before resizing
    size: int  # the network input side

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class MissingChannels(ValueError):
    """An input lacks a channel (an MR sequence) the model needs; the message names it."""


def preprocessing_spec(
    image_size: int,
    channels: int,
    intensity_percentiles: list[float] | tuple[float, float],
    channel_names: list[str] | tuple[str, ...] | None = None,
    context_slices: int = 0,
) -> dict[str, Any]:
    """What the model stores about its input. With ``channel_names`` the channels are MR
    sequences, in this order, each scaled between its own percentiles ("percentile_per_channel").
    ``context_slices`` k > 0 (with ``channel_names``): each slice is read with k neighbouring
    slices on either side (:mod:`mtl.data.context`); ``channels`` and ``channel_names`` then
    count and name every input channel (``flair@-1``, ...) and ``sequences`` the sequences."""
    names = [str(n) for n in channel_names] if channel_names else None
    if names is not None and len(names) != int(channels):
        raise ValueError(f"{len(names)} channel names for {channels} channels")
    k = int(context_slices)
    if k and names is None:
        raise ValueError("context slices need named channels (MR sequences)")
    return {
        "image_size": int(image_size),
        "channels": int(channels) * (2 * k + 1),
        "channel_names": context_names(names, k) if names else None,
        "sequences": names,
        "context_slices": k,
        "intensity": "percentile_per_channel" if names else "percentile",
        "intensity_percentiles": [float(p) for p in intensity_percentiles],
        "geometry": "letterbox",
    }


def data_preprocessing(data: Any) -> dict[str, Any]:
    """:func:`preprocessing_spec` of a config's ``data`` section (:class:`mtl.config.DataConfig`):
    what a model trained on it stores, and what its training input is prepared with."""
    return preprocessing_spec(data.image_size, data.channels, data.intensity_percentiles,
                              data.channel_names, data.context_slices)


def channel_names(spec: dict[str, Any]) -> list[str] | None:
    """The model's named input channels (MR sequences, at each slice offset of a model with
    context slices), or None for a grey/RGB model."""
    names = spec.get("channel_names")
    return list(names) if names else None


def sequence_names(spec: dict[str, Any]) -> list[str] | None:
    """The MR sequences a model reads, each once (what a user gives it: ``--input NAME=FILE``),
    or None for a grey/RGB model. Models saved before context slices store only
    ``channel_names``, which are then the sequences."""
    names = spec.get("sequences") or spec.get("channel_names")
    return list(names) if names else None


def context_slices(spec: dict[str, Any]) -> int:
    """Neighbouring slices read on either side of each slice (0: one slice, older models)."""
    return int(spec.get("context_slices") or 0)


def check_channels(image: np.ndarray, names: list[str]) -> None:
    """Refuse an image that is not one channel per named sequence (no grey copy is ever made)."""
    image = np.asarray(image)
    found = image.shape[-1] if image.ndim == 3 else 1
    if found != len(names):
        raise MissingChannels(
            f"this model needs {len(names)} input channels ({', '.join(names)}, in this order); "
            f"the image has {found}. Give a {len(names)}-channel image in that order, or one "
            f"image per sequence ({' '.join(f'--input {n}=FILE' for n in names)})")


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) of any dtype -> float32 (H, W, channels)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:  # RGBA: drop alpha
        image = image[..., :3]
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 1 and c == 3:
        return (image @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if channels == 1:
        return image.mean(axis=-1, keepdims=True)
    if c == 1:
        return np.repeat(image, channels, axis=-1)
    raise ValueError(f"cannot turn a {c}-channel image into {channels} channels")


def scale_intensity(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of the [low, high] percentiles of the image to [0, 1], clipped."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        raise ValueError("image has no finite pixel values")
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:  # constant image: all zeros rather than a division by zero
        return np.zeros_like(image, dtype=np.float32)
    out = (np.nan_to_num(image, nan=lo) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def letterbox_info(height: int, width: int, size: int) -> Letterbox:
    side = max(height, width)
    return Letterbox(height, width, (side - height) // 2, (side - width) // 2, side, size)


def letterbox(array: np.ndarray, info: Letterbox, *, nearest: bool) -> np.ndarray:
    """Pad (H, W[, C]) to the square and resize to (size, size[, C])."""
    pad = [(info.pad_top, info.side - info.height - info.pad_top),
           (info.pad_left, info.side - info.width - info.pad_left)]
    pad += [(0, 0)] * (array.ndim - 2)
    square = np.pad(array, pad)
    if info.side == info.size:
        return square
    interp = cv2.INTER_NEAREST if nearest else (
        cv2.INTER_AREA if info.side > info.size else cv2.INTER_LINEAR
    )
    if array.ndim == 3 and array.shape[-1] > 4:  # cv2 resizes at most 4 channels at once
        return np.concatenate([letterbox(array[..., c:c + 4], info, nearest=nearest)
                               for c in range(0, array.shape[-1], 4)], axis=-1)
    out = cv2.resize(square, (info.size, info.size), interpolation=interp)
    if array.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel of 1
        out = out[..., None]
    return out


def unletterbox(array: np.ndarray, info: Letterbox, *, nearest: bool = False) -> np.ndarray:
    """Inverse of :func:`letterbox`: (size, size) -> the slice's own (H, W)."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    square = cv2.resize(array.astype(np.float32), (info.side, info.side), interpolation=interp)
    return square[info.pad_top : info.pad_top + info.height, info.pad_left : info.pad_left + info.width]


def prepare_image(image: np.ndarray, spec: dict[str, Any]) -> tuple[np.ndarray, Letterbox]:
    """A raw slice -> float32 (size, size, channels) in [0, 1], and how it was placed."""
    low, high = spec["intensity_percentiles"]
    names = channel_names(spec)
    if names is not None:
        check_channels(image, names)
        image = np.asarray(image, dtype=np.float32).reshape(*np.shape(image)[:2], len(names))
        image = np.stack([scale_intensity(image[..., c], low, high)
                          for c in range(len(names))], axis=-1)
    else:
        image = scale_intensity(to_channels(image, spec["channels"]), low, high)
    info = letterbox_info(image.shape[0], image.shape[1], spec["image_size"])
    # interpolation can overshoot [0, 1] by a rounding error
    return np.clip(letterbox(image, info, nearest=False), 0.0, 1.0), info


def box_to_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """(x0, y0, x1, y1) pixel box -> uint8 (H, W) with 1 inside the box."""
    x0, y0, x1, y1 = box
    out = np.zeros((height, width), np.uint8)
    r0, r1 = int(np.clip(np.floor(y0), 0, height)), int(np.clip(np.ceil(y1), 0, height))
    c0, c1 = int(np.clip(np.floor(x0), 0, width)), int(np.clip(np.ceil(x1), 0, width))
    out[r0:r1, c0:c1] = 1
    return out
