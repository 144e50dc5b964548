"""``mtl infer`` without the command line: inputs -> per-case outputs and one findings table.

Output layout under ``out``::

    findings.csv                  one row per input (failed ones too, with the error)
    <case>/findings.json          the findings record (written last: its presence marks a
                                  complete case)
    <case>/mask.png               images: 0/255 mask at the image's size
    <case>/mask.nii.gz            NIfTI: uint8 label volume, the input's affine and header
    <case>/mask.nrrd              NRRD: uint8 label volume, the input's geometry fields
    <case>/seg.dcm                DICOM: DICOM SEG referencing the source series
    <case>/mask_slices/slice_NNN.png   volumes with --format png: one mask per slice; also a
                                  volume whose mask has no patient geometry to be written in
                                  (a DICOM without position/orientation: a warning says so)
    <case>/overlay.png | overlay_slice_NNN.png    --overlay
    <case>/contact_sheet.png      --overlay, volumes with tumor
    <case>/gradcam.png | gradcam_slice_NNN.png    --explain

A case that fails leaves nothing behind (files written for it are removed); the others run.
With ``force``, a case that fails also loses the outputs an earlier run wrote for it (its
``findings.json``, masks and pictures), so no old "ok" record contradicts the failure in
``findings.csv``; a case that succeeds replaces them, and outputs the new run did not write
(e.g. an overlay of an earlier ``--overlay`` run) are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.infer.findings import case_findings, csv_row, mask_rule_note
from mtl.model.card import provenance
from mtl.infer.predict import CasePrediction, Predictor
from mtl.data.preprocess import channel_names
from mtl.infer.readers import Case, InputError, InputItem, channel_item, discover, load_case
from mtl.infer.writers import (
    OutputExistsError,
    write_csv,
    write_dicom_seg,
    write_json,
    write_mask_nifti,
    write_mask_nifti_affine,
    write_mask_nrrd,
    write_mask_nrrd_affine,
    write_mask_png,
)

log = logging.getLogger(__name__)

FORMATS = ("png", "nifti", "nrrd", "dicom-seg")
NATIVE_FORMAT = {"image": "png", "nifti": "nifti", "nrrd": "nrrd", "dicom": "dicom-seg"}
#: per-slice output files a --force rerun replaces (stale ones from an earlier run are removed)
PER_SLICE_PATTERNS = ("overlay_slice_*.png", "gradcam_slice_*.png", "mask_slices/slice_*.png")
#: the other files ``mtl infer`` writes into a case folder
CASE_FILES = ("findings.json", "mask.png", "mask.nii.gz", "mask.nrrd", "seg.dcm", "overlay.png",
              "gradcam.png", "contact_sheet.png")
#: mask formats a kind of input can never give: asking for them is refused before any work
#: (``None``: every kind); what only the file itself can rule out is reported per case
FORMAT_KINDS: dict[str, tuple[str, ...] | None] = {
    "png": None,
    "nifti": ("nifti", "dicom", "nrrd"),  # needs a 3-D geometry
    "nrrd": ("nifti", "dicom", "nrrd"),  # needs a 3-D geometry
    "dicom-seg": ("dicom",),  # needs the source DICOM series
}
FORMAT_NEEDS = {"nifti": "a volume (a 2-D image has no 3-D geometry)",
                "nrrd": "a volume (a 2-D image has no 3-D geometry)",
                "dicom-seg": "a DICOM series to reference"}


@dataclass
class InferOptions:
    """What to write and how to read. ``formats`` None = each input's native mask format."""

    formats: tuple[str, ...] | None = None
    overlay: bool = False
    overlay_slices: str = "tumor"  # "tumor" or "all" (volumes)
    explain: bool = False
    presence_threshold: float | None = None  # None: the predictor's threshold
    axis: int | str = "axial"
    pixel_spacing: tuple[float, float] | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.formats is not None:
            unknown = sorted(set(self.formats) - set(FORMATS))
            if unknown:
                raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
        if self.overlay_slices not in ("tumor", "all"):
            raise ValueError(f"overlay_slices must be 'tumor' or 'all', got {self.overlay_slices!r}")


