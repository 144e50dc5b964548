"""One upload -> one stored result, through the per-case core of ``mtl infer`` (no web code here).

Steps: :func:`~mtl.serve.uploads.stage_upload` (type by content, limits, a server-owned file),
then :func:`mtl.infer.core.analyse_case`, what ``mtl infer`` runs per input (read, predict
under a lock so requests never share a network call, findings, the findings record), and the
mask downloads of :meth:`~mtl.infer.core.CaseAnalysis.downloads`, made in memory; overlays are
drawn on request by :func:`mtl.infer.overlay.overlay_png`.

Only the upload itself is written to disk (the readers read files): into a private temporary
folder of the server, gone when the request ends. The memory a request used is handed back
(:func:`release_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np

from mtl.data.preprocess import context_slices, sequence_names
from mtl.infer.case import InputError, InputItem
from mtl.infer.channels import display_channel, refuse_single_volume
from mtl.infer.core import (
    DISCLAIMER,
    analyse_case,
    drawn_on,
    is_volume_kind,
    overlay_lines,
    parse_axis as check_axis,
    parse_spacing as check_spacing,
    record_bytes,
)
from mtl.infer.discovery import safe_name
from mtl.infer.formats import input_suffixes, link_formats
from mtl.infer.formats.image import png_mask_bytes
from mtl.infer.predict import Predictor, check_threshold
from mtl.model.card import provenance
from mtl.serve.results import Download, PackedMask, ResultStore, StoredResult, display_slices
from mtl.serve.uploads import FILE_NAMES, Limits, UploadRejected, detect, share, stage_upload

log = logging.getLogger(__name__)


class BadRequest(Exception):
    """A request that cannot be analysed: ``status`` 400/413/415 and a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def display_name(filename: str | None) -> str:
    """A short safe name from the client's file name, for titles and download names only:
    without the longest suffix a format reads (:func:`~mtl.infer.formats.input_suffixes`) or
    ``.gz``."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in input_suffixes(".gz"):
        if lower.endswith(suffix):
            base = base[: -len(suffix)]
            break
    name = safe_name(base)[:60]
    return "upload" if name == "case" else name


def parse_spacing(text: str | None) -> tuple[float, float] | None:
    """"0.5" or "0.5,0.4" (row, column mm) -> a pair; empty -> None; 400 otherwise
    (:func:`mtl.infer.core.parse_spacing`)."""
    try:
        return check_spacing(text)
    except ValueError as exc:
        raise BadRequest(400, f"pixel_spacing: {exc}") from None


def parse_axis(text: str | None) -> int | str:
    """An axis option (:func:`mtl.infer.core.parse_axis`); 400 otherwise."""
    try:
        return check_axis(text or "axial")
    except ValueError as exc:
        raise BadRequest(400, f"axis: {exc}") from None


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_memory(collect: bool = False) -> None:
    """Hand what a request freed back to the system: the garbage collector first when
    ``collect`` (reference cycles, e.g. a matplotlib figure), then glibc's ``malloc_trim``
    (freed heap pages otherwise stay in the process and in its RSS)."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _client_name(filename: str | None) -> str:
    """The client's file name without folders, for messages and display only."""
    return (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1][:200] or "upload"


def form_hint(names: Sequence[str]) -> str:
    """How to give one file per sequence to ``POST /predict``."""
    return "one upload per sequence in the form fields " + ", ".join(names)


