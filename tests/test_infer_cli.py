"""``mtl infer`` end to end through click's CliRunner, with a real (tiny) model file.

The network call is replaced by the fake perfect segmenter of ``test_infer_support`` where a
known mask is needed (Grad-CAM still runs through the real model).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.infer.command import infer
from mtl.infer.predict import Predictor
from test_infer_support import (  # noqa: F401 - tiny_model_path is a fixture
    TUMOR,
    fake_forward,
    head_volume,
    invoke_infer as _invoke,
    make_dicom_series,
    oblique_las_affine,
    save_nifti,
    save_png,
    tiny_model_path,
    tumor_image,
    write_bad_inputs,
)


@pytest.fixture
def perfect_network(monkeypatch):
    monkeypatch.setattr(Predictor, "_model_forward", lambda self, x: fake_forward(x))


def _rows(out):
    with (out / "findings.csv").open(newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


@pytest.fixture
def scans(tmp_path):
    """A PNG, an oblique NIfTI with a tumor in the patient's left, and a DICOM series."""
    folder = tmp_path / "in"
    folder.mkdir()
    save_png(folder / "slice.png", tumor_image(48, 64, (10, 20, 30, 45)))
    vol = head_volume((48, 64, 8))
    vol[30:38, 20:30, 2:5] = TUMOR  # i = 30..37 > midline; L-A-S: patient left
    save_nifti(folder / "brain.nii.gz", vol, oblique_las_affine())
    truth = np.zeros(vol.shape, np.uint8)
    truth[30:38, 20:30, 2:5] = 1
    make_dicom_series(folder / "series", n=4, tumor_slices=(1, 2), tumor_box=(10, 20, 40, 52))
    return folder, truth


def test_infer_writes_masks_in_the_input_geometry_and_findings(tiny_model_path, scans, tmp_path,
                                                                perfect_network):
    import highdicom as hd
    import nibabel as nib
    from PIL import Image

    folder, truth = scans
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, folder, "--out", out, "--overlay", "--explain",
                     "--pixel-spacing", "0.5,0.4", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "results:" in result.output and "brain" in result.output
    rows = _rows(out)
    assert set(rows) == {"slice", "brain", "series"}
    assert all(r["status"] == "ok" for r in rows.values())

    # PNG: mask at the image's own size, exactly the tumor; mm² from --pixel-spacing
    png = np.asarray(Image.open(out / "slice" / "mask.png"))
    assert png.shape == (48, 64) and (png > 0).sum() == 150 and (png[10:20, 30:45] > 0).all()
    f = json.loads((out / "slice" / "findings.json").read_text())
    assert f["findings"]["tumor"]["area_px"] == 150
    assert f["findings"]["tumor"]["area_mm2"] == pytest.approx(150 * 0.2)
    assert f["findings"]["presence"]["decision"] is True
    assert f["findings"]["type"]["label"] == "glioma"
    assert {"mask.png", "overlay.png", "gradcam.png", "findings.json"} <= set(f["outputs"])

    # NIfTI: same shape, affine and header codes; voxels exactly where the tumor was
    src = nib.load(folder / "brain.nii.gz")
    mask = nib.load(out / "brain" / "mask.nii.gz")
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    assert mask.get_data_dtype() == np.uint8
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 2)
    assert np.array_equal(np.asarray(mask.dataobj), truth)
    f = json.loads((out / "brain" / "findings.json").read_text())["findings"]
    t = f["tumor"]
    assert t["pixels"] == truth.sum() == 240 and t["slices"] == [2, 3, 4]
    assert t["volume_ml"] == pytest.approx(240 * 0.9 * 1.1 * 2.5 / 1000)
    assert t["hemisphere"]["side"] == "left"
    assert t["bbox_min"] == [30, 20, 2] and t["bbox_max"] == [37, 29, 4]
    assert rows["brain"]["tumor_slices"] == "2-4" and rows["brain"]["hemisphere"] == "left"
    for i in (2, 3, 4):
        assert (out / "brain" / f"overlay_slice_{i:03d}.png").is_file()
        assert (out / "brain" / f"gradcam_slice_{i:03d}.png").is_file()
    assert (out / "brain" / "contact_sheet.png").is_file()
    assert not (out / "brain" / "overlay_slice_000.png").exists()

    # DICOM: a SEG referencing the series, one frame per tumor slice
    seg = hd.seg.segread(out / "series" / "seg.dcm")
    assert seg.NumberOfFrames == 2
    f = json.loads((out / "series" / "findings.json").read_text())["findings"]
    assert f["tumor"]["slices"] == [1, 2] and f["tumor"]["pixels"] == 2 * 120
    assert f["tumor"]["volume_ml"] == pytest.approx(240 * 0.9 * 0.8 * 3.0 / 1000)
    assert f["tumor"]["hemisphere"]["side"] == "left"  # columns 40..51 of 64: patient left
    # no temporary files anywhere
    assert not [p for p in out.rglob(".tmp-*")]


