"""Faults said as what they are (issue 15, items 6, 7, 8 and 11).

- ``mtl infer --force``: a case that fails now loses the outputs an earlier run wrote for it;
- Br35H: a VIA annotation naming a missing image is an error, or one counted skip;
- ``on_error: skip``: every skipped item is counted once in the run's skip report;
- a DICOM without position/orientation gets a mask in the pixel grid and a warning; a FIFO and a
  symbolic link loop are called what they are.

No network is trained or loaded: inference uses the fake segmenter of ``test_infer_support``.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.infer.predict import Predictor
from mtl.infer.readers import discover
from mtl.infer.runner import InferOptions, run
from test_adapters_br35h import SQUARE, via_entry, write_image, write_via
from test_infer_support import (
    CLASSES,
    PREPROCESSING,
    fake_forward,
    make_dicom_series,
    save_png,
    tumor_image,
)


def _predictor(**options) -> Predictor:
    return Predictor(forward=fake_forward, preprocessing=PREPROCESSING, classes=CLASSES, **options)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "findings.csv").open(newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


# --------------------------------------------------------------------------- item 6


def test_force_removes_the_earlier_outputs_of_a_case_that_now_fails(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_png(a, tumor_image(48, 64, (10, 20, 30, 45)))
    save_png(b, tumor_image(48, 64, (5, 15, 5, 20)))
    out = tmp_path / "out"
    first = run(_predictor(), [a, b], out, InferOptions(overlay=True))
    assert not first.failures
    assert {p.name for p in (out / "a").iterdir()} == {"findings.json", "mask.png", "overlay.png"}
    (out / "b" / "notes.txt").write_text("the user's own file")  # not ours: kept

    a.write_bytes(b"no longer an image" * 10)  # unreadable since the first run
    b.unlink()  # gone since the first run
    again = run(_predictor(), [a, b], out, InferOptions(force=True))
    rows = _rows(out)
    assert rows["a"]["status"] == "failed" and "cannot read image" in rows["a"]["error"]
    assert rows["b.png"]["status"] == "failed" and "no such file" in rows["b.png"]["error"]
    # no old "ok" record, mask or picture contradicts the failure
    assert not (out / "a").exists()
    assert sorted(p.name for p in (out / "b").iterdir()) == ["notes.txt"]
    errors = {c.name: c.error for c in again.cases}
    assert "earlier outputs" in errors["a"] and "were removed" in errors["a"]
    assert "earlier outputs" in errors["b.png"]


def test_force_success_removes_outputs_the_new_run_did_not_write(tmp_path):
    a = save_png(tmp_path / "a.png", tumor_image(48, 64, (10, 20, 30, 45)))
    out = tmp_path / "out"
    run(_predictor(), [a], out, InferOptions(overlay=True))
    assert (out / "a" / "overlay.png").is_file()
    again = run(_predictor(), [a], out, InferOptions(force=True))
    assert not again.failures
    record = json.loads((out / "a" / "findings.json").read_text())
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted(record["outputs"])
    assert not (out / "a" / "overlay.png").exists()


def test_without_force_a_failed_case_touches_nothing(tmp_path):
    a = save_png(tmp_path / "a.png", tumor_image(48, 64, (10, 20, 30, 45)))
    out = tmp_path / "out"
    run(_predictor(), [a], out)
    (out / "findings.csv").unlink()
    a.write_bytes(b"garbage" * 20)
    result = run(_predictor(), [a], out)
    assert result.failures and "--force" in result.cases[0].error
    assert (out / "a" / "findings.json").is_file()  # refused, not removed


# --------------------------------------------------------------------------- items 7 and 8


@pytest.fixture
def bad_br35h(tmp_path: Path) -> Path:
    """Br35H with 6 bad items: 2 found while listing (a bad region, an annotated image that is
    missing) and 4 only when loading (3 unreadable images, a polygon outside its image)."""
    root = tmp_path / "br35h"
    for i in range(4):
        write_image(root / "yes" / f"y{i}.jpg", size=(64, 48))
    for i in range(5):
        write_image(root / "no" / f"no{i}.jpg", size=(40 + 4 * i, 60))
    for i in range(3):
        (root / "no" / f"no{i}.jpg").write_bytes(b"not a JPEG")
    outside = {"name": "polygon", "all_points_x": [10, 200, 30], "all_points_y": [5, 5, 20]}
    write_via(root / "yes" / "annotations_via.json",
              via_entry("y0.jpg", SQUARE), via_entry("y1.jpg", outside),
              via_entry("y2.jpg", {"name": "point", "cx": 3, "cy": 4}),  # bad region
              via_entry("gone.jpg", SQUARE),  # a missing image
              via_entry("no4.jpg"))  # an entry without regions for a no/ image: not missing
    return root


def test_an_annotated_missing_image_is_an_error_naming_the_json_and_the_image(tmp_path):
    from mtl.data.adapters.base import DataError
    from mtl.data.adapters.br35h import Br35hAdapter

    root = tmp_path / "br35h"
    write_image(root / "yes" / "y0.jpg")
    write_image(root / "no" / "no0.jpg")
    write_via(root / "yes" / "annotations_via.json", via_entry("y0.jpg", SQUARE),
              via_entry("gone.jpg", SQUARE))
    with pytest.raises(DataError, match=r"yes/gone\.jpg: missing image: .*annotations_via\.json "
                                        r"annotates it"):
        Br35hAdapter(root, dedup=False).records()
    skipping = Br35hAdapter(root, dedup=False, on_error="skip")
    assert {r.case_id for r in skipping.records()} == {"yes/y0", "no/no0"}
    assert [Path(s).name for s, _ in skipping.skipped] == ["gone.jpg"]
    assert "annotations_via.json" in skipping.skipped[0][1]


def test_data_inspect_counts_an_annotated_missing_image(bad_br35h, tmp_path):
    from mtl.cli import main

    args = ["data", "inspect", "br35h", str(bad_br35h), "--option", "dedup=false",
            "--out", str(tmp_path / "mosaic.png")]
    strict = CliRunner().invoke(main, args)
    assert strict.exit_code != 0 and "Traceback" not in strict.output
    assert "y2.jpg: bad VIA region" in strict.output or "gone.jpg: missing image" in strict.output
    lenient = CliRunner().invoke(main, [*args, "--skip-bad"])
    assert lenient.exit_code == 0, lenient.output
    summary = json.loads(lenient.output.split("\nmosaic:")[0])
    reasons = {Path(i["source"]).name: i["reason"] for i in summary["skipped"]["items"]}
    assert "gone.jpg" in reasons and "missing image" in reasons["gone.jpg"]
    assert "y2.jpg" in reasons


def _sources(root: Path, tmp_path: Path):
    from mtl.config import load_config
    from mtl.data.pipeline import open_sources

    config = load_config(overrides=[
        f"train.runs_dir={tmp_path}", "data.on_error=skip", "data.image_size=64",
        f"data.sources=[{{format: br35h, root: {root}, options: {{dedup: false}}}}]"])
    return config, open_sources(config)


def test_each_skipped_item_is_counted_once_scan_and_preflight(bad_br35h, tmp_path):
    """9 entries for 5 items: load failures were counted at scan (adapter.skipped) and again at
    preflight. Now N bad items give N entries, each at the first stage it failed."""
    from mtl.data.pipeline import preflight, skip_report
    from mtl.train import data_summary

    _config, sources = _sources(bad_br35h, tmp_path)
    at_preflight = preflight(sources, "skip", progress=False)
    assert len(at_preflight) == 4
    report = skip_report(sources, at_preflight, [])
    assert report["skipped"] == 6 and len(report["skipped_examples"]) == 6
    assert (report["skipped_at_scan"], report["skipped_at_preflight"],
            report["skipped_at_load"]) == (2, 4, 0)
    names = sorted(Path(s).name for s, _ in report["skipped_examples"])
    assert names == ["gone.jpg", "no0.jpg", "no1.jpg", "no2.jpg", "y1.jpg", "y2.jpg"]
    for source in sources:
        source.splits = {"train": list(range(len(source.records)))}
    assert data_summary(sources)["br35h"]["skipped_at_scan"] == 2


def test_each_skipped_item_is_counted_once_at_load_time(bad_br35h, tmp_path):
    """Without preflight: items failing in every epoch are counted once, not again from the
    adapter's own list."""
    from mtl.data.pipeline import LoadErrors, SampleEncoder, _settle, load_item, skip_report

    config, sources = _sources(bad_br35h, tmp_path)
    encoder = SampleEncoder(config, augment=False)
    errors = LoadErrors()
    for epoch in range(2):
        for i in range(len(sources[0].records)):
            _settle(load_item(sources, encoder, 0, i, epoch), "skip", errors, encoder)
    assert len(sources[0].adapter.skipped) == 6  # the adapter lists load failures too
    report = skip_report(sources, [], errors.items)
    assert report["skipped"] == 6 and len(report["skipped_examples"]) == 6
    assert (report["skipped_at_scan"], report["skipped_at_load"]) == (2, 4)


