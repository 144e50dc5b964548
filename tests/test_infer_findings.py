"""mtl.infer.findings: numbers on synthetic masks whose true size and place are known."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.infer.findings import case_findings, compact_ranges, csv_row, hemisphere
from test_infer_support import CLASSES, head_volume, oblique_las_affine


def _volume_outputs(n: int, tumor_slices=(), p_tumor=0.9, p_clean=0.1):
    presence = np.full(n, p_clean)
    presence[list(tumor_slices)] = p_tumor
    type_probs = np.tile([0.85, 0.05, 0.05, 0.05], (n, 1))
    type_probs[list(tumor_slices)] = [0.1, 0.7, 0.1, 0.1]
    return presence, type_probs


def test_image_area_centroid_box_and_mm2_with_known_spacing():
    mask = np.zeros((60, 80), np.uint8)
    mask[10:20, 30:45] = 1  # 10 x 15 = 150 px
    f = case_findings(mask=mask, presence=[0.8], type_probs=[[0.1, 0.2, 0.6, 0.1]],
                      classes=CLASSES, spacing=(0.5, 0.4))
    t = f["tumor"]
    assert t["pixels"] == t["area_px"] == 150
    assert t["area_mm2"] == pytest.approx(150 * 0.2)
    assert t["centroid"] == [14.5, 37.0]
    assert t["bbox_min"] == [10, 30] and t["bbox_max"] == [19, 44]
    assert t["volume_ml"] is None and t["hemisphere"] is None and t["centroid_ras_mm"] is None
    assert f["presence"] == {"probability": 0.8, "decision": True, "threshold": 0.5,
                             "slice": None, "rule": "single image"}
    assert f["type"]["label"] == "meningioma"
    # without spacing: pixels only
    f = case_findings(mask=mask, presence=[0.8], type_probs=[[0.1, 0.2, 0.6, 0.1]], classes=CLASSES)
    assert f["tumor"]["area_mm2"] is None and f["pixel_area_mm2"] is None


def test_volume_size_in_ml_mm2_per_slice_and_world_centroid():
    affine = oblique_las_affine()  # voxels 0.9 x 1.1 x 2.5 mm, tilted
    mask = np.zeros((40, 48, 10), np.uint8)
    mask[5:15, 20:30, 2:5] = 1  # 10 x 10 x 3 voxels
    mask[5:10, 20:30, 5] = 1  # 50 more on slice 5
    presence, type_probs = _volume_outputs(10, (2, 3, 4, 5))
    f = case_findings(mask=mask, presence=presence, type_probs=type_probs, classes=CLASSES,
                      slice_axis=2, affine=affine)
    t = f["tumor"]
    assert t["pixels"] == 350
    assert t["volume_ml"] == pytest.approx(350 * 0.9 * 1.1 * 2.5 / 1000)
    assert t["slices"] == [2, 3, 4, 5]
    assert t["area_px"] == 100 and t["largest_slice"] == 2
    assert t["area_mm2"] == pytest.approx(100 * 0.9 * 1.1)
    assert t["per_slice"][-1] == {"slice": 5, "area_px": 50, "area_mm2": pytest.approx(49.5)}
    centroid = np.argwhere(mask).mean(0)
    assert t["centroid"] == pytest.approx(centroid, abs=0.01)
    assert t["centroid_ras_mm"] == pytest.approx((affine @ [*centroid, 1])[:3], abs=0.01)
    assert t["bbox_min"] == [5, 20, 2] and t["bbox_max"] == [14, 29, 5]
    assert f["presence"]["probability"] == 0.9 and f["presence"]["slice"] == 2
    assert f["type"]["label"] == "glioma" and "tumor area" in f["type"]["rule"]
    assert t["hemisphere"] is None  # orientation not declared known


@pytest.mark.parametrize("affine, lr_axis, high_side", [
    (oblique_las_affine(), 0, "left"),            # L-A-S: index 0 grows toward patient left
    (np.diag([1.0, 1.0, 1.0, 1.0]), 0, "right"),  # R-A-S: toward patient right
    (np.array([[0, 1.2, 0, 0], [-1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]), 1, "right"),  # P-R-S
    (np.array([[0, -1.2, 0, 0], [1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]), 1, "left"),   # A-L-S
])
def test_hemisphere_follows_the_affine_orientation(affine, lr_axis, high_side):
    shape = (40, 40, 10)
    image = head_volume(shape)
    low = {"left": "right", "right": "left"}[high_side]
    for where, side in (("high", high_side), ("low", low)):
        mask = np.zeros(shape, np.uint8)
        sl = [slice(15, 25), slice(15, 25), slice(3, 6)]
        sl[lr_axis] = slice(27, 33) if where == "high" else slice(7, 13)
        mask[tuple(sl)] = 1
        result = hemisphere(mask, affine, image)
        assert result["side"] == side, (where, result)
        assert result["left_right_axis"] == lr_axis
    mask = np.zeros(shape, np.uint8)
    sl = [slice(15, 25), slice(15, 25), slice(3, 6)]
    sl[lr_axis] = slice(14, 26)  # across the midline
    mask[tuple(sl)] = 1
    both = hemisphere(mask, affine, image)
    assert both["side"] == "both" and both["left_fraction"] == pytest.approx(0.5, abs=0.1)


def test_hemisphere_uses_the_head_midline_not_the_array_centre():
    shape = (60, 40, 8)
    image = np.zeros(shape, np.float32)
    image[30:58] = head_volume((28, 40, 8))  # head off-centre, spanning i = 30..57
    mask = np.zeros(shape, np.uint8)
    mask[34:40, 15:25, 3:5] = 1  # right of the array centre (29.5), left of the head midline
    result = hemisphere(mask, np.diag([-1.0, 1, 1, 1]), image)  # L-A-S: higher i = left
    assert result["side"] == "right" and 40 < result["midline_index"] < 47


def test_findings_report_hemisphere_only_when_orientation_is_known():
    shape = (40, 40, 10)
    mask = np.zeros(shape, np.uint8)
    mask[28:33, 15:25, 3:6] = 1
    presence, type_probs = _volume_outputs(10, (3, 4, 5))
    kwargs = dict(mask=mask, presence=presence, type_probs=type_probs, classes=CLASSES,
                  slice_axis=2, affine=np.diag([-1.0, 1, 1, 1]), image=head_volume(shape))
    assert case_findings(**kwargs, orientation_known=True)["tumor"]["hemisphere"]["side"] == "left"
    assert case_findings(**kwargs, orientation_known=False)["tumor"]["hemisphere"] is None


def test_volume_aggregation_with_skipped_slices_and_no_tumor():
    presence = np.array([np.nan, 0.2, 0.3, np.nan])
    type_probs = np.array([[np.nan] * 4, [0.9, 0.1, 0, 0], [0.5, 0.5, 0, 0], [np.nan] * 4])
    mask = np.zeros((16, 16, 4), np.uint8)
    f = case_findings(mask=mask, presence=presence, type_probs=type_probs, classes=CLASSES,
                      slice_axis=2, affine=np.eye(4))
    assert f["presence"]["probability"] == 0.3 and f["presence"]["slice"] == 2
    assert not f["presence"]["decision"]
    # weighted by presence (0.2, 0.3): no_tumor = (0.2*0.9 + 0.3*0.5) / 0.5
    assert f["type"]["probabilities"]["no_tumor"] == pytest.approx(0.66)
    assert f["slices_skipped"] == [0, 3] and f["slices_run"] == 2
    assert f["tumor"]["pixels"] == 0 and f["tumor"]["volume_ml"] == 0
    assert f["tumor"]["slices"] == [] and f["tumor"]["centroid"] is None
    assert not f["warnings"]


def test_disagreeing_heads_are_flagged():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:4, 2:4] = 1
    f = case_findings(mask=mask, presence=[0.1], type_probs=[[1, 0, 0, 0]], classes=CLASSES)
    assert "says no tumor" in f["warnings"][0]


def test_compact_ranges_and_csv_row():
    assert compact_ranges([9, 3, 4, 5, 11, 12]) == "3-5,9,11-12"
    assert compact_ranges([]) == ""
    mask = np.zeros((20, 20), np.uint8)
    mask[2:4, 2:5] = 1
    f = case_findings(mask=mask, presence=[0.7], type_probs=[[0.1, 0.6, 0.2, 0.1]], classes=CLASSES)
    row = csv_row({"case": "a", "source": "a.png", "kind": "image", "findings": f}, CLASSES)
    assert row["case"] == "a" and row["status"] == "ok" and row["label"] == "glioma"
    assert row["p_glioma"] == 0.6 and row["tumor_pixels"] == 6 and row["bbox_max"] == "3 4"
    failed = csv_row({"case": "b", "status": "failed", "error": "b.png: bad"}, CLASSES)
    assert failed["status"] == "failed" and failed["error"] == "b.png: bad"
    assert failed["presence_probability"] is None