def test_bad_inputs_fail_alone_with_clear_errors_and_exit_status_1(tiny_model_path, tmp_path,
                                                                   perfect_network):
    bad = tmp_path / "bad"
    expected = write_bad_inputs(bad)
    save_png(bad / "good.png", tumor_image(48, 64, (10, 20, 30, 45)))
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, bad, tmp_path / "missing.nii.gz", "--out", out)
    assert result.exit_code == 1
    assert f"{len(expected) + 1} of {len(expected) + 2} input(s) failed" in result.output
    rows = _rows(out)
    assert rows["good"]["status"] == "ok" and (out / "good" / "mask.png").is_file()
    for name, message in expected.items():
        path = str(bad / name)
        assert path in result.output
        row = next(r for r in rows.values() if r["source"] == path)
        assert row["status"] == "failed" and message in row["error"] and path in row["error"]
    assert "missing.nii.gz: no such file" in result.output
    # failed cases leave no folders behind
    assert sorted(p.name for p in out.iterdir()) == ["findings.csv", "good"]


def test_outputs_are_never_overwritten_without_force(tiny_model_path, tmp_path, perfect_network):
    image = tmp_path / "a.png"
    save_png(image, tumor_image(48, 64, (10, 20, 30, 45)))
    out = tmp_path / "out"
    assert _invoke(tiny_model_path, image, "--out", out).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = _invoke(tiny_model_path, image, "--out", out)
    assert again.exit_code == 1 and "--force" in again.output
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # an existing case folder (e.g. from another run) also blocks that case only
    (out / "findings.csv").unlink()
    other = tmp_path / "b.png"
    save_png(other, tumor_image(48, 64, (5, 9, 5, 9)))
    partial = _invoke(tiny_model_path, image, other, "--out", out)
    assert partial.exit_code == 1 and "use --force" in partial.output
    assert _rows(out)["a"]["status"] == "failed" and _rows(out)["b"]["status"] == "ok"
    forced = _invoke(tiny_model_path, image, other, "--out", out, "--force", "--format", "png",
                     "--tta", "--largest-component", "--threshold", "0.4")
    assert forced.exit_code == 0, forced.output
    settings = json.loads((out / "a" / "findings.json").read_text())["settings"]
    assert settings == {"threshold": 0.4, "presence_threshold": 0.4, "flip_tta": True,
                        "largest_component": True, "mask_rule": "presence"}


def test_a_crash_while_writing_leaves_no_half_written_case(tiny_model_path, tmp_path,
                                                           perfect_network, monkeypatch):
    import mtl.infer.overlay as overlay

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(overlay, "render_overlay", broken)
    image = tmp_path / "a.png"
    save_png(image, tumor_image(48, 64, (10, 20, 30, 45)))
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, image, "--out", out, "--overlay")
    assert result.exit_code == 1 and "unexpected error (RuntimeError: plotting failed)" in result.output
    assert not (out / "a").exists()  # the mask written before the crash was removed


def test_volume_formats_and_options(tiny_model_path, scans, tmp_path, perfect_network):
    folder, truth = scans
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, folder / "brain.nii.gz", folder / "series", "--out", out,
                     "--format", "png,nifti", "--axis", "2")
    assert result.exit_code == 0, result.output
    slices = sorted((out / "brain" / "mask_slices").glob("slice_*.png"))
    assert len(slices) == 8
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(slices[3])) > 0, truth[:, :, 3] > 0)
    record = json.loads((out / "brain" / "findings.json").read_text())
    assert not record["warnings"]
    assert (out / "series" / "mask.nii.gz").is_file()
    seg = _invoke(tiny_model_path, folder / "series", "--out", tmp_path / "seg", "--format",
                  "dicom-seg,nifti")
    assert seg.exit_code == 0, seg.output
    assert {"seg.dcm", "mask.nii.gz"} <= {p.name for p in (tmp_path / "seg" / "series").iterdir()}
    bad = CliRunner().invoke(infer, [str(tiny_model_path), str(folder), "--out", str(out),
                                     "--format", "jpeg"])
    assert bad.exit_code == 2 and "unknown format" in bad.output


