"""One case, one code path: a scan in; the prediction, the findings record, the mask bytes per
format, the overlay text and the default view out.

``mtl infer`` (:func:`mtl.infer.runner.infer_case`) writes what :func:`analyse_case` returns
into a case folder; ``mtl serve`` (:class:`mtl.serve.service.Service`) keeps it in memory and
returns it. Neither reads, predicts, summarises or encodes a mask on its own.

The options both take are checked here, once, and raise ValueError (the command line turns it
into its one-line error, the server into a 400): :func:`parse_spacing`, :func:`check_threshold`
and :func:`parse_axis`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, ContextManager, Sequence

import numpy as np

from mtl.data.orientation import View, display_view
from mtl.data.context import describe
from mtl.data.preprocess import context_slices, sequence_names
from mtl.files import json_default
from mtl.infer.axes import format_axis as parse_axis
from mtl.infer.case import Case, InputError, InputItem
from mtl.infer.findings import case_findings, mask_rule_note
from mtl.infer.formats import FORMATS, MaskFile, mask_writer
from mtl.infer.formats.image import slice_masks
from mtl.infer.predict import CasePrediction, Predictor, check_threshold
from mtl.infer.readers import load_case
from mtl.model.card import provenance

log = logging.getLogger(__name__)

DISCLAIMER = "research software output; not a medical device, not a diagnosis"


# --------------------------------------------------------------------------- input checks


def parse_spacing(value: str | Sequence[float] | None) -> tuple[float, float] | None:
    """Pixel spacing of 2-D images: "0.5", "0.5,0.4" or "0.5x0.4" (row, column mm), or a pair;
    None or blank -> None. ValueError unless one or two finite values above 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = ([float(v) for v in value.replace("x", ",").split(",")] if isinstance(value, str)
                 else [float(v) for v in value])
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or not all(math.isfinite(p) for p in parts) or min(parts) <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError("give ROW_MM,COL_MM or one value in mm, e.g. 0.5,0.5") from None
    return (parts[0], parts[1])


# --------------------------------------------------------------------------- the case


@dataclass
class CaseAnalysis:
    """One analysed case (:func:`analyse_case`). ``record`` is the findings record (what
    ``findings.json`` holds, less ``outputs``, which the caller adds); ``notes`` of mask writing
    go to ``record["warnings"]``."""

    item: InputItem
    case: Case
    prediction: CasePrediction
    presence_threshold: float
    #: the final 0/1 mask in the input's own array order
    mask_native: np.ndarray
    findings: dict[str, Any]
    record: dict[str, Any]
    #: how slices are drawn (edge letters, pixel aspect)
    view: View
    #: the slice to show first: the largest tumor cross-section, else the highest presence
    default_slice: int

    @property
    def name(self) -> str:
        return self.item.name

    def mask_files(self, formats: Sequence[str] | None = None) -> list[MaskFile]:
        """The mask files ``mtl infer`` writes: each of ``formats`` (None: the input's own
        format). A requested format the case cannot give is said in ``record["warnings"]`` and
        ``record["not_written"]``; a volume that gets no mask in patient geometry gets one PNG
        per slice in the pixel grid instead (``record["mask_in_pixel_grid"]``, and a warning)."""
        case, record = self.case, self.record
        requested = formats is not None
        files: list[MaskFile] = []
        for name in formats or (case.format.mask_format,):
            writer = mask_writer(name)
            reason = writer.cannot_write(case)
            if reason is None:
                files += writer.write_mask(case, self.prediction.mask, self.mask_native,
                                           record["warnings"])
            elif requested:  # in findings.json, and for the exit status
                note = f"{writer.mask_label} not written: {reason}"
                record["warnings"].append(note)
                record.setdefault("not_written", []).append(note)
        if not files and case.is_volume:
            files = slice_masks(case, self.prediction.mask)
            record["warnings"].append(
                f"no {case.format.geometry_mask} written: {case.format.no_geometry(case)}; the "
                f"mask was written in the pixel grid instead, mask_slices/slice_*.png "
                f"({case.n_slices} slice(s), 0/255, the source images' rows and columns, no "
                "patient coordinates)")
            record["mask_in_pixel_grid"] = True
        return files

    def downloads(self) -> list[MaskFile]:
        """The masks ``mtl serve`` offers for this kind of upload (``Format.downloads``), one
        file each under its format's name. One that does not apply is left out and, where its
        format says so, noted in ``record["warnings"]``; one of a format with
        ``optional_download`` (the DICOM SEG) that fails to build is left out with a note (the
        others still work); any other failure is an error."""
        case, notes = self.case, self.record["warnings"]
        files: list[MaskFile] = []
        for name in case.format.downloads:
            writer = mask_writer(name)
            if writer.cannot_write(case) is not None:
                if writer.missing_download:
                    notes.append(f"no {writer.download_title} download: "
                                 f"{writer.missing_download}")
                continue
            try:
                made = writer.write_mask(case, self.prediction.mask, self.mask_native, notes)
            except Exception as exc:  # noqa: BLE001 - the other downloads still work
                if not writer.optional_download:
                    raise
                log.warning("%s of %s failed", writer.download_title, self.name, exc_info=True)
                notes.append(f"no {writer.download_title} download: it could not be made ({exc})")
                continue
            files += ([MaskFile(writer.mask_name, made[0].data, made[0].media_type, name)]
                      if len(made) == 1 else made)
        return files

    def overlay_lines(self, index: int) -> list[str]:
        """The text above the overlay of slice ``index`` (:func:`overlay_lines`)."""
        pred = self.prediction
        return overlay_lines(self.findings, name=self.case.name, volume=self.case.is_volume,
                             index=index, n_slices=self.case.n_slices,
                             presence=pred.presence[index], type_probs=pred.type_probs[index],
                             tumor_px=int(pred.mask[index].sum()),
                             drawn=drawn_on(self.case.channel_names, self.case.display_name))


