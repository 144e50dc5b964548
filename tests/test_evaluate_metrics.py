"""Every evaluation metric against cases computed by hand."""

import numpy as np
import pytest

from mtl.evaluate.metrics import (
    bootstrap_ci, box_metrics, calibration, cluster_bootstrap_ci, dice_iou, hd95, mask_metrics, presence_metrics,
    roc_points, type_metrics,
)


def test_presence_by_hand():
    truth = [1, 1, 1, 0, 0, 0, 0, 1]
    prob = [0.9, 0.6, 0.3, 0.2, 0.7, 0.1, 0.4, 0.8]
    m = presence_metrics(truth, prob, threshold=0.5)
    # tp: 0.9, 0.6, 0.8 -> 3; fn: 0.3 -> 1; fp: 0.7 -> 1; tn: 3
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    # AUC = share of (pos, neg) pairs ranked right: positives .9 .6 .3 .8 vs negatives .2 .7 .1 .4
    right = sum(p > n for p in (0.9, 0.6, 0.3, 0.8) for n in (0.2, 0.7, 0.1, 0.4))
    assert m["roc_auc"] == pytest.approx(right / 16)
    assert presence_metrics(truth, prob, threshold=0.25)["recall"] == 1.0
    assert presence_metrics([1, 1], [0.9, 0.8])["roc_auc"] is None  # one class only
    roc = roc_points(truth, prob)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0


