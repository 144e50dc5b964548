"""Neighbouring slices as input channels ("2.5-D"): each slice is read together with the
``k`` slices on either side of it in its volume, so the network sees where a structure goes
before and after the slice it outlines (a small tumor at the end of a volume continues into
larger ones).

A model trained with ``data.context_slices: k`` over sequences ``[s1, s2, ...]`` takes
``(2k + 1) * len(sequences)`` channels: the slices from offset ``-k`` to ``+k``, and within
each slice the sequences in their order. The channel of sequence ``s`` at offset ``o`` is
named ``s`` for ``o = 0`` and ``s@-1``, ``s@+1`` ... otherwise (:func:`context_names`), so a
model's channel list says which slice each channel comes from. At a volume's ends the missing
neighbours repeat the end slice (:func:`clamped_index`), in training (adapters that read
volumes, e.g. lgg) and in inference (:func:`stack_context`) alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: separates a sequence's name from its slice offset in a channel name (``flair@-1``)
OFFSET_MARK = "@"


def offsets(k: int) -> list[int]:
    """``-k .. +k``: the slice offsets of a model with ``k`` context slices on each side."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"context slices must be a whole number >= 0, got {k!r}")
    return list(range(-k, k + 1))


def channel_name(sequence: str, offset: int) -> str:
    """``flair``, 0 -> ``flair``; ``flair``, -1 -> ``flair@-1``; ``flair``, 2 -> ``flair@+2``."""
    return str(sequence) if offset == 0 else f"{sequence}{OFFSET_MARK}{offset:+d}"


def context_names(sequences: Sequence[str], k: int) -> list[str]:
    """The input channel names of ``sequences`` read with ``k`` neighbouring slices per side,
    slice by slice from offset ``-k`` (``k = 0``: the sequences themselves)."""
    return [channel_name(s, o) for o in offsets(k) for s in sequences]


def on_either_side(k: int) -> str:
    """``1 slice on either side``, ``2 slices on either side``."""
    return f"{k} slice{'s' if k != 1 else ''} on either side"


def describe(names: Sequence[str]) -> str:
    """A model's input channels in words: ``pre-contrast, flair, post-contrast`` or, with
    neighbouring slices, ``pre-contrast, flair, post-contrast; each with 1 slice on either
    side``."""
    names = [str(n) for n in names]
    sequences = [n for n in names if OFFSET_MARK not in n]
    if len(sequences) == len(names) or not sequences or len(names) % len(sequences):
        return ", ".join(names)
    k = (len(names) // len(sequences) - 1) // 2
    return f"{', '.join(sequences)}; each with {on_either_side(k)}"


def clamped_index(index: int, available: Sequence[int]) -> int:
    """The slice that stands in for ``index`` in a volume holding the slice numbers
    ``available`` (sorted or not): ``index`` itself, else the nearest end slice (the volume's
    first or last), so that an end slice's missing neighbours repeat it."""
    if not len(available):
        raise ValueError("a volume without slices")
    if index in available:
        return index
    low, high = min(available), max(available)
    if low <= index <= high:  # a gap inside the volume: the nearest slice
        return min(available, key=lambda a: (abs(a - index), a))
    return low if index < low else high


def stack_context(slices: np.ndarray, k: int) -> np.ndarray:
    """``(N, H, W[, C])`` slices of one volume, in order -> ``(N, H, W, (2k+1) * C)``: each
    slice with its ``k`` neighbours on either side as channels, offset ``-k`` first; the
    volume's end slices stand in for neighbours beyond its ends."""
    slices = np.asarray(slices)
    if slices.ndim == 3:
        slices = slices[..., None]
    if slices.ndim != 4:
        raise ValueError(f"expected (N, H, W[, C]) slices, got shape {slices.shape}")
    n = slices.shape[0]
    if n == 0:
        raise ValueError("a volume without slices")
    index = np.arange(n)
    c = slices.shape[-1]
    out = np.empty((*slices.shape[:3], (2 * k + 1) * c), slices.dtype)
    for j, o in enumerate(offsets(k)):  # filled in place: no copies held besides the result
        out[..., j * c:(j + 1) * c] = slices[np.clip(index + o, 0, n - 1)]
    return out


__all__ = ["OFFSET_MARK", "channel_name", "clamped_index", "context_names", "describe", "offsets",
           "on_either_side", "stack_context"]