def analyse_case(
    item: InputItem,
    predictor: Predictor,
    *,
    axis: int | str = "axial",
    pixel_spacing: tuple[float, float] | None = None,
    presence_threshold: float | None = None,
    model_info: dict[str, Any] | None = None,
    hint: str | None = None,
    label: str | None = None,
    lock: ContextManager[Any] | None = None,
) -> CaseAnalysis:
    """Read, predict and summarise one input. Raises InputError (naming the file) for an input
    that cannot be used.

    ``presence_threshold``: of the presence decision (None: the predictor's); ``model_info``:
    the record's ``model`` entry (None: the predictor's classes, preprocessing and provenance);
    ``hint``: how to give one file per sequence, for the message that refuses a single volume
    to a model of named sequences; ``label``: how the input is named in a prediction error
    (default: its source); ``lock``: held around the network call (a server's one model).
    """
    case = load_case(item, axis=axis, pixel_spacing=pixel_spacing,
                     channels=sequence_names(predictor.preprocessing), hint=hint,
                     context=context_slices(predictor.preprocessing))
    threshold = (predictor.presence_threshold if presence_threshold is None
                 else float(presence_threshold))
    try:
        with lock if lock is not None else contextlib.nullcontext():
            pred = predictor.predict(case.slices, presence_threshold=threshold)
    except ValueError as exc:
        raise InputError(f"{label or item.source}: {exc}") from exc
    mask_native = case.to_native(pred.mask)
    findings = case_findings(
        mask=mask_native, presence=pred.presence, type_probs=pred.type_probs,
        classes=predictor.classes, presence_threshold=threshold,
        slice_axis=case.slice_axis, affine=case.affine, orientation_known=case.orientation_known,
        spacing=case.spacing, image=case.native_image() if case.orientation_known else None,
    )
    findings["mask_rule"] = mask_rule_note(pred, predictor.mask_rule)
    record = findings_record(item, case, findings, predictor, threshold, model_info)
    view = display_view(case)
    if not case.is_volume and case.spacing:  # an image's own pixel aspect
        view = View(pixel_aspect=case.spacing[0] / case.spacing[1])
    tumor = findings["tumor"]
    if not case.is_volume:
        default = 0
    elif tumor["largest_slice"] is not None:
        default = int(tumor["largest_slice"])
    else:
        default = int(np.nanargmax(np.where(pred.evaluated, pred.presence, -np.inf)))
    return CaseAnalysis(item, case, pred, threshold, mask_native, findings, record, view, default)


