"""Healthy-volume check (mtl.evaluate.healthy): slice selection, orientation, shares, CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.evaluate import healthy
from mtl.evaluate.healthy import (
    HealthyVolumeError,
    check_model_file,
    healthy_volume_check,
    resolve_healthy_volume,
)
from mtl.infer.predict import Predictor
from test_infer_support import (  # noqa: F401 - tiny_model_path is a fixture
    CLASSES,
    PREPROCESSING,
    save_nifti,
    tiny_model_path,
)

SHAPE = (30, 50, 24)  # x (L->R), y (P->A), z (I->S) with an identity (RAS) affine
BOX = (slice(5, 25), slice(10, 40), slice(4, 20))
#: slices with brain content along each plane: the box's extent on that axis
EXPECTED = {"axial": 16, "coronal": 30, "sagittal": 20}


def box_volume() -> np.ndarray:
    """A bright box, a faint layer below the content level, a speck under 5 % of a slice and a
    bright anterior marker at the box's top-front edge."""
    rng = np.random.default_rng(0)
    vol = np.zeros(SHAPE, np.float32)
    vol[BOX] = 100 + rng.normal(0, 2, (20, 30, 16))
    vol[:, :, 22] = rng.uniform(0.5, 5, SHAPE[:2])  # below 0.1 x reference: not content
    vol[0:3, 0:3, 0] = 100  # 9 of 1500 pixels: under 5 % of the axial slice
    vol[5:25, 36:40, 4:20] = 150  # anterior end of the box
    return vol


@pytest.fixture
def volume(tmp_path):
    return save_nifti(tmp_path / "healthy.nii.gz", box_volume(), np.eye(4))


def constant_forward(presence: float, mask: float):
    """A fake network: the same presence for every slice, type 'meningioma', a flat mask."""

    def forward(x):
        n, size = len(x), x.shape[1]
        return {"presence": np.full((n, 1), presence, np.float32),
                "type": np.tile(np.array([0.1, 0.1, 0.7, 0.1], np.float32), (n, 1)),
                "mask": np.full((n, size, size, 1), mask, np.float32)}

    return forward


