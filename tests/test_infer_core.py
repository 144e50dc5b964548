"""The per-case core (mtl.infer.core): ``mtl infer`` and ``mtl serve`` run one code path per case,
so the same scan gives the same findings and the same mask bytes through both; the options
both take are checked once. The network is the fake perfect segmenter (no model file)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.infer.core import parse_spacing
from mtl.infer.discovery import discover
from mtl.infer.runner import InferOptions, infer_case
from mtl.serve.service import BadRequest, Service
from test_infer_support import make_dicom_series, oblique_las_affine, save_png, tumor_image
from test_serve_support import fake_predictor, tumor_nifti

#: what legitimately differs between a findings.json of ``mtl infer`` and one of ``mtl serve``:
#: the source (a path / the client's file name), the outputs listed, the detected upload type
DIFFERENT = ("source", "outputs", "detected_type")


def _without_date(data: bytes) -> bytes:
    """A NRRD without pynrrd's "# on <date>" comment line."""
    return b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"# on "))


def _both(tmp_path: Path, path: Path, formats: tuple[str, ...] | None = None):
    """(CLI findings record, CLI case folder, server findings record, server downloads) of one
    file, with one predictor and the server's model record for both."""
    predictor = fake_predictor()
    service = Service(predictor, model_name="m.keras", temp_root=tmp_path)
    try:
        result = service.analyse(path.read_bytes(), path.name)
        items, bad = discover([path])
        assert not bad and len(items) == 1
        out = tmp_path / "out"
        cli = infer_case(items[0], predictor, out, InferOptions(formats=formats),
                         model_info=service.model_info)
        files = {name: d.content for name, d in result.files.items()}
        served = json.loads(files.pop("findings.json"))
        return cli.record, cli.folder, served, files
    finally:
        service.close()


def _same_record(cli: dict, served: dict) -> None:
    assert {k: v for k, v in cli.items() if k not in DIFFERENT} == \
           {k: v for k, v in served.items() if k not in DIFFERENT}
    assert cli["findings"]["tumor"]["pixels"] > 0  # a case with tumor: masks worth comparing


def test_an_image_gives_the_same_findings_and_mask_bytes_through_cli_and_server(tmp_path):
    path = save_png(tmp_path / "scan.png", tumor_image(64, 64, (10, 20, 30, 45)))
    cli, folder, served, files = _both(tmp_path, path)
    _same_record(cli, served)
    assert sorted(files) == ["mask.png"]
    assert (folder / "mask.png").read_bytes() == files["mask.png"]


def test_a_nifti_and_a_nrrd_volume_give_the_same_findings_and_mask_bytes(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    data, truth = tumor_nifti(tmp_path, "brain.nii.gz")
    cli, folder, served, files = _both(tmp_path, tmp_path / "brain.nii.gz")
    _same_record(cli, served)
    assert sorted(files) == ["mask.nii.gz"]
    assert (folder / "mask.nii.gz").read_bytes() == files["mask.nii.gz"]

    import nibabel as nib

    volume = np.asarray(nib.load(tmp_path / "brain.nii.gz").dataobj)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ oblique_las_affine()
    source = tmp_path / "nrrd" / "head.nrrd"
    source.parent.mkdir()
    nrrd.write(str(source), volume, {"space": "left-posterior-superior",
                                     "space directions": lps[:3, :3].T,
                                     "space origin": lps[:3, 3]}, index_order="F")
    cli, folder, served, files = _both(tmp_path / "nrrd", source)
    _same_record(cli, served)
    assert sorted(files) == ["mask.nrrd"]
    assert _without_date((folder / "mask.nrrd").read_bytes()) == _without_date(files["mask.nrrd"])


def test_a_dicom_file_gives_the_same_masks_through_cli_and_server(tmp_path):
    import pydicom

    path = make_dicom_series(tmp_path / "s", n=2, tumor_slices=(1,))[1]
    cli, folder, served, files = _both(tmp_path, path, formats=("png", "nifti", "dicom-seg"))
    _same_record(cli, served)
    assert sorted(files) == ["mask.nii.gz", "mask.png", "seg.dcm"]
    assert (folder / "mask_slices" / "slice_000.png").read_bytes() == files["mask.png"]
    assert (folder / "mask.nii.gz").read_bytes() == files["mask.nii.gz"]
    seg_cli = pydicom.dcmread(folder / "seg.dcm")
    seg_served = pydicom.dcmread(io.BytesIO(files["seg.dcm"]))
    assert np.array_equal(seg_cli.pixel_array, seg_served.pixel_array)
    assert seg_cli.SOPInstanceUID != seg_served.SOPInstanceUID  # each SEG is a new instance


def test_the_server_writes_no_mask_file_to_disk(tmp_path, monkeypatch):
    """Only the upload is staged in a temporary folder; the masks are made in memory."""
    import mtl.serve.service as service_module

    made = []
    real = tempfile.mkdtemp

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    service = Service(fake_predictor(), temp_root=tmp_path)
    monkeypatch.setattr(service_module.tempfile, "mkdtemp", counting)
    try:
        path = make_dicom_series(tmp_path / "s", n=1, tumor_slices=(0,))[0]
        result = service.analyse(path.read_bytes(), "IM0.dcm")
        assert {"mask.png", "mask.nii.gz", "seg.dcm"} <= set(result.files)
        service.overlay_png(result)
        service.slice_mask_png(result, 0)
        assert len(made) == 1  # the upload's folder, nothing more
    finally:
        service.close()


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("text", ["nan", "inf", "0.5,nan", "-1", "0", "a,b", "1,2,3"])
def test_a_pixel_spacing_that_is_not_finite_and_positive_is_refused(text):
    with pytest.raises(ValueError, match="ROW_MM,COL_MM"):
        parse_spacing(text)
    with pytest.raises(BadRequest, match="pixel_spacing"):
        from mtl.serve.service import parse_spacing as server_spacing

        server_spacing(text)
    assert parse_spacing("0.5x0.4") == (0.5, 0.4) and parse_spacing(" ") is None


@pytest.mark.parametrize("option", [("--pixel-spacing", "nan"), ("--pixel-spacing", "inf,1"),
                                    ("--presence-threshold", "nan"), ("--threshold", "nan")])
def test_mtl_infer_refuses_a_nan_option_in_one_line(tmp_path, option):
    from mtl.infer.command import infer

    model = tmp_path / "m.keras"
    model.write_bytes(b"not loaded: the option is refused first")
    image = save_png(tmp_path / "a.png", tumor_image(48, 64, (10, 20, 30, 45)))
    result = CliRunner().invoke(infer, [str(model), str(image), "--out", str(tmp_path / "out"),
                                        *option])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option[0]}'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_serve_refuses_a_nan_threshold_on_its_command_line(tmp_path):
    """`mtl serve --threshold nan` passes click's FloatRange (NaN fails no comparison): the
    same check as `mtl infer` refuses it as a usage error, before any model is loaded."""
    from click.testing import CliRunner

    from mtl.serve.command import serve

    result = CliRunner().invoke(serve, [str(tmp_path / "absent.keras"), "--threshold", "nan"])
    assert result.exit_code == 2
    assert "threshold" in result.output and "Traceback" not in result.output