def findings_record(item: InputItem, case: Case, findings: dict[str, Any], predictor: Predictor,
                    presence_threshold: float, model_info: dict[str, Any] | None
                    ) -> dict[str, Any]:
    """The findings record of a case (``findings.json`` less ``outputs``)."""
    orientation = None
    if case.orientation_known and case.affine is not None:
        from nibabel.orientations import aff2axcodes

        orientation = "".join(aff2axcodes(case.affine))
    record = {
        "case": item.name,
        "source": (str(item.source) if not case.channel_sources else
                   "; ".join(f"{n}={p}" for n, p in case.channel_sources.items())),
        "kind": case.kind,
        "status": "ok",
        "input": {
            "shape": list(case.native_shape),
            "n_slices": case.n_slices,
            "slice_axis": case.slice_axis,
            "spacing_mm": list(case.spacing) if case.spacing else None,
            "orientation": orientation,
            "affine_ras_mm": case.affine.round(6).tolist() if case.affine is not None else None,
            "index_order": case.format.index_order,
        },
        "settings": {
            "threshold": predictor.threshold,
            "presence_threshold": presence_threshold,
            "flip_tta": predictor.tta,
            "largest_component": predictor.largest_component,
            "mask_rule": predictor.mask_rule,
        },
        "model": model_info or {"classes": predictor.classes,
                                "preprocessing": predictor.preprocessing,
                                **provenance(predictor.model)},
        "findings": findings,
        "warnings": list(case.warnings),
        "disclaimer": DISCLAIMER,
    }
    if case.channel_names:  # the MR sequences the network saw, and the one pictures show
        record["input"]["channels"] = list(case.channel_names)
        record["input"]["overlay_channel"] = case.display_name
        if case.channel_sources:
            record["input"]["files"] = dict(case.channel_sources)
    return record


def record_bytes(record: dict[str, Any]) -> bytes:
    """A findings record as the bytes of ``findings.json``."""
    text = json.dumps(record, indent=1, default=json_default, allow_nan=False) + "\n"
    return text.encode("utf-8")


# --------------------------------------------------------------------------- overlay text


def _fmt(p: float | None, digits: int = 2) -> str:
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.{digits}f}"


def drawn_on(channels: Sequence[str] | None, shown: str | None) -> str | None:
    """"drawn on flair (input: pre-contrast, flair, post-contrast)" for a case of named
    sequences, None otherwise: said on every overlay."""
    if not channels:
        return None
    return f"drawn on {shown} (input: {describe(channels)})"


def area_text(n_px: int, px_mm2: float | None) -> str:
    """"150 px = 30.0 mm²" (mm² when the pixel size is known)."""
    return f"{n_px} px" + (f" = {n_px * px_mm2:.1f} mm²" if px_mm2 is not None else "")


def overlay_lines(findings: dict[str, Any], *, name: str, volume: bool, index: int,
                  n_slices: int, presence: float, type_probs: Sequence[float], tumor_px: int,
                  drawn: str | None = None) -> list[str]:
    """The text above the overlay of slice ``index``: the case's label and presence, then this
    slice's presence and type probabilities and tumor area (slices counted from 1, as people
    count them), and for named sequences the one drawn."""
    classes = list(findings["type"]["probabilities"])
    label = findings["type"]["label"]
    presence_all = findings["presence"]
    tumor = findings["tumor"]
    area = area_text(tumor_px, findings["pixel_area_mm2"])
    types = "  ".join(f"{c} {_fmt(p)}" for c, p in zip(classes, type_probs))
    head = (f"{name}: {label} ({_fmt(findings['type']['probabilities'][label])})   "
            f"tumor {'YES' if presence_all['decision'] else 'no'} "
            f"(p={_fmt(presence_all['probability'])})")
    if not volume:
        lines = [head, "type: " + types, f"tumor area {area}"]
    else:
        vol = tumor["volume_ml"]
        side = (tumor.get("hemisphere") or {}).get("side")
        lines = [head + (f"   volume {vol:.2f} mL" if vol is not None else ""),
                 f"slice {index + 1}/{n_slices}: presence {_fmt(presence)}  {types}",
                 f"tumor area on this slice {area}" + (f"   hemisphere {side}" if side else "")]
    return lines + ([drawn] if drawn else [])


def is_volume_kind(kind: str) -> bool:
    """Whether inputs of ``kind`` are volumes (cut into slices)."""
    return FORMATS[kind].is_volume


__all__ = ["CaseAnalysis", "DISCLAIMER", "analyse_case", "area_text", "check_threshold",
           "drawn_on", "findings_record", "is_volume_kind", "overlay_lines", "parse_axis",
           "parse_spacing", "record_bytes"]
