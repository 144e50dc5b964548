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

from mtl.data.preprocess import sequence_names
from mtl.infer.case import InputError, InputItem
from mtl.infer.channels import channel_item
from mtl.infer.core import CaseAnalysis, analyse_case, check_threshold, parse_spacing, record_bytes
from mtl.infer.discovery import discover
from mtl.infer.findings import csv_row
from mtl.infer.formats import (  # noqa: F401 - parse_formats, format_refusals: imported from here
    MASK_FORMAT_NAMES,
    check_formats,
    format_refusals,
    mask_names,
    parse_formats,
    slice_tag,
)
from mtl.infer.predict import Predictor
from mtl.infer.writers import OutputExistsError, write_bytes, write_csv
from mtl.model.card import provenance

log = logging.getLogger(__name__)

#: the mask formats of ``--format``
FORMATS = MASK_FORMAT_NAMES
#: per-slice output files a --force rerun replaces (stale ones from an earlier run are removed)
PER_SLICE_PATTERNS = ("overlay_slice_*.png", "gradcam_slice_*.png", "mask_slices/slice_*.png")


def case_files() -> tuple[str, ...]:
    """The other files ``mtl infer`` writes into a case folder: findings.json, each format's
    mask (:func:`~mtl.infer.formats.mask_names`) and the pictures."""
    return ("findings.json", *mask_names(), "overlay.png", "gradcam.png", "contact_sheet.png")


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
        """The options' checks (:mod:`mtl.infer.core`); ValueError naming the bad one."""
        if self.formats is not None:
            check_formats(sorted(set(self.formats)))
        self.presence_threshold = check_threshold(self.presence_threshold, "presence_threshold")
        self.pixel_spacing = parse_spacing(self.pixel_spacing)
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
    names = set(case_files())
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
    analysis = analyse_case(item, predictor, axis=options.axis,
                            pixel_spacing=options.pixel_spacing,
                            presence_threshold=options.presence_threshold, model_info=model_info)
    record = analysis.record
    writer = CaseWriter(folder, options.force)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for mask in analysis.mask_files(options.formats):
            writer(write_bytes, mask.name, mask.data)
        if options.overlay or options.explain:
            _write_pictures(writer, analysis, options, gradcam,
                            model_line=record["model"].get("card_line"))
        record["outputs"] = [str(p.relative_to(folder)) for p in writer.written] + ["findings.json"]
        writer(write_bytes, "findings.json", record_bytes(record))
        if options.force:
            writer.remove_stale()
    except BaseException:
        writer.discard()
        raise
    return CaseResult(item.name, str(item.source), item.kind, "ok", record=record, folder=folder,
                      outputs=list(writer.written), not_written=list(record.get("not_written", [])))


def _write_pictures(writer: CaseWriter, analysis: CaseAnalysis, options: InferOptions,
                    gradcam: Any, model_line: str | None = None) -> None:
    from mtl.infer import overlay  # looked up here: tests replace its renderers
    from mtl.infer.core import area_text, drawn_on

    case, pred, findings = analysis.case, analysis.prediction, analysis.findings
    classes = list(findings["type"]["probabilities"])
    label = findings["type"]["label"]
    tumor = findings["tumor"]
    view = analysis.view
    if not case.is_volume:
        chosen = [0]
    elif options.overlay_slices == "all":
        chosen = list(range(case.n_slices))
    else:
        chosen = list(tumor["slices"]) or [analysis.default_slice]
    heat_maps: dict[int, np.ndarray] = {}
    if options.explain:
        if gradcam is None:
            raise RuntimeError("--explain needs the model (Grad-CAM)")
        run = [i for i in chosen if pred.evaluated[i]]
        maps = gradcam.slice_maps([case.slices[i] for i in run], classes.index(label))
        heat_maps = dict(zip(run, maps))
    for i in chosen:
        lines = analysis.overlay_lines(i)
        name = "_" + slice_tag(i, case.n_slices) if case.is_volume else ""
        if options.overlay:
            writer(overlay.render_overlay, f"overlay{name}.png", case.shown(i), pred.mask[i],
                   lines=lines, view=view, model_line=model_line)
        if options.explain and i in heat_maps:
            writer(overlay.render_overlay, f"gradcam{name}.png", case.shown(i), pred.mask[i],
                   lines=lines, view=view, heat=heat_maps[i], heat_title=f"Grad-CAM: {label}",
                   model_line=model_line)
    if options.overlay and case.is_volume and tumor["slices"]:
        slices = tumor["slices"]
        px_mm2 = findings["pixel_area_mm2"]
        # counted from 1, as people count slices (file names keep the 0-based array index)
        captions = [f"slice {i + 1}: {area_text(int(pred.mask[i].sum()), px_mm2)}"
                    for i in slices]
        channel_line = drawn_on(case.channel_names, case.display_name)
        title = (f"{case.name}: {label}, tumor on {len(slices)} slice(s)"
                 + (f", {tumor['volume_ml']:.2f} mL" if tumor["volume_ml"] is not None else "")
                 + (f"; {channel_line}" if channel_line else ""))
        writer(overlay.render_contact_sheet, "contact_sheet.png",
               [case.shown(i) for i in slices], [pred.mask[i] for i in slices], captions,
               title=title, view=view, model_line=model_line)


def run(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    options: InferOptions | None = None,
    *,
    progress: bool | None = False,
    model_path: str | Path | None = None,
    sequences: Sequence[tuple[str, str | Path]] | None = None,
    discovered: tuple[list[InputItem], list[tuple[str, str]]] | None = None,
) -> RunResult:
    """Infer every input; write per-case outputs and ``out/findings.csv``.

    ``discovered``: what :func:`discover` already gave for ``inputs`` (``mtl infer`` looks at
    the items before loading the model), so that folders are not walked twice.

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
    items, bad = discover(inputs) if discovered is None else discovered
    items = list(items)  # the caller's list stays as it was
    if sequences:
        extra = channel_item(sequences, sequence_names(predictor.preprocessing))
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
        if not hasattr(predictor.model, "net"):
            raise ValueError("--explain draws Grad-CAM of one network, not of an ensemble; "
                             "run it with one of the models")
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
