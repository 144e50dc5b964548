"""Finished analyses kept in memory for a while, under random ids (never file paths).

A result holds what the page and the downloads need: the JSON answer, the encoded files
(findings, masks), and the slices and mask for drawing overlays of any slice on request: the
slices only as the overlay draws them (grey, 8-bit, at most
:data:`~mtl.infer.overlay.DRAW_MAX_SIDE` pixels a side, see :func:`display_slices`) and the mask
bit-packed (:class:`PackedMask`), so a kept result costs about 1.1 bytes per voxel. The
store keeps at most ``max_items`` results and ``max_bytes`` of them, each for ``ttl_seconds``
after it was made; the oldest go first. Ids are ``uuid4().hex``: 122 random bits, so one
client cannot guess another's id.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
#: overlays of different slices kept per result
OVERLAY_CACHE = 32


class PackedMask:
    """A (N, H, W) 0/1 mask stored 8 pixels a byte; ``mask[i]`` and ``mask[i:j]`` give uint8
    arrays back (the parts of the numpy interface the server uses)."""

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask)
        self.shape = tuple(int(s) for s in mask.shape)
        self._bits = np.packbits(mask > 0, axis=-1)

    @property
    def nbytes(self) -> int:
        return int(self._bits.nbytes)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        return np.unpackbits(self._bits[index], axis=-1, count=self.shape[-1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = self[:]
        return full if dtype is None else full.astype(dtype)


def display_slices(slices: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, H, W[, C]) slices -> (uint8 (N, h, w) as the overlay shows them, the reduction
    factor): reduced to at most DRAW_MAX_SIDE a side (block means), windowed per slice (0.5-99.5
    percentiles, :func:`mtl.infer.overlay.window`), 0-255. One slice at a time: no float copy
    of the whole stack."""
    from mtl.infer.overlay import display_factor, reduce_mean, window

    factor = display_factor(np.shape(slices)[1:3])
    out = None
    for i in range(len(slices)):
        grey = np.rint(window(reduce_mean(slices[i], factor)) * 255).astype(np.uint8)
        if out is None:
            out = np.empty((len(slices), *grey.shape), np.uint8)
        out[i] = grey
    return (np.zeros((0, 0, 0), np.uint8) if out is None else out), factor


@dataclass(frozen=True)
class Download:
    content: bytes = field(repr=False)
    media_type: str
    filename: str  # server-made download name


@dataclass
class StoredResult:
    """One analysis, in slice order: ``slices`` as the overlay draws them (see
    :func:`display_slices`, reduced by ``display_factor``), ``mask`` (N, H, W) at full size (a
    :class:`PackedMask` or an array)."""

    name: str
    kind: str
    payload: dict[str, Any] = field(repr=False)
    files: dict[str, Download] = field(repr=False)
    slices: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    presence: np.ndarray = field(repr=False)
    type_probs: np.ndarray = field(repr=False)
    findings: dict[str, Any] = field(repr=False)
    view: Any
    default_slice: int
    #: the transform that turned the native slices upright (``mtl.data.orientation.View``);
    #: per-slice mask downloads are turned back into the file's array order
    upright: Any = None
    #: how much ``slices`` were reduced from the mask's size (1: not at all)
    display_factor: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = 0.0
    overlays: "OrderedDict[int, bytes]" = field(default_factory=OrderedDict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_slices(self) -> int:
        return int(self.mask.shape[0])

    @property
    def nbytes(self) -> int:
        return (int(self.slices.nbytes) + int(self.mask.nbytes)
                + sum(len(d.content) for d in self.files.values())
                + sum(len(b) for b in self.overlays.values()))

    def cached_overlay(self, index: int, render: Callable[[], bytes]) -> bytes:
        """The overlay PNG of slice ``index``, rendered once and kept (a few per result)."""
        with self.lock:
            if index in self.overlays:
                self.overlays.move_to_end(index)
                return self.overlays[index]
        png = render()
        with self.lock:
            self.overlays[index] = png
            while len(self.overlays) > OVERLAY_CACHE:
                self.overlays.popitem(last=False)
        return png


class ResultStore:
    """Thread-safe, bounded, expiring map id -> StoredResult."""

    def __init__(self, max_items: int = 20, ttl_seconds: float = 3600.0,
                 max_bytes: int = 1 << 30, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1 or ttl_seconds <= 0 or max_bytes <= 0:
            raise ValueError("max_items, ttl_seconds and max_bytes must be positive")
        self.max_items = int(max_items)
        self.ttl_seconds = float(ttl_seconds)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, r in self._items.items() if now - r.created >= self.ttl_seconds]:
            del self._items[key]

    def put(self, result: StoredResult) -> str:
        with self._lock:
            result.created = self.clock()
            self._items[result.id] = result
            self._expire()
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            while len(self._items) > 1 and sum(r.nbytes for r in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
        return result.id

    def get(self, result_id: str) -> StoredResult | None:
        """The result, or None for an unknown, malformed or expired id."""
        if not isinstance(result_id, str) or not ID_PATTERN.match(result_id):
            return None
        with self._lock:
            self._expire()
            return self._items.get(result_id)

    def expires_in(self, result: StoredResult) -> float:
        return max(0.0, result.created + self.ttl_seconds - self.clock())


__all__ = ["Download", "ID_PATTERN", "PackedMask", "ResultStore", "StoredResult",
           "display_slices"]