class Service:
    """The model (one :class:`Predictor`, loaded once), the limits and the result store.

    Memory: at most ``max_active`` analyses run at once (each within
    ``limits.max_request_bytes``, checked from the header before decoding); overlays and slice
    masks are drawn one at a time at a bounded size; a kept result holds its slices only at
    drawing size and its mask bit-packed; freed memory is handed back after each request."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        limits: Limits = Limits(),
        store: ResultStore | None = None,
        presence_threshold: float | None = None,
        model_name: str | None = None,
        temp_root: str | Path | None = None,
        max_active: int = 1,
    ) -> None:
        if max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active}")
        self.predictor = predictor
        self.limits = limits
        self.store = store if store is not None else ResultStore()
        self.presence_threshold = (predictor.presence_threshold if presence_threshold is None
                                   else check_threshold(presence_threshold, "presence_threshold"))
        self.model_info = {"path": model_name, "classes": list(predictor.classes),
                           "preprocessing": dict(predictor.preprocessing),
                           **provenance(predictor.model)}
        #: the MR sequences the model takes as input channels, in order (None: grey model)
        self.channels = sequence_names(predictor.preprocessing)
        #: slices read per slice (2k + 1 with k context slices): a case's array grows so much
        #: once neighbours are stacked, so each upload gets that much less of the budget
        self.context = context_slices(predictor.preprocessing)
        self.slices_read = 2 * self.context + 1
        self.temp_root = Path(tempfile.mkdtemp(prefix="mtl-serve-", dir=temp_root))
        self._predict_lock = threading.Lock()  # one network call at a time, whole cases
        self._render_lock = threading.Lock()  # matplotlib is not thread-safe
        #: analyses running at once (each may use up to ``limits.max_request_bytes``)
        self.max_active = int(max_active)
        self._active = threading.BoundedSemaphore(self.max_active)
        self._timing = threading.Lock()
        self.seconds_per_analysis = 2.0  # running mean, for Retry-After

    def retry_after(self, waiting: int) -> int:
        """Seconds a refused client should wait: the running mean analysis time times the
        uploads ahead of it per active slot, 1 to 120."""
        with self._timing:
            per = self.seconds_per_analysis
        return int(min(120, max(1, round(per * max(1, waiting) / self.max_active))))

    def close(self) -> None:
        shutil.rmtree(self.temp_root, ignore_errors=True)

    # ------------------------------------------------------------------ analysis

    def analyse(self, data: bytes | BinaryIO, filename: str | None = None, *,
                axis: str | None = "axial", pixel_spacing: str | None = None) -> StoredResult:
        """Check, read, predict and summarise one upload; store and return the result.

        At most ``max_active`` analyses run at once; others wait here (``data`` may be a file
        object: it is read only once this one's turn comes). What the analysis allocated is
        handed back to the system before returning. Raises BadRequest (400/413/415) for
        anything wrong with the upload or the options. A model of named MR sequences takes
        here one image holding them as its channels, in the model's order.
        """
        return self._run([(None, data, filename)], axis=axis, pixel_spacing=pixel_spacing)

    def analyse_sequences(self, uploads: Mapping[str, tuple[bytes | BinaryIO, str | None]], *,
                          axis: str | None = "axial", pixel_spacing: str | None = None
                          ) -> StoredResult:
        """As :meth:`analyse`, for one upload per MR sequence of the model (name -> (data,
        file name)): each file is checked as one upload (within its share of the memory
        budget, :func:`mtl.serve.uploads.share`), read, and the slices are stacked in the
        model's order. A missing or unknown sequence is a 400 naming it."""
        names = self.channels
        if not names:
            raise BadRequest(400, "this model takes one grey image per slice, not named MR "
                                  "sequences: upload the scan in the field file")
        unknown = [n for n in uploads if n not in names]
        if unknown:
            raise BadRequest(400, f"unknown sequence(s) {', '.join(unknown)}; this model's "
                                  f"inputs are {', '.join(names)}")
        missing = [n for n in names if n not in uploads]
        if missing:
            image = ("" if self.context else f", or one {len(names)}-channel image holding them "
                     "in the field file")
            raise BadRequest(400, f"missing sequence(s) {', '.join(missing)}: this model needs "
                                  f"{', '.join(names)}; give {form_hint(names)}{image}")
        return self._run([(n, *uploads[n]) for n in names], axis=axis,
                         pixel_spacing=pixel_spacing)

    def _run(self, uploads: list[tuple[str | None, bytes | BinaryIO, str | None]], *,
             axis: str | None, pixel_spacing: str | None) -> StoredResult:
        with self._active:
            started = time.monotonic()
            read: list[tuple[str | None, bytes, str | None]] = []
            try:
                for sequence, data, filename in uploads:
                    if not isinstance(data, (bytes, bytearray, memoryview)):
                        data = data.read(self.limits.max_bytes + 1)
                    read.append((sequence, bytes(data), filename))
                    data = b""
                return self._analyse(read, axis=axis, pixel_spacing=pixel_spacing)
            finally:
                read.clear()  # the uploads' bytes are freed before the memory is handed back
                with self._timing:
                    spent = time.monotonic() - started
                    self.seconds_per_analysis = 0.7 * self.seconds_per_analysis + 0.3 * spent
                # a full collection takes ~0.1 s with TensorFlow loaded: worth it after a long
                # (large) analysis only; numpy's big arrays are freed by reference counting
                release_memory(collect=spent > 1.0)

    def _stage(self, uploads: list[tuple[str | None, bytes, str | None]], folder: Path,
               name: str) -> tuple[InputItem, str, dict[str, str]]:
        """Write the upload(s) into ``folder`` after the checks of
        :func:`~mtl.serve.uploads.stage_upload`; (input item, detected type, server path ->
        client file name). With named sequences every file (or each channel of one image)
        gets an equal share of the request's memory budget."""
        names = self.channels
        if uploads[0][0] is None:  # one file
            _seq, data, filename = uploads[0]
            limits = self.limits
            if names:
                kind = FILE_NAMES[detect(data)][0]
                if kind != "image":  # refused before its (larger) volume is staged
                    refuse_single_volume(InputItem(name, kind, Path(_client_name(filename)), ()),
                                         names, form_hint(names))
                limits = share(self.limits, len(names) * self.slices_read)
            item, detected = stage_upload(data, folder, name, limits)
            return item, detected, {str(item.paths[0]): _client_name(filename)}
        limits = share(self.limits, len(uploads) * self.slices_read)
        parts: list[tuple[str, InputItem]] = []
        types: list[str] = []
        labels: dict[str, str] = {}
        for i, (sequence, data, filename) in enumerate(uploads):
            sub = folder / str(i)
            sub.mkdir()
            try:
                part, detected = stage_upload(data, sub, display_name(filename), limits)
            except UploadRejected as exc:
                raise UploadRejected(exc.status, f"{sequence} ({_client_name(filename)}): "
                                                 f"{exc.message}") from None
            parts.append((str(sequence), part))
            types.append(detected)
            labels[str(part.paths[0])] = _client_name(filename)
        base = parts[display_channel([n for n, _p in parts])][1]
        item = InputItem(name, base.kind, base.source,
                         tuple(p for _n, part in parts for p in part.paths),
                         channels=tuple(parts))
        return item, "+".join(dict.fromkeys(types)), labels

    def _analyse(self, uploads: list[tuple[str | None, bytes, str | None]], *,
                 axis: str | None, pixel_spacing: str | None) -> StoredResult:
        axis_value = parse_axis(axis)
        spacing = parse_spacing(pixel_spacing)
        if uploads[0][0] is None:
            name = display_name(uploads[0][2])
            shown = _client_name(uploads[0][2])
        else:
            stems = [display_name(f) for _s, _d, f in uploads]
            name = safe_name(os.path.commonprefix(stems).rstrip("._-"))[:60]
            name = name if len(name) >= 2 else "upload"
            shown = "; ".join(f"{s}={_client_name(f)}" for s, _d, f in uploads)
        folder = Path(tempfile.mkdtemp(dir=self.temp_root))
        labels: dict[str, str] = {}
        try:
            try:
                item, detected, labels = self._stage(uploads, folder, name)
                analysis = analyse_case(
                    item, self.predictor, axis=axis_value, pixel_spacing=spacing,
                    presence_threshold=self.presence_threshold, model_info=self.model_info,
                    hint=form_hint(self.channels) if self.channels else None, label=shown,
                    lock=self._predict_lock)
            except UploadRejected as exc:
                log.debug("upload %s refused (%d): %s", shown, exc.status, exc.message)
                raise BadRequest(exc.status, exc.message) from None
            except InputError as exc:  # the traceback says where in the reading it failed
                log.debug("upload %s refused: %s", shown, exc, exc_info=True)
                raise BadRequest(400, _hide_paths(str(exc), folder, labels or shown)) from None
            case, pred, record = analysis.case, analysis.prediction, analysis.record
            record["source"] = shown
            record["detected_type"] = detected
            if case.channel_sources:  # client file names, never the server's paths
                record["input"]["files"] = {s: _client_name(f) for s, _d, f in uploads}
            record["warnings"] = [_hide_paths(w, folder, labels or shown)
                                  for w in record["warnings"]]
            files = {mask.name: Download(mask.data, mask.media_type, f"{name}_{mask.name}")
                     for mask in analysis.downloads()}
            # kept for overlays: the slices as they are drawn (small), the mask bit-packed;
            # named sequences: the one overlays are drawn on (case.slices may map the
            # temporary file: used only inside this block)
            shown_slices, factor = display_slices(case.shown_slices())
        finally:
            shutil.rmtree(folder, ignore_errors=True)

        findings, default = analysis.findings, analysis.default_slice
        result = StoredResult(name=name, kind=case.kind, payload={}, files=files,
                              slices=shown_slices, mask=PackedMask(pred.mask),
                              presence=pred.presence, type_probs=pred.type_probs,
                              findings=findings, view=analysis.view, default_slice=default,
                              upright=case.upright, display_factor=factor)
        record["outputs"] = sorted(files) + ["findings.json", "overlay.png"]
        files["findings.json"] = Download(record_bytes(record), "application/json",
                                          f"{name}_findings.json")
        px_mm2 = findings["pixel_area_mm2"]
        result.payload = {
            "id": result.id,
            **record,
            "n_slices": case.n_slices,
            "default_slice": default,
            "slices": [
                {"index": i, "evaluated": bool(pred.evaluated[i]),
                 "presence": _round(pred.presence[i]),
                 "area_px": int(pred.mask[i].sum()),
                 "area_mm2": None if px_mm2 is None else round(float(pred.mask[i].sum()) * px_mm2, 3)}
                for i in range(case.n_slices)
            ],
            "links": links(result.id, files),
        }
        self.store.put(result)
        result.payload["expires_in_seconds"] = round(self.store.expires_in(result))
        return result

    # ------------------------------------------------------------------ pictures

    def overlay_lines(self, result: StoredResult, index: int) -> list[str]:
        """The text above an overlay, as ``mtl infer --overlay`` writes it
        (:func:`mtl.infer.core.overlay_lines`)."""
        inp = result.payload.get("input") or {}
        return overlay_lines(result.findings, name=result.name,
                             volume=is_volume_kind(result.kind), index=index,
                             n_slices=result.n_slices, presence=result.presence[index],
                             type_probs=result.type_probs[index],
                             tumor_px=int(result.mask[index].sum()),
                             drawn=drawn_on(inp.get("channels"), inp.get("overlay_channel")))

    def overlay_png(self, result: StoredResult, index: int | None = None) -> bytes:
        """The overlay of one slice (the default slice if None), drawn once per result."""
        from mtl.infer.overlay import overlay_png, reduce_any

        index = result.default_slice if index is None else int(index)

        def render() -> bytes:
            with self._render_lock:  # one at a time: the mask slice is unpacked at full size
                try:
                    # the stored slice is at drawing size already; the mask is reduced alike
                    mask = reduce_any(result.mask[index], result.display_factor)
                    return overlay_png(result.slices[index], mask,
                                       lines=self.overlay_lines(result, index), view=result.view,
                                       model_line=self.model_info["card_line"])
                finally:
                    release_memory()

        return result.cached_overlay(index, render)

    def slice_mask_png(self, result: StoredResult, index: int) -> bytes:
        """One slice's mask in the file's array order (as in the mask volume)."""
        with self._render_lock:  # one at a time: a slice can be as large as max_pixels
            mask = result.mask[index : index + 1]
            if result.upright is not None and result.upright.moves_pixels:
                mask = result.upright.invert_stack(mask)
            return png_mask_bytes(mask[0])


def links(result_id: str, files: dict[str, Download]) -> dict[str, Any]:
    """A result's links; ``masks``: one per format (:func:`~mtl.infer.formats.link_formats`),
    None where the result has no such mask."""
    base = f"/results/{result_id}"
    formats = link_formats()
    masks = {key: f"{base}/{f.mask_name}" if f.mask_name in files else None
             for key, f in formats.items()}
    return {
        "self": base,
        "findings": f"{base}/findings.json",
        # the input's own mask format: PNG for images (and one-file DICOM), else the volume's
        "mask": next((masks[k] for k, f in formats.items() if f.mask_link and masks[k]), None),
        "masks": masks,
        "overlay": f"{base}/overlay.png",
        "slice_overlay": f"{base}/slices/{{index}}/overlay.png",
        "slice_mask": f"{base}/slices/{{index}}/mask.png",
    }


def _round(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def _hide_paths(message: str, folder: Path, labels: dict[str, str] | str) -> str:
    """A reader's message with the server's temporary paths replaced by the client's file
    names (``labels``: server path -> client name, or one name for every file)."""
    if isinstance(labels, str):
        return _without_paths(message, folder, labels)
    for path in sorted(labels, key=len, reverse=True):
        message = message.replace(path, labels[path])
    return message.replace(str(folder), "upload")


def _without_paths(message: str, folder: Path, shown: str) -> str:
    """A reader's message with the server's temporary paths replaced by the client's name."""
    for path in sorted(folder.glob("*"), key=lambda p: -len(str(p))):
        message = message.replace(str(path), shown)
    return message.replace(str(folder), "upload")


__all__ = ["BadRequest", "DISCLAIMER", "Service", "display_name", "form_hint", "links",
           "parse_axis", "parse_spacing"]