@dataclass
class CaseResult:
    name: str
    source: str
    kind: str | None
    status: str  # "ok" | "failed"
    error: str = ""
    record: dict[str, Any] | None = None
    folder: Path | None = None
    outputs: list[Path] = field(default_factory=list)
    #: requested outputs that this case could not give, one sentence each
    not_written: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    out: Path
    cases: list[CaseResult]
    csv_path: Path | None

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status != "ok"]

    @property
    def not_written(self) -> list[str]:
        """"<case>: <what was not written and why>" for every requested output not written."""
        return [f"{c.name}: {note}" for c in self.cases for note in c.not_written]


def parse_formats(text: str | None) -> tuple[str, ...] | None:
    """"png,nifti" -> ("png", "nifti"); empty/None -> None (native)."""
    if not text:
        return None
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    aliases = {"nii": "nifti", "nii.gz": "nifti", "seg": "dicom-seg", "dicomseg": "dicom-seg",
               "dicom": "dicom-seg", "nhdr": "nrrd"}
    values = tuple(aliases.get(v, v) for v in values)
    unknown = [v for v in values if v not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    return values


def format_refusals(items: Sequence[InputItem], formats: Sequence[str] | None) -> list[str]:
    """Why requested mask formats cannot be written for some inputs (empty: all can).

    Decided from the inputs' kinds alone, so ``mtl infer`` refuses before any work starts.
    """
    problems = []
    for fmt in formats or ():
        kinds = FORMAT_KINDS.get(fmt)
        if kinds is None:
            continue
        unfit = [item for item in items if item.kind not in kinds]
        if unfit:
            shown = ", ".join(f"{item.source} ({item.kind})" for item in unfit[:5])
            more = f" and {len(unfit) - 5} more" if len(unfit) > 5 else ""
            problems.append(f"--format {fmt} needs {FORMAT_NEEDS.get(fmt, ' or '.join(kinds))}; "
                            f"it cannot be written for {shown}{more}")
    return problems


def _slice_tag(index: int, n: int) -> str:
    return f"slice_{index:0{max(3, len(str(n - 1)))}d}"


def _fmt(p: float | None, digits: int = 2) -> str:
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.{digits}f}"


class CaseWriter:
    """Writes one case's files, remembering them so a failure can remove them all."""

    def __init__(self, folder: Path, force: bool) -> None:
        self.folder = folder
        self.force = force
        self.written: list[Path] = []

    def __call__(self, fn: Any, name: str, *args: Any, **kwargs: Any) -> Path:
        path = fn(self.folder / name, *args, force=self.force, **kwargs)
        self.written.append(path)
        return path

    def discard(self) -> None:
        for path in reversed(self.written):
            path.unlink(missing_ok=True)
        for sub in (self.folder / "mask_slices", self.folder):
            try:
                sub.rmdir()  # only if empty
            except OSError:
                pass

    def remove_stale(self) -> None:
        """Remove the outputs of an earlier run that this one did not write (--force)."""
        keep = {p.resolve() for p in self.written}
        for path in earlier_outputs(self.folder):
            if path.resolve() not in keep:
                path.unlink()
        with contextlib.suppress(OSError):
            (self.folder / "mask_slices").rmdir()  # only if empty