def test_real_network_runs_through_the_command(tiny_model_path, tmp_path):
    image = tmp_path / "a.png"
    save_png(image, tumor_image(100, 80, (30, 50, 20, 40)))
    save_nifti(tmp_path / "v.nii.gz", head_volume((40, 40, 3)), oblique_las_affine())
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, image, tmp_path / "v.nii.gz", "--out", out, "--tta",
                     "--overlay", "--explain", "--overlay-slices", "all", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a" / "findings.json").read_text())
    probs = record["findings"]["type"]["probabilities"]
    assert sum(probs.values()) == pytest.approx(1, abs=1e-3)
    assert record["model"]["preprocessing"]["image_size"] == 64
    assert len(list((out / "v").glob("overlay_slice_*.png"))) == 3
    assert len(list((out / "v").glob("gradcam_slice_*.png"))) == 3


def test_help_lists_the_options():
    result = CliRunner().invoke(infer, ["--help"])
    assert result.exit_code == 0
    for option in ("--out", "--overlay", "--explain", "--format", "--threshold", "--tta",
                   "--largest-component", "--batch-size", "--axis", "--force"):
        assert option in result.output


@pytest.mark.parametrize("rule", ["presence", "independent"])
def test_one_rule_where_presence_and_mask_disagree(tiny_model_path, tmp_path, monkeypatch, rule):
    """Presence says no (0.2) while the mask head marks the tumor: by default no output shows
    the pixels; --mask-rule independent shows them and the findings say so."""
    def unsure(self, x):
        out = fake_forward(x)
        out["presence"] = np.full((len(x), 1), 0.2, np.float32)
        return out

    monkeypatch.setattr(Predictor, "_model_forward", unsure)
    image = save_png(tmp_path / "a.png", tumor_image(48, 64, (10, 20, 30, 45)))
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, image, "--out", out, "--format", "png", "--overlay",
                     "--mask-rule", rule)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a" / "findings.json").read_text())
    from PIL import Image

    mask = np.asarray(Image.open(out / "a" / "mask.png"))
    note = record["findings"]["mask_rule"]
    assert record["settings"]["mask_rule"] == rule and note["rule"] == rule
    if rule == "presence":
        assert mask.sum() == 0 and record["findings"]["tumor"]["pixels"] == 0
        assert note["withheld_pixels"] == 150 and note["withheld_slices"] == [0]
        assert not any("presence head says no tumor" in w for w in record["findings"]["warnings"])
    else:
        assert (mask > 0).sum() == 150 and record["findings"]["tumor"]["pixels"] == 150
        assert note["withheld_pixels"] == 0
        assert any("presence head says no tumor" in w for w in record["findings"]["warnings"])


def test_a_format_an_input_can_never_give_is_refused_before_any_work(tiny_model_path, scans,
                                                                    tmp_path, monkeypatch):
    """--format dicom-seg on a NIfTI volume and a JPEG: refused, naming them, before the model
    is even loaded; nothing is written (it used to write no mask and exit 0)."""
    folder, _ = scans
    jpeg = tmp_path / "photo.jpg"
    from PIL import Image

    Image.fromarray(tumor_image(48, 64, (10, 20, 30, 45)).astype(np.uint8)).save(jpeg)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the formats were checked")

    monkeypatch.setattr(Predictor, "from_file", no_model)
    out = tmp_path / "out"
    result = CliRunner().invoke(infer, [str(tiny_model_path), str(folder / "brain.nii.gz"),
                                        str(jpeg), "--out", str(out), "--format", "dicom-seg"])
    assert result.exit_code == 2, result.output
    assert "--format dicom-seg needs a DICOM series" in result.output
    assert str(folder / "brain.nii.gz") in result.output and str(jpeg) in result.output
    assert "Nothing was run" in result.output and "Traceback" not in result.output
    assert not out.exists()
    # nifti from a 2-D image: the same
    again = CliRunner().invoke(infer, [str(tiny_model_path), str(jpeg), "--out", str(out),
                                       "--format", "png,nifti"])
    assert again.exit_code == 2 and "--format nifti needs a volume" in again.output
    assert not out.exists()


def test_a_requested_format_a_case_cannot_give_is_said_and_fails_the_exit_status(
        tiny_model_path, tmp_path, perfect_network):
    """A DICOM file without position/orientation cannot give a DICOM SEG: only the file tells,
    so the others run, the terminal says what was not written, and the exit status is 1."""
    import pydicom

    paths = make_dicom_series(tmp_path / "series", n=1, tumor_slices=(0,))
    ds = pydicom.dcmread(paths[0])
    del ds.ImageOrientationPatient, ds.ImagePositionPatient
    ds.save_as(paths[0])
    out = tmp_path / "out"
    result = _invoke(tiny_model_path, paths[0], "--out", out, "--format", "dicom-seg,png")
    assert result.exit_code == 1, result.output
    assert "1 requested output(s) not written" in result.output
    assert "dicom-seg not written" in result.output
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    record = json.loads((case / "findings.json").read_text())
    assert record["not_written"] and "dicom-seg" in record["not_written"][0]
    assert not (case / "seg.dcm").exists()
    assert list((case / "mask_slices").glob("slice_*.png"))  # the other format was written