class Recording(Predictor):
    """A predictor that keeps the slices it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[np.ndarray] = []

    def predict(self, slices):
        self.seen.extend(slices)
        return super().predict(slices)


def fake_predictor(presence: float, mask: float, cls=Predictor, **options) -> Predictor:
    return cls(forward=constant_forward(presence, mask), preprocessing=PREPROCESSING,
               classes=CLASSES, batch_size=7, **options)


def test_slices_with_content_are_counted_per_plane(volume):
    result = healthy_volume_check(fake_predictor(0.2, 0.0), volume, progress=False)
    for plane, n in EXPECTED.items():
        assert result["planes"][plane]["slices_checked"] == n, plane
    assert result["planes"]["axial"]["n_slices"] == SHAPE[2]
    assert result["planes"]["sagittal"]["slice_axis"] == 0
    assert result["overall"]["slices_checked"] == sum(EXPECTED.values())
    assert result["orientation"] == "upright"
    assert result["content_rule"]["reference_intensity"] == pytest.approx(150, abs=1)


def test_forced_tumor_answer_gives_share_one(volume):
    result = healthy_volume_check(fake_predictor(1.0, 0.0), volume, progress=False)
    for entry in [*result["planes"].values(), result["overall"]]:
        assert entry["share_called_tumor"] == 1.0
        assert entry["called_tumor"] == entry["slices_checked"]
        assert entry["type_counts_called_tumor"]["meningioma"] == entry["slices_checked"]
        assert entry["share_mask_nonempty"] == 0.0 and entry["mean_mask_fraction"] == 0.0
        assert entry["mean_presence"] == pytest.approx(1.0)


def test_forced_healthy_answer_gives_share_zero(volume):
    result = healthy_volume_check(fake_predictor(0.0, 1.0), volume, progress=False)
    for entry in [*result["planes"].values(), result["overall"]]:
        assert entry["share_called_tumor"] == 0.0 and entry["called_tumor"] == 0
        assert sum(entry["type_counts_called_tumor"].values()) == 0
        # the mask head fires everywhere, but under the default mask rule nothing is shown
        assert entry["share_mask_nonempty"] == 0.0
        assert entry["share_called_tumor_with_mask"] == 0.0
    raw = healthy_volume_check(fake_predictor(0.0, 1.0, mask_rule="independent"), volume,
                               progress=False)
    assert raw["overall"]["share_mask_nonempty"] == 1.0
    assert "healthy.nii.gz (upright): 0.0% of 66 slices called tumor" in healthy.format_summary(result)


def test_threshold_decides_the_call(volume):
    predictor = fake_predictor(0.6, 0.0)
    assert healthy_volume_check(predictor, volume, threshold=0.5,
                                progress=False)["overall"]["share_called_tumor"] == 1.0
    assert healthy_volume_check(predictor, volume, threshold=0.7,
                                progress=False)["overall"]["share_called_tumor"] == 0.0


def test_slices_are_shown_upright(volume):
    predictor = fake_predictor(0.0, 0.0, cls=Recording)
    healthy_volume_check(predictor, volume, progress=False)
    axial = predictor.seen[: EXPECTED["axial"]]
    coronal = predictor.seen[EXPECTED["axial"] : EXPECTED["axial"] + EXPECTED["coronal"]]
    sagittal = predictor.seen[-EXPECTED["sagittal"]:]
    # axial: anterior up, patient's right on the viewer's left -> rows are A->P
    assert {s.shape for s in axial} == {(SHAPE[1], SHAPE[0])}
    top, bottom = slice(SHAPE[1] - 40, SHAPE[1] - 36), slice(SHAPE[1] - 14, SHAPE[1] - 10)
    assert np.all(axial[0][top, 5:25] == 150) and np.all(axial[0][bottom, 5:25] < 150)
    assert {s.shape for s in coronal} == {(SHAPE[2], SHAPE[0])}  # superior up
    assert {s.shape for s in sagittal} == {(SHAPE[2], SHAPE[1])}  # superior up, anterior left
    assert np.all(sagittal[0][SHAPE[2] - 20 : SHAPE[2] - 4, SHAPE[1] - 40 : SHAPE[1] - 36] == 150)

    native = fake_predictor(0.0, 0.0, cls=Recording)
    result = healthy_volume_check(native, volume, orientation="native", progress=False)
    assert result["orientation"] == "native"
    assert native.seen[0].shape == (SHAPE[0], SHAPE[1])  # array order, as mtl infer


def test_tiny_model_results_are_consistent(tiny_model_path, volume):
    (result,) = check_model_file(tiny_model_path, [volume], progress=False)
    assert result["volume"] == str(volume)
    planes = result["planes"]
    for entry in [*planes.values(), result["overall"]]:
        n = entry["slices_checked"]
        for key in ("share_called_tumor", "share_mask_nonempty", "share_called_tumor_with_mask",
                    "mean_presence", "mean_mask_fraction"):
            assert 0.0 <= entry[key] <= 1.0, key
        assert entry["called_tumor"] == round(entry["share_called_tumor"] * n)
        assert sum(entry["type_counts_called_tumor"].values()) == entry["called_tumor"]
        assert entry["share_called_tumor_with_mask"] <= min(entry["share_called_tumor"],
                                                            entry["share_mask_nonempty"])
        assert entry["mean_presence"] <= entry["max_presence"]
    assert result["overall"]["called_tumor"] == sum(e["called_tumor"] for e in planes.values())
    assert json.loads(json.dumps(result)) == result  # plain JSON types only


def test_volume_without_orientation_uses_array_axes(tmp_path):
    import nibabel as nib

    path = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(box_volume(), None), str(path))  # no qform/sform
    assert nib.load(str(path)).header["sform_code"] == nib.load(str(path)).header["qform_code"] == 0
    result = healthy_volume_check(fake_predictor(0.0, 0.0), path, progress=False)
    assert list(result["planes"]) == ["axis0", "axis1", "axis2"]
    assert [e["slices_checked"] for e in result["planes"].values()] == [20, 30, 16]
    assert result["orientation"].startswith("native")


def test_resolver_rejects_bad_specs(tmp_path):
    with pytest.raises(HealthyVolumeError, match="no such file"):
        resolve_healthy_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(HealthyVolumeError, match="not a NIfTI"):
        resolve_healthy_volume(tmp_path / "a.png")


def test_mni152_without_nilearn_says_how_to_install(monkeypatch):
    monkeypatch.setattr(healthy.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HealthyVolumeError, match=r"pip install nilearn.*pip install -e \.\[test\]"):
        resolve_healthy_volume("mni152")


@pytest.fixture
def mni152():
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("nilearn is not installed (pip install -e .[test]): it ships the MNI152 "
                    "template")
    try:
        return resolve_healthy_volume("MNI152")
    except healthy.HealthyVolumeError as exc:
        pytest.skip(f"MNI152 template not available: {exc}")


def test_mni152_resolves_inside_installed_nilearn(mni152):
    assert mni152.is_file() and mni152.name == healthy.MNI152_FILE.name
    assert "nilearn" in mni152.parts


def test_mni152_slices_checked_are_the_brain(mni152):
    result = healthy_volume_check(fake_predictor(0.0, 0.0), mni152, batch_size=64,
                                  progress=False)
    assert result["shape"] == [197, 233, 189]
    for plane, entry in result["planes"].items():
        # the head fills most of the field of view; the empty margins are skipped
        assert 0.5 * entry["n_slices"] < entry["slices_checked"] < entry["n_slices"], plane


def _data_yaml(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("data:\n  sources:\n    - format: phantoms\n"
                    "      options: {n: 8, size: 64, seed: 1}\n")
    return path


def test_cli_healthy_volume_lands_in_metrics(tiny_model_path, volume, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "_model_forward", lambda self, x: constant_forward(1.0, 0.0)(x))
    out = tmp_path / "ev"
    result = CliRunner().invoke(main, [
        "evaluate", str(tiny_model_path), "--data", str(_data_yaml(tmp_path)), "--split", "all",
        "--out", str(out), "--bootstrap", "0", "--healthy-volume", str(volume)],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "healthy volumes" in result.output and "100.0% of 66 slices" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    (entry,) = metrics["healthy_volumes"]
    assert entry["volume"] == str(volume)
    assert entry["overall"]["share_called_tumor"] == 1.0
    assert {p: e["slices_checked"] for p, e in entry["planes"].items()} == EXPECTED
    report = (out / "report.md").read_text()
    assert "## Healthy volumes" in report
    assert f"| {volume} | upright | all | 66 | 100.0% |" in report


def test_cli_rejects_a_missing_healthy_volume_before_work(tiny_model_path, tmp_path):
    result = CliRunner().invoke(main, [
        "evaluate", str(tiny_model_path), "--data", str(_data_yaml(tmp_path)),
        "--out", str(tmp_path / "ev"), "--healthy-volume", str(tmp_path / "nope.nii.gz")])
    assert result.exit_code != 0 and "nope.nii.gz: no such file" in result.output
    assert not (tmp_path / "ev").exists()


def test_a_model_of_several_mr_sequences_is_refused_naming_them(volume):
    """A healthy volume is one grey volume: a model that reads three named sequences (the LGG
    grade model) is refused before any slice is predicted, never fed a grey copy."""
    sequences = {**PREPROCESSING, "channels": 3,
                 "channel_names": ["pre-contrast", "flair", "post-contrast"]}
    predictor = Recording(forward=constant_forward(0.1, 0.0), preprocessing=sequences,
                          classes=CLASSES)
    with pytest.raises(HealthyVolumeError, match="3 MR sequences .pre-contrast, flair, post-contrast."):
        healthy_volume_check(predictor, volume, progress=False)
    assert predictor.seen == []
    # one named channel is still one grey volume: checked as before
    single = fake_predictor(0.1, 0.0)
    single.preprocessing = {**PREPROCESSING, "channel_names": ["t1ce"]}
    assert healthy_volume_check(single, volume, progress=False)["overall"]["called_tumor"] == 0