def earlier_outputs(folder: Path) -> list[Path]:
    """The files an earlier ``mtl infer`` wrote into a case folder: its known output names and
    what its ``findings.json`` lists under ``outputs`` (only plain files inside ``folder``)."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    names = set(CASE_FILES)
    try:
        listed = json.loads((folder / "findings.json").read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError, AttributeError):
        listed = None
    if isinstance(listed, list):
        names |= {n for n in listed if isinstance(n, str) and not Path(n).is_absolute()
                  and ".." not in Path(n).parts}
    found = {folder / n for n in names}
    found |= {p for pattern in PER_SLICE_PATTERNS for p in folder.glob(pattern)}
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def clear_case_outputs(folder: Path) -> list[Path]:
    """Remove an earlier run's outputs of a case that failed now (--force): the failure must
    be what every output says. Other files are left; emptied folders are removed."""
    removed = earlier_outputs(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    for sub in (folder / "mask_slices", folder):
        try:
            sub.rmdir()  # only if empty
        except OSError:
            pass
    return removed


def check_case_folder(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: exists and is not a folder")
    if not force and folder.is_dir() and any(folder.iterdir()):
        raise OutputExistsError(f"{folder}: output folder exists and is not empty; "
                                "use --force to overwrite")


def infer_case(
    item: InputItem,
    predictor: Predictor,
    out: Path,
    options: InferOptions,
    *,
    gradcam: Any = None,
    model_info: dict[str, Any] | None = None,
) -> CaseResult:
    """Read, predict and write one input. Raises InputError / OutputExistsError / others."""
    folder = out / item.name
    check_case_folder(folder, options.force)
    case = load_case(item, axis=options.axis, pixel_spacing=options.pixel_spacing,
                     channels=channel_names(predictor.preprocessing))
    presence_threshold = (predictor.presence_threshold if options.presence_threshold is None
                          else options.presence_threshold)
    try:
        pred = predictor.predict(case.slices, presence_threshold=presence_threshold)
    except ValueError as exc:
        raise InputError(f"{item.source}: {exc}") from exc
    mask_native = case.to_native(pred.mask)
    findings = case_findings(
        mask=mask_native, presence=pred.presence, type_probs=pred.type_probs,
        classes=predictor.classes, presence_threshold=presence_threshold,
        slice_axis=case.slice_axis, affine=case.affine, orientation_known=case.orientation_known,
        spacing=case.spacing, image=case.native_image() if case.orientation_known else None,
    )
    findings["mask_rule"] = mask_rule_note(pred, predictor.mask_rule)
    record = findings_record(item, case, findings, predictor, options, presence_threshold, model_info)
    writer = CaseWriter(folder, options.force)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _write_masks(writer, case, pred, mask_native, options, record)
        if options.overlay or options.explain:
            _write_pictures(writer, case, pred, findings, options, gradcam,
                            model_line=record["model"].get("card_line"))
        record["outputs"] = [str(p.relative_to(folder)) for p in writer.written] + ["findings.json"]
        writer(write_json, "findings.json", record)
        if options.force:
            writer.remove_stale()
    except BaseException:
        writer.discard()
        raise
    return CaseResult(item.name, str(item.source), item.kind, "ok", record=record, folder=folder,
                      outputs=list(writer.written), not_written=list(record.get("not_written", [])))


def findings_record(item: InputItem, case: Case, findings: dict[str, Any], predictor: Predictor,
            options: InferOptions, presence_threshold: float,
            model_info: dict[str, Any] | None) -> dict[str, Any]:
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
            "index_order": {"image": "row, col", "nifti": "i, j, k (file array order)",
                            "nrrd": "i, j, k (file axis order, fastest first)",
                            "dicom": "slice, row, col"}[case.kind],
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
        "disclaimer": "research software output; not a medical device, not a diagnosis",
    }
    if case.channel_names:  # the MR sequences the network saw, and the one pictures show
        record["input"]["channels"] = list(case.channel_names)
        record["input"]["overlay_channel"] = case.display_name
        if case.channel_sources:
            record["input"]["files"] = dict(case.channel_sources)
    return record


def drawn_on(case: Case) -> str | None:
    """"drawn on flair (input: pre-contrast, flair, post-contrast)" for a case of named
    sequences, None otherwise: said on every overlay."""
    if not case.channel_names:
        return None
    return f"drawn on {case.display_name} (input: {', '.join(case.channel_names)})"


def _write_masks(writer: CaseWriter, case: Case, pred: CasePrediction, mask_native: np.ndarray,
                 options: InferOptions, record: dict[str, Any]) -> None:
    formats = options.formats or (NATIVE_FORMAT[case.kind],)
    requested = options.formats is not None  # else each kind's native format, if it can be given
    before = len(writer.written)
    for fmt in formats:
        if fmt == "png":
            if case.kind == "image":
                writer(write_mask_png, "mask.png", pred.mask[0])
            else:
                native_slices = case.native_slices(pred.mask)  # the file's array order
                for i in range(case.n_slices):
                    writer(write_mask_png, f"mask_slices/{_slice_tag(i, case.n_slices)}.png",
                           native_slices[i])
        elif fmt == "nifti":
            if case.kind == "nifti":
                writer(write_mask_nifti, "mask.nii.gz", mask_native, case.nifti)
            elif case.kind == "dicom" and case.affine is not None:
                writer(write_mask_nifti_affine, "mask.nii.gz", pred.mask, case.affine)
            elif case.kind == "nrrd" and case.affine is not None:
                writer(write_mask_nifti_affine, "mask.nii.gz", mask_native, case.affine)
            else:
                _not_written(record, f"nifti mask not written: a {case.kind} input has no "
                                     "3-D geometry")
        elif fmt == "nrrd":
            if case.kind == "nrrd" and case.nrrd is not None:
                writer(write_mask_nrrd, "mask.nrrd", mask_native, case.nrrd)
            elif case.kind in ("nifti", "dicom") and case.affine is not None:
                writer(write_mask_nrrd_affine, "mask.nrrd", mask_native, case.affine)
            else:
                _not_written(record, f"nrrd mask not written: a {case.kind} input has no "
                                     "3-D geometry")
        elif fmt == "dicom-seg":
            if case.kind == "dicom" and case.orientation_known:
                # inherited values invalid in a SEG are repaired or left out, and said so
                writer(write_dicom_seg, "seg.dcm", pred.mask, case.datasets,
                       notes=record["warnings"])
            elif requested:
                _not_written(record, "dicom-seg not written: it needs a DICOM series with "
                                     "position and orientation")
    if len(writer.written) == before and case.is_volume:
        # no mask in patient geometry could be written: the mask in the pixel grid, said so
        native_slices = case.native_slices(pred.mask)
        for i in range(case.n_slices):
            writer(write_mask_png, f"mask_slices/{_slice_tag(i, case.n_slices)}.png",
                   native_slices[i])
        what = "DICOM SEG" if case.kind == "dicom" else "mask volume"
        note = (f"no {what} written: {_no_geometry(case)}; the mask was written in the pixel "
                f"grid instead, mask_slices/slice_*.png ({case.n_slices} slice(s), 0/255, the "
                "source images' rows and columns, no patient coordinates)")
        record["warnings"].append(note)
        record["mask_in_pixel_grid"] = True


def _no_geometry(case: Case) -> str:
    """Why a volume has no patient geometry for its mask, in words."""
    if case.kind == "dicom" and case.datasets:
        first = case.datasets[0]
        lacking = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
                   if getattr(first, k, None) is None]
        if lacking:
            return f"the DICOM has no {'/'.join(lacking)}"
    return "the input has no position and orientation in patient space"


def _not_written(record: dict[str, Any], note: str) -> None:
    """A requested output this case cannot give: in findings.json, and for the exit status."""
    record["warnings"].append(note)
    record.setdefault("not_written", []).append(note)


def _write_pictures(writer: CaseWriter, case: Case, pred: CasePrediction,
                    findings: dict[str, Any], options: InferOptions, gradcam: Any,
                    model_line: str | None = None) -> None:
    from mtl.data.orientation import display_view
    from mtl.infer.overlay import render_contact_sheet, render_overlay

    classes = list(findings["type"]["probabilities"])
    label = findings["type"]["label"]
    presence = findings["presence"]
    tumor = findings["tumor"]
    px_mm2 = findings["pixel_area_mm2"]
    view = display_view(case)
    if case.kind == "image" and case.spacing:
        view = type(view)(pixel_aspect=case.spacing[0] / case.spacing[1])

    def area(n_px: int) -> str:
        return f"{n_px} px" + (f" = {n_px * px_mm2:.1f} mm²" if px_mm2 is not None else "")

    def type_line(probs: Sequence[float]) -> str:
        return "  ".join(f"{c} {_fmt(p)}" for c, p in zip(classes, probs))

    decision = "YES" if presence["decision"] else "no"
    head = (f"{case.name}: {label} ({_fmt(findings['type']['probabilities'][label])})   "
            f"tumor {decision} (p={_fmt(presence['probability'])})")
    channel_line = drawn_on(case)
    if case.kind == "image":
        chosen = [0]
    elif options.overlay_slices == "all":
        chosen = list(range(case.n_slices))
    else:
        chosen = list(tumor["slices"]) or [int(np.nanargmax(np.nan_to_num(pred.presence, nan=-1)))]
    heat_maps: dict[int, np.ndarray] = {}
    if options.explain:
        if gradcam is None:
            raise RuntimeError("--explain needs the model (Grad-CAM)")
        run = [i for i in chosen if pred.evaluated[i]]
        maps = gradcam.slice_maps([case.slices[i] for i in run], classes.index(label))
        heat_maps = dict(zip(run, maps))
    for i in chosen:
        n_px = int(pred.mask[i].sum())
        if case.kind == "image":
            lines = [head, "type: " + type_line(pred.type_probs[i]),
                     f"tumor area {area(n_px)}"]
            name = ""
        else:
            vol = tumor["volume_ml"]
            lines = [head + (f"   volume {vol:.2f} mL" if vol is not None else ""),
                     f"slice {i + 1}/{case.n_slices}: presence {_fmt(pred.presence[i])}  "
                     + type_line(pred.type_probs[i]),
                     f"tumor area on this slice {area(n_px)}"
                     + (f"   hemisphere {tumor['hemisphere']['side']}"
                        if tumor.get("hemisphere") else "")]
            name = "_" + _slice_tag(i, case.n_slices)
        if channel_line:
            lines.append(channel_line)
        if options.overlay:
            writer(render_overlay, f"overlay{name}.png", case.shown(i), pred.mask[i],
                   lines=lines, view=view, model_line=model_line)
        if options.explain and i in heat_maps:
            writer(render_overlay, f"gradcam{name}.png", case.shown(i), pred.mask[i],
                   lines=lines, view=view, heat=heat_maps[i], heat_title=f"Grad-CAM: {label}",
                   model_line=model_line)
    if options.overlay and case.is_volume and tumor["slices"]:
        slices = tumor["slices"]
        # counted from 1, as people count slices (file names keep the 0-based array index)
        captions = [f"slice {i + 1}: {area(int(pred.mask[i].sum()))}" for i in slices]
        title = (f"{case.name}: {label}, tumor on {len(slices)} slice(s)"
                 + (f", {tumor['volume_ml']:.2f} mL" if tumor["volume_ml"] is not None else "")
                 + (f"; {channel_line}" if channel_line else ""))
        writer(render_contact_sheet, "contact_sheet.png", [case.shown(i) for i in slices],
               [pred.mask[i] for i in slices], captions, title=title, view=view,
               model_line=model_line)


def run(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    options: InferOptions | None = None,
    *,
    progress: bool | None = False,
    model_path: str | Path | None = None,
    sequences: Sequence[tuple[str, str | Path]] | None = None,
) -> RunResult:
    """Infer every input; write per-case outputs and ``out/findings.csv``.

    ``sequences``: (name, file) pairs, one file per MR sequence of a model with named input
    channels (``--input NAME=FILE``): one more case, its slices stacked in the model's order
    (:func:`mtl.infer.readers.channel_item`); a wrong, repeated or missing name, or any
    ``sequences`` for a model without named channels, raises ValueError before anything runs.

    Raises OutputExistsError before doing anything if ``out/findings.csv`` exists and
    ``options.force`` is false, and ValueError if a requested format cannot be written for an
    input's kind (:func:`format_refusals`). Per-input problems never stop the run: they become
    failed cases; a requested output a case cannot give is listed in ``RunResult.not_written``.
    """
    from tqdm import tqdm

    options = options or InferOptions()
    out = Path(out)
    csv_path = out / "findings.csv"
    if csv_path.exists() and not options.force:
        raise OutputExistsError(f"{csv_path}: exists (results of an earlier run); use --force "
                                "to overwrite or choose another --out")
    items, bad = discover(inputs)
    if sequences:
        extra = channel_item(sequences, channel_names(predictor.preprocessing))
        taken = {item.name.lower() for item in items}
        name, k = extra.name, 2
        while name.lower() in taken:
            name, k = f"{extra.name}-{k}", k + 1
        items.append(replace(extra, name=name))
    refused = format_refusals(items, options.formats)
    if refused:
        raise ValueError("; ".join(refused) + ". Nothing was run")
    out.mkdir(parents=True, exist_ok=True)
    gradcam = None
    if options.explain:
        if predictor.model is None:
            raise ValueError("--explain needs a loaded model")
        from mtl.infer.gradcam import GradCam

        gradcam = GradCam(predictor.model)
    model_info = {"path": str(model_path) if model_path else None, "classes": predictor.classes,
                  "preprocessing": predictor.preprocessing, **provenance(predictor.model)}
    results = [CaseResult(Path(src).name, src, None, "failed", error=f"{src}: {reason}")
               for src, reason in bad]
    # progress None: a bar only when stderr is a terminal
    disable = None if progress is None else not progress
    bar = tqdm(items, desc="infer", unit="case", file=sys.stderr, disable=disable,
               dynamic_ncols=True)
    try:
        for item in bar:
            bar.set_postfix_str(item.name[-30:], refresh=False)
            try:
                results.append(infer_case(item, predictor, out, options, gradcam=gradcam,
                                          model_info=model_info))
            except OutputExistsError as exc:  # not ours to remove
                results.append(CaseResult(item.name, str(item.source), item.kind, "failed",
                                          error=str(exc)))
            except InputError as exc:
                results.append(_failed_case(item, str(exc), out, options))
            except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
                log.debug("case %s failed", item.name, exc_info=True)
                results.append(_failed_case(item, f"{item.source}: unexpected error "
                                                  f"({type(exc).__name__}: {exc})", out, options))
        if options.force:  # inputs gone since an earlier run into this folder
            _clear_vanished(out, [r for r in results if r.kind is None],
                            {item.name.lower() for item in items})
    finally:
        bar.close()
        rows = [csv_row(_row_record(r), predictor.classes) for r in results]
        written = write_csv(csv_path, rows, force=True) if rows else None
    return RunResult(out, results, written)


def _failed_case(item: InputItem, error: str, out: Path, options: InferOptions) -> CaseResult:
    """A failed case; with --force, the outputs an earlier run wrote for it are removed."""
    folder = out / item.name
    if options.force and clear_case_outputs(folder):
        error += f" (the earlier outputs in {folder} were removed)"
    return CaseResult(item.name, str(item.source), item.kind, "failed", error=error)


def _clear_vanished(out: Path, failed: list[CaseResult], names: set[str]) -> None:
    """--force: remove the earlier outputs of inputs that failed before they could be read
    (missing, not a regular file): case folders whose findings.json names such an input, or a
    file inside such a folder, as its source; folders of this run's cases are left alone."""
    if not failed or not out.is_dir():
        return
    gone = {r.source: r for r in failed}
    for folder in sorted(out.iterdir()):
        if folder.name.lower() in names or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            source = json.loads((folder / "findings.json").read_text(encoding="utf-8"))["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for src, result in gone.items():
            if source == src or Path(src) in Path(str(source)).parents:
                if clear_case_outputs(folder):
                    result.error += f" (the earlier outputs in {folder} were removed)"
                break


def _row_record(result: CaseResult) -> dict[str, Any]:
    if result.record is not None:
        return {**result.record, "folder": str(result.folder)}
    return {"case": result.name, "source": result.source, "kind": result.kind,
            "status": result.status, "error": result.error}


__all__ = ["FORMATS", "CaseResult", "InferOptions", "RunResult", "check_case_folder",
           "format_refusals", "infer_case", "parse_formats", "run"]
