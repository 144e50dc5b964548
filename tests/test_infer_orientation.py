"""Volume slices reach the network upright, as the training pictures are, and masks go back to
the file's array order (issue 14, item 5).

One axial slice is saved as a PNG (as a viewer shows it: anterior up, the patient's right on the
left) and as one-slice NIfTI files with RAS, LPS and permuted affines, written by hand from the
picture. Every file must give the same presence, type and mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtl.infer.predict import Predictor
from mtl.infer.readers import InputItem, load_case
from test_infer_support import (  # noqa: F401 - tiny_model_path is a fixture
    CLASSES,
    HIGH,
    LOW,
    PREPROCESSING,
    fake_forward,
    save_nifti,
    save_png,
    tiny_model_path,
    tumor_image,
)

H, W = 40, 56
# tumor in the picture's upper left: anterior, patient's right
PICTURE = tumor_image(H, W, (8, 16, 10, 22), seed=3)


def _ras(img):  # i -> Right, j -> Anterior: data[i, j] = img[H-1-j, W-1-i]
    return img[::-1, ::-1].T


def _lps(img):  # i -> Left, j -> Posterior: data[i, j] = img[j, i]
    return img.T


def _permuted(img):  # axis 0 -> Anterior, axis 1 -> Right: data[a, b] = img[H-1-a, W-1-b]
    return img[::-1, ::-1]


LAYOUTS = {
    # name: (affine, picture -> array, array -> picture)
    "RAS": (np.diag([1.0, 1.0, 1.0, 1.0]), _ras, lambda m: m.T[::-1, ::-1]),
    "LPS": (np.diag([-1.0, -1.0, 1.0, 1.0]), _lps, lambda m: m.T),
    "permuted": (np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
                 _permuted, lambda m: m[::-1, ::-1]),
}


def corner_forward(x: np.ndarray) -> dict[str, np.ndarray]:
    """A stand-in network that cares which way up its input is: presence and type from the upper
    left quarter, tumor pixels only in the left half."""
    x = np.asarray(x)[..., :1]
    n, h, w = x.shape[:3]
    corner = x[:, : h // 2, : w // 2].reshape(n, -1).mean(axis=1)
    out = fake_forward(x)
    out["presence"] = np.clip(corner * 2, 0, 1).astype(np.float32)[:, None]
    probs = np.stack([1 - corner, corner, corner / 2, corner / 4], axis=1) + 0.01
    out["type"] = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    left = np.zeros_like(x)
    left[:, :, : w // 2] = 1
    out["mask"] = (((x > LOW) & (x < HIGH)) * left).astype(np.float32)
    return out


def _case(path: Path, kind: str):
    return load_case(InputItem(path.stem, kind, path, (path,)))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_slice_as_picture_and_as_nifti_gives_the_same_answers(tmp_path, layout):
    affine, to_array, to_picture = LAYOUTS[layout]
    png = _case(save_png(tmp_path / "slice.png", PICTURE), "image")
    nii = _case(save_nifti(tmp_path / "slice.nii.gz", to_array(PICTURE)[:, :, None], affine),
                "nifti")
    predictor = Predictor(forward=corner_forward, preprocessing=PREPROCESSING, classes=CLASSES,
                          mask_rule="independent")
    a, b = predictor.predict(png.slices), predictor.predict(nii.slices)
    np.testing.assert_allclose(b.presence, a.presence, rtol=1e-6)
    assert b.presence[0] > 0.2  # the tumor corner is seen
    np.testing.assert_allclose(b.type_probs, a.type_probs, rtol=1e-6)
    native = nii.to_native(b.mask)
    assert native.shape == to_array(PICTURE)[:, :, None].shape
    assert a.mask[0].sum() > 20
    assert np.array_equal(to_picture(native[:, :, 0]), a.mask[0])


def test_array_order_is_kept_on_request_and_for_unknown_orientation(tmp_path):
    affine, to_array, _ = LAYOUTS["RAS"]
    path = save_nifti(tmp_path / "slice.nii.gz", to_array(PICTURE)[:, :, None], affine)
    item = InputItem("s", "nifti", path, (path,))
    kept = load_case(item, upright=False)
    assert np.array_equal(kept.slices[0], to_array(PICTURE))
    assert not kept.upright.moves_pixels
    upright = load_case(item)
    assert np.array_equal(upright.slices[0], PICTURE)
    # the per-slice results go back to the array before anything is written
    assert np.array_equal(upright.native_slices(upright.slices)[0], to_array(PICTURE))


def test_infer_cli_gives_picture_and_volume_the_same_findings(tmp_path, tiny_model_path):
    """End to end with a real (untrained) network: mtl infer on the PNG and on the RAS NIfTI."""
    import nibabel as nib
    from click.testing import CliRunner
    from PIL import Image

    from mtl.cli import main

    affine, to_array, to_picture = LAYOUTS["RAS"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_png(inputs / "picture.png", PICTURE)
    save_nifti(inputs / "volume.nii.gz", to_array(PICTURE)[:, :, None], affine)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["infer", str(tiny_model_path), str(inputs),
                                       "--out", str(out), "--threshold", "0.45",
                                       "--mask-rule", "independent"])
    assert result.exit_code == 0, result.output
    png = json.loads((out / "picture" / "findings.json").read_text())["findings"]
    vol = json.loads((out / "volume" / "findings.json").read_text())["findings"]
    assert vol["presence"]["probability"] == pytest.approx(png["presence"]["probability"], rel=1e-4)
    for name, p in png["type"]["probabilities"].items():
        assert vol["type"]["probabilities"][name] == pytest.approx(p, rel=1e-4, abs=1e-6)
    picture_mask = np.asarray(Image.open(out / "picture" / "mask.png")) > 0
    volume_mask = np.asarray(nib.load(str(out / "volume" / "mask.nii.gz")).dataobj)[:, :, 0] > 0
    assert np.array_equal(to_picture(volume_mask), picture_mask)