# --------------------------------------------------------------------------- item 11


def test_a_dicom_without_position_gets_a_pixel_grid_mask_and_a_warning(tmp_path, monkeypatch):
    import pydicom
    from PIL import Image

    from mtl.infer.command import infer

    monkeypatch.setattr(Predictor, "from_file", classmethod(
        lambda cls, path, ensemble=(), **kw: cls(forward=fake_forward,
                                                 preprocessing=PREPROCESSING, classes=CLASSES,
                                                 **kw)))
    (path,) = make_dicom_series(tmp_path / "series", n=1, tumor_slices=(0,),
                                tumor_box=(10, 20, 40, 52))
    ds = pydicom.dcmread(path)
    del ds.ImageOrientationPatient, ds.ImagePositionPatient
    ds.save_as(path)
    model = tmp_path / "m.keras"
    model.write_bytes(b"stand-in")
    out = tmp_path / "out"
    result = CliRunner().invoke(infer, [str(model), str(path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines()
               if line.startswith("warning:") and "pixel grid" in line]
    assert warning and "no DICOM SEG written" in warning[0]
    assert "ImagePositionPatient/ImageOrientationPatient" in warning[0]
    case = out / "IM0000"
    mask = np.asarray(Image.open(case / "mask_slices" / "slice_000.png"))
    truth = np.zeros((48, 64), np.uint8)
    truth[10:20, 40:52] = 255
    assert np.array_equal(mask, truth)
    record = json.loads((case / "findings.json").read_text())
    assert record["mask_in_pixel_grid"] is True
    assert any("pixel grid" in w for w in record["warnings"])
    assert "mask_slices/slice_000.png" in record["outputs"]
    assert _rows(out)["IM0000"]["status"] == "ok"


def _discover_within(inputs, seconds: float = 20.0):
    """discover() in a thread: opening a FIFO would wait forever."""
    found: list = []
    thread = threading.Thread(target=lambda: found.append(discover(inputs)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "discover() hung (did it open a FIFO?)"
    return found[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_called_not_a_regular_file(tmp_path):
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    items, bad = _discover_within([fifo])
    assert items == [] and len(bad) == 1
    assert bad[0][1].startswith("not a regular file: a FIFO")
    # inside a folder: reported when named like an input, never opened (a DICOM without a
    # suffix is recognised by reading it), and the folder's images still run
    folder = tmp_path / "in"
    folder.mkdir()
    save_png(folder / "good.png", tumor_image(48, 64, (10, 20, 30, 45)))
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe_without_suffix")
    items, bad = _discover_within([folder])
    assert [i.name for i in items] == ["good"]
    assert [(Path(p).name, why.split(";")[0]) for p, why in bad] == [
        ("pipe.png", "not a regular file: a FIFO (named pipe)")]


def test_a_symlink_loop_is_called_a_loop(tmp_path):
    loop = tmp_path / "loop.png"
    os.symlink(loop.name, loop)
    items, bad = discover([loop])
    assert items == [] and bad == [(str(loop), bad[0][1])]
    assert "symbolic link loop" in bad[0][1] and "no such file" not in bad[0][1]
    broken = tmp_path / "broken.png"
    os.symlink("nowhere.png", broken)
    assert "broken symbolic link" in discover([broken])[1][0][1]
    folder = tmp_path / "in"
    folder.mkdir()
    save_png(folder / "good.png", tumor_image(48, 64, (10, 20, 30, 45)))
    os.symlink("loop2.nii.gz", folder / "loop2.nii.gz")
    items, bad = discover([folder])
    assert [i.name for i in items] == ["good"]
    assert len(bad) == 1 and "symbolic link loop" in bad[0][1]