def test_overlay_and_contact_sheet_captions_count_slices_from_1(tiny_model_path, scans, tmp_path,
                                                                 perfect_network, monkeypatch):
    """"slice 80/188" (0-based) became "slice 81/188"; file names keep the array index."""
    import mtl.infer.overlay as overlay

    seen = {"lines": [], "captions": []}
    real_overlay, real_sheet = overlay.render_overlay, overlay.render_contact_sheet

    def spy_overlay(path, *args, lines, **kwargs):
        seen["lines"].append((path.name, list(lines)))
        return real_overlay(path, *args, lines=lines, **kwargs)

    def spy_sheet(path, images, masks, captions, **kwargs):
        seen["captions"] += list(captions)
        return real_sheet(path, images, masks, captions, **kwargs)

    monkeypatch.setattr(overlay, "render_overlay", spy_overlay)
    monkeypatch.setattr(overlay, "render_contact_sheet", spy_sheet)
    folder, _ = scans
    result = _invoke(tiny_model_path, folder / "brain.nii.gz", "--out", tmp_path / "out",
                     "--overlay", "--overlay-slices", "all", "--axis", "2")
    assert result.exit_code == 0, result.output
    by_file = dict(seen["lines"])
    assert len(by_file) == 8
    assert by_file["overlay_slice_000.png"][1].startswith("slice 1/8: ")
    assert by_file["overlay_slice_007.png"][1].startswith("slice 8/8: ")
    assert seen["captions"] and all(c.startswith("slice ") for c in seen["captions"])
    assert not any(c.startswith("slice 0:") for c in seen["captions"])


def test_xla_only_where_enough_images_pay_for_its_compile(tiny_model_path, tmp_path, monkeypatch):
    """`mtl infer` runs one network call per 2-D image: XLA's one-off compile (about 2 s) is
    chosen only from XLA_PAYS_AFTER_SLICES images on (benchmarks/infer_xla.py)."""
    import mtl.model.inference as inference

    assert inference.jit_for_single_slices(inference.XLA_PAYS_AFTER_SLICES - 1) is False
    assert inference.jit_for_single_slices(inference.XLA_PAYS_AFTER_SLICES) == "auto"
    chosen = []
    real = Predictor.from_file.__func__

    def spy(cls, path, **options):
        chosen.append(options["jit_compile"])
        return real(cls, path, **options)

    monkeypatch.setattr(Predictor, "from_file", classmethod(spy))
    monkeypatch.setattr(Predictor, "_model_forward", lambda self, x: fake_forward(x))
    import mtl.infer.discovery as discovery
    import mtl.infer.runner as runner

    walks = []

    def counted_discover(inputs):
        walks.append(list(inputs))
        return real_discover(inputs)

    real_discover = discovery.discover
    monkeypatch.setattr(discovery, "discover", counted_discover)
    monkeypatch.setattr(runner, "discover", counted_discover)
    images = [save_png(tmp_path / f"{name}.png", tumor_image(48, 64, (10, 20, 30, 45)))
              for name in ("a", "b")]
    volume = tmp_path / "v.nii.gz"
    save_nifti(volume, head_volume((40, 40, 3)), oblique_las_affine())
    def chooses(*args):
        out = tmp_path / f"o{len(chosen)}"
        assert _invoke(tiny_model_path, *args, "--out", out).exit_code == 0
        return chosen[-1]

    assert chooses(*images, volume) is False
    assert len(walks) == 1  # the inputs are discovered once: the command hands them to run()
    assert chooses(volume, "--batch-size", "2") == "auto"  # a volume's many small calls
    monkeypatch.setattr(inference, "XLA_PAYS_AFTER_SLICES", 2)
    assert chooses(images[0], volume) is False
    assert chooses(*images) == "auto"
    assert chooses(images[0], "--tta") == "auto"  # two calls per image
    monkeypatch.undo()
    # the choice reaches the graph: no XLA function without it, one compiled with it
    plain = Predictor.from_file(tiny_model_path, jit_compile=False)
    plain.warm_up()
    assert plain._graph.xla_graph is None
    served = Predictor.from_file(tiny_model_path)
    assert served.jit_compile == "auto"  # mtl serve's default: compiled once in warm_up
    served.warm_up()
    assert served._graph.xla_graph.experimental_get_tracing_count() == 1
    for bad in ("sometimes", 1):
        with pytest.raises(ValueError, match="jit_compile"):
            Predictor.from_file(tiny_model_path, jit_compile=bad)