def test_type_by_hand():
    classes = ["no_tumor", "glioma", "meningioma", "pituitary"]
    truth = np.array([1, 1, 1, 2, 2, 3])
    guess = np.array([1, 1, 2, 2, 2, 1])
    probs = np.eye(4)[guess] * 0.7 + 0.075
    m = type_metrics(truth, probs, classes)
    assert m["confusion"] == [[0, 0, 0, 0], [0, 2, 1, 0], [0, 0, 2, 0], [0, 1, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    g, me, pi = m["per_class"]["glioma"], m["per_class"]["meningioma"], m["per_class"]["pituitary"]
    assert (g["precision"], g["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (me["precision"], me["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (pi["precision"], pi["recall"], pi["support"]) == (0.0, 0.0, 1)
    assert m["per_class"]["no_tumor"]["support"] == 0
    # macro over the classes present: glioma 2/3, meningioma 0.8, pituitary 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def squares():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True  # 25 px
    b = np.zeros((20, 20), bool)
    b[5:10, 7:12] = True  # 25 px, overlap 15
    return a, b


def test_dice_iou_and_hd95_by_hand():
    a, b = squares()
    d, j = dice_iou(a, b)
    assert d == pytest.approx(2 * 15 / 50)
    assert j == pytest.approx(15 / 35)
    assert dice_iou(np.zeros_like(a), np.zeros_like(a)) == (1.0, 1.0)
    # every surface point of a is within 2 px of b's surface and vice versa; the far edges are 2
    assert hd95(a, b) == pytest.approx(2.0)
    assert hd95(a, b, spacing=(0.5, 0.5)) == pytest.approx(1.0)
    assert hd95(a, b, spacing=(1.0, 3.0)) == pytest.approx(6.0)  # the shift is along columns
    assert np.isnan(hd95(a, np.zeros_like(a)))
    assert hd95(a, a) == 0.0


def test_mask_metrics_over_a_set():
    a, b = squares()
    empty = np.zeros_like(a)
    fp = np.zeros_like(a)
    fp[0:2, 0:2] = True  # 4 false-positive pixels on a tumor-free image
    truth = np.stack([a, a, empty, empty]).astype(float)[..., None]
    prob = np.stack([a, b, empty, fp]).astype(float)[..., None]
    spacing = np.array([[0.5, 0.5]] * 4)
    m = mask_metrics(truth, prob, spacing)
    assert (m["n_tumor"], m["n_empty"]) == (2, 2)
    assert m["per_image_dice"] == pytest.approx([1.0, 0.6])
    assert m["dice_mean"] == pytest.approx(0.8) and m["dice_median"] == pytest.approx(0.8)
    assert m["hd95_unit"] == "mm" and m["per_image_hd95"] == pytest.approx([0.0, 1.0])
    assert m["empty_fp_rate"] == 0.5
    assert m["empty_fp_area_px_mean"] == 2.0 and m["empty_fp_area_mm2_mean"] == pytest.approx(0.5)
    no_spacing = mask_metrics(truth, prob, np.full((4, 2), np.nan))
    assert no_spacing["hd95_unit"] == "px" and no_spacing["empty_fp_area_mm2_mean"] is None


def test_box_hit_rate():
    box = np.zeros((3, 20, 20), bool)
    box[:, 4:12, 4:12] = True
    pred = np.zeros((3, 20, 20))
    pred[0, 6:9, 6:9] = 1  # inside
    pred[1, 14:18, 14:18] = 1  # outside
    m = box_metrics(box[..., None].astype(float), pred[..., None])  # third: empty -> miss
    assert m["per_image_hit"] == [1.0, 0.0, 0.0]
    assert m["hit_rate"] == pytest.approx(1 / 3)
    assert m["empty_prediction_rate"] == pytest.approx(1 / 3)
    assert m["inside_fraction_mean"] == pytest.approx(0.5)


def test_calibration_by_hand():
    conf = np.array([0.15, 0.15, 0.85, 0.85, 0.85, 0.85])
    correct = np.array([0, 1, 1, 1, 1, 0])
    c = calibration(conf, correct, n_bins=10)
    # bin [0.1,0.2): conf .15 acc .5 weight 2/6; bin [0.8,0.9): conf .85 acc .75 weight 4/6
    assert c["ece"] == pytest.approx(2 / 6 * 0.35 + 4 / 6 * 0.10)
    assert [b["n"] for b in c["bins"]] == [2, 4]
    assert calibration(np.array([1.0, 1.0]), np.array([1, 1]))["ece"] == pytest.approx(0.0)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.random(200)
    low, high = bootstrap_ci(np.mean, x, n_resamples=500)
    assert low < x.mean() < high
    assert high - low < 0.15
    assert bootstrap_ci(np.mean, np.array([1.0])) is None


def test_cluster_bootstrap_resamples_patients_not_images():
    """20 patients, each seen as 10 identical slices: the honest interval is that of 20 values;
    resampling the 200 slices one by one would be about sqrt(10) times narrower."""
    rng = np.random.default_rng(1)
    per_patient = rng.random(20)
    x = np.repeat(per_patient, 10)
    groups = np.repeat([f"p{i}" for i in range(20)], 10)
    low, high = cluster_bootstrap_ci(np.mean, x, groups=groups, n_resamples=2000, seed=0)
    ref_low, ref_high = bootstrap_ci(np.mean, per_patient, n_resamples=2000)
    item_low, item_high = bootstrap_ci(np.mean, x, n_resamples=2000)
    assert low < x.mean() < high
    assert (high - low) == pytest.approx(ref_high - ref_low, rel=0.2)
    assert (high - low) > 2 * (item_high - item_low)
    # one slice per patient: the ordinary bootstrap
    single = [f"p{i}" for i in range(20)]
    low1, high1 = cluster_bootstrap_ci(np.mean, per_patient, groups=single, n_resamples=2000)
    assert (high1 - low1) == pytest.approx(ref_high - ref_low, rel=0.2)
    # paired arrays stay paired; too few groups give no interval; lengths must match
    a = np.array([0, 1, 1, 0, 1, 1]); b = np.array([0, 1, 1, 0, 1, 1])
    assert cluster_bootstrap_ci(lambda u, v: float(np.mean(u == v)), a, b,
                                groups=list("aabbcc"), n_resamples=50) == (1.0, 1.0)
    assert cluster_bootstrap_ci(np.mean, x[:3], groups=["a"] * 3) is None
    with pytest.raises(ValueError, match="group ids"):
        cluster_bootstrap_ci(np.mean, x, groups=groups[:5])
