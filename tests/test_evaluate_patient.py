"""Patient-level type/grade in `mtl evaluate` (mtl/evaluate/patient.py): slice predictions
aggregated per patient, accuracy and ROC-AUC with bootstrap CIs over patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from mtl.cli import main
from mtl.evaluate.patient import (
    aggregate_patients, patient_auc, patient_bootstrap, patient_dice, patient_labels,
    patient_level, tumor_probabilities,
)
from mtl.evaluate.metrics import MaskScores, mask_scores
from mtl.evaluate.predict import SplitPredictions

from test_adapters_figshare import MAT_CODE, mat_arrays, write_cheng_mat

CLASSES = ["no_tumor", "G2", "G3"]


def test_tumor_probabilities_drop_no_tumor_and_renormalise() -> None:
    probs = np.array([[0.5, 0.1, 0.4], [0.0, 0.3, 0.7], [1.0, 0.0, 0.0]])
    out = tumor_probabilities(probs, [1, 2])
    assert out == pytest.approx(np.array([[0.2, 0.8], [0.3, 0.7], [0.5, 0.5]]))


def test_presence_weighted_mean_per_patient() -> None:
    patients = ["b", "a", "a", "a", "b"]
    presence = np.array([0.0, 0.9, 0.1, 0.0, 0.0])
    probs = np.array([[0.5, 0.5], [0.8, 0.2], [0.0, 1.0], [0.0, 1.0], [0.1, 0.9]])
    agg = aggregate_patients(patients, presence, probs)
    assert agg["patients"] == ["a", "b"]
    # a: (0.9 * [0.8, 0.2] + 0.1 * [0, 1] + 0 * [0, 1]) / 1.0; the slice called tumor-free counts 0
    assert agg["probs"][0] == pytest.approx([0.72, 0.28])
    assert agg["n_slices"].tolist() == [3, 2] and agg["weight_sum"] == pytest.approx([1.0, 0.0])
    # b: every weight 0 -> the plain mean of its slices
    assert agg["fallback"].tolist() == [False, True]
    assert agg["probs"][1] == pytest.approx([0.3, 0.7])


def test_two_labels_for_one_patient_are_found() -> None:
    one, conflicts = patient_labels(["p", "p", "q", "q", "r"], np.array([0, -1, 1, 0, -1]))
    assert one == {"p": 0} and conflicts == {"q": [0, 1]}  # r has no tumor label


def test_perfectly_separated_patients() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.1, 0.9]])
    assert patient_auc(truth, probs) == 1.0
    boot = patient_bootstrap(truth, probs, n_resamples=200, seed=0)
    assert boot["accuracy_ci95"] == [1.0, 1.0] and boot["roc_auc_ci95"] == [1.0, 1.0]
    # resamples drawing a single class (2 * 0.5**6 of them) have no AUC: skipped, and counted
    assert 180 < boot["roc_auc_resamples_used"] < 200
    again = patient_bootstrap(truth[::-1], probs[::-1], n_resamples=200, seed=0)
    assert again["roc_auc_ci95"] == [1.0, 1.0]
    assert patient_bootstrap(truth, probs, n_resamples=0)["roc_auc_ci95"] is None


def test_bootstrap_interval_of_an_imperfect_ranking() -> None:
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 20)
    p1 = np.clip(0.5 + 0.25 * (truth - 0.5) + rng.normal(0, 0.2, 40), 0, 1)
    probs = np.column_stack([1 - p1, p1])
    auc = patient_auc(truth, probs)
    assert auc == pytest.approx(skm.roc_auc_score(truth, p1))
    boot = patient_bootstrap(truth, probs, n_resamples=200, seed=0)
    low, high = boot["roc_auc_ci95"]
    assert low < auc < high and high - low > 0.05
    assert boot["roc_auc_resamples_used"] == 200  # 20 + 20 patients: never one class
    # a fixed seed: the same interval every time
    assert patient_bootstrap(truth, probs, n_resamples=20, seed=3) == patient_bootstrap(
        truth, probs, n_resamples=20, seed=3)


def test_more_classes_use_one_vs_rest_macro_auc() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), len(truth))
    expected = skm.roc_auc_score(truth, probs, multi_class="ovr", average="macro")
    assert patient_auc(truth, probs) == pytest.approx(expected)
    # a class no patient has is left out of the average
    two = np.array([0, 0, 2, 2])
    assert patient_auc(two, probs[:4]) == pytest.approx(np.mean([
        skm.roc_auc_score(two == 0, probs[:4, 0]), skm.roc_auc_score(two == 2, probs[:4, 2])]))
    assert patient_auc(np.zeros(4, int), probs[:4]) is None


def fake_predictions(rows: list[tuple[str, str, int, float, list[float]]]) -> SplitPredictions:
    """(dataset, patient, class index or -1 for unlabelled, presence, type probabilities)."""
    n = len(rows)
    label = np.array([r[2] for r in rows])
    return SplitPredictions(
        case_ids=[f"c{i}" for i in range(n)], source_names=[r[0] for r in rows],
        images=np.zeros((n, 4, 4, 1), np.float32),
        targets={"presence": (label > 0).astype(np.float32)[:, None],
                 "type": np.maximum(label, 0), "mask": np.zeros((n, 4, 4, 1), np.float32),
                 "box": np.zeros((n, 4, 4, 1), np.float32), "spacing": np.ones((n, 2))},
        weights={"presence": np.ones(n, np.float32), "type": (label >= 0).astype(np.float32),
                 "mask": np.zeros(n, np.float32), "box": np.zeros(n, np.float32)},
        outputs={"presence": np.array([[r[3]] for r in rows]),
                 "type": np.array([r[4] for r in rows]),
                 "mask": np.zeros((n, 4, 4, 1), np.float32)},
        skipped=[], patient_ids=[f"{r[0]}/{r[1]}" for r in rows])


def test_patient_level_section_skips_a_dataset_with_two_labels_per_patient() -> None:
    pred = fake_predictions([
        # lgg: p1 is G2 (its no_tumor slice and unlabelled slice still count, weighted)
        ("lgg", "p1", 1, 0.9, [0.1, 0.6, 0.3]), ("lgg", "p1", 0, 0.1, [0.8, 0.0, 0.2]),
        ("lgg", "p1", -1, 0.5, [0.0, 0.5, 0.5]),
        ("lgg", "p2", 2, 0.8, [0.0, 0.2, 0.8]), ("lgg", "p2", 2, 0.7, [0.2, 0.3, 0.5]),
        ("lgg", "p3", 0, 0.1, [0.9, 0.1, 0.0]), ("lgg", "p3", 0, 0.2, [0.9, 0.1, 0.0]),
        # other: q1 has a G2 slice and a G3 slice -> the dataset has no patient-level truth
        ("other", "q1", 1, 0.9, [0.1, 0.6, 0.3]), ("other", "q1", 2, 0.9, [0.1, 0.3, 0.6]),
        # single: one slice per patient -> patient level is slice level, not repeated
        ("single", "s1", 1, 0.9, [0.1, 0.6, 0.3]), ("single", "s2", 2, 0.9, [0.1, 0.3, 0.6]),
    ])
    section = patient_level(pred, CLASSES, n_resamples=200)
    assert set(section["datasets"]) == {"lgg"}
    assert "q1: G2, G3" in section["skipped"]["other"]
    assert "one slice per patient" in section["not_applicable"]["single"]
    lgg = section["datasets"]["lgg"]
    assert lgg["n_patients"] == 2 and lgg["n_patients_per_class"] == {"G2": 1, "G3": 1}
    assert lgg["patients_without_tumor_label"] == 1  # p3: no tumor slice
    p1 = lgg["patients"][0]
    assert p1["patient"] == "p1" and p1["n_slices"] == 3
    expected = (0.9 * np.array([2, 1]) / 3 + 0.1 * np.array([0, 1]) + 0.5 * np.array([.5, .5])) / 1.5
    assert [p1["probabilities"]["G2"], p1["probabilities"]["G3"]] == pytest.approx(expected)
    assert lgg["accuracy"] == 1.0 and lgg["roc_auc"] == 1.0 and lgg["roc_auc_of"] == "P(G3)"
    assert "2 patients (1 G2, 1 G3)" in lgg["summary"]
    assert list(lgg["roc"]) == ["P(G3)"]
    # one slice per patient everywhere (phantoms, most 2-D sets): no section at all
    only_single = pred.select(np.array([n == "single" for n in pred.source_names]))
    assert patient_level(only_single, CLASSES, n_resamples=10) is None
    # a type head without two tumor classes has nothing to score per patient
    assert patient_level(pred, ["no_tumor", "G2"], n_resamples=10) is None


def test_evaluate_writes_the_patient_level_section(tiny_phantom_run, tmp_path: Path) -> None:
    """`mtl evaluate` on data with patient ids and one tumor type per patient (figshare .mat
    files: PID per slice), beside a copy in which one patient has two types."""
    image, mask = mat_arrays(32, 32)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for i, (kind, pid) in enumerate([("glioma", "P1"), ("glioma", "P1"), ("meningioma", "P2"),
                                     ("meningioma", "P2"), ("pituitary", "P3"),
                                     ("pituitary", "P3"), ("glioma", "P4")]):
        write_cheng_mat(good / f"{i + 1}.mat", image + 50 * i, mask, MAT_CODE[kind], pid)
    write_cheng_mat(bad / "1.mat", image, mask, MAT_CODE["glioma"], "P9")
    write_cheng_mat(bad / "2.mat", image, mask, MAT_CODE["pituitary"], "P9")
    out = tmp_path / "ev"
    result = CliRunner().invoke(main, [
        "evaluate", str(tiny_phantom_run.run_dir / "best.keras"), "--data", f"figshare={good}",
        "--data", f"figshare={bad}", "--split", "all", "--out", str(out), "--bootstrap", "50"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    section = metrics["patient_level"]
    assert set(section["datasets"]) == {"figshare"} and "P9" in section["skipped"]["figshare#1"]
    entry = section["datasets"]["figshare"]
    assert entry["n_patients"] == 4 and entry["n_slices"] == 7
    assert entry["n_patients_per_class"] == {"glioma": 2, "meningioma": 1, "pituitary": 1}
    assert entry["roc_auc_of"].startswith("one-vs-rest") and entry["n_resamples"] == 50
    assert 0 <= entry["roc_auc"] <= 1 and 0 <= entry["roc_auc_resamples_used"] <= 50
    assert entry["accuracy_ci95"] is not None
    dice = entry["slice_dice"]
    assert dice["n_tumor_slices"] == 7 and dice["n_patients"] == 4
    assert dice["geometry"] == "source image"
    assert dice["dice_mean"] == pytest.approx(metrics["by_dataset"]["figshare"]["mask"]["dice_mean"])
    pooled = dice["patient_dice"]
    assert pooled["n_patients"] == 4 and set(pooled["per_patient"]) == {"P1", "P2", "P3", "P4"}
    assert 0 <= pooled["mean"] <= 1 and pooled["ci95"] is not None
    report = (out / "report.md").read_text()
    assert "## Patient level" in report and "rest on 4 patients" in report
    assert "Dice per patient, all its slices pooled" in report
    assert "figshare#1: not scored per patient" in report
    assert "per-patient ROC-AUC, figshare" in result.output
    plot = out / "plots" / "patient_roc_figshare.png"
    assert plot.stat().st_size > 5000 and "plots/patient_roc_figshare.png" in metrics["plots"]


def test_patient_dice_pools_the_pixels_of_every_slice() -> None:
    """Per-patient (volumetric) Dice: overlaps and pixel counts summed over a patient's
    slices, false-positive pixels on its tumor-free slices included."""
    truth = np.zeros((4, 10, 10), np.float32)
    prob = np.zeros((4, 10, 10), np.float32)
    truth[0, :5, :] = 1          # p1 slice 0: 50 true pixels ...
    prob[0, :5, :5] = 1          # ... 25 predicted, all inside: slice Dice 2*25/75
    prob[1, :2, :] = 1           # p1 slice 1: tumor-free, 20 false-positive pixels
    truth[2, :, :1] = 1          # p2: 10 true pixels, nothing predicted
    prob[3, 0, :3] = 1           # p3: tumor-free only -> left out
    scores = mask_scores(truth, prob, np.full((4, 2), np.nan))
    assert scores.dice[0] == pytest.approx(2 * 25 / 75)
    ids, values = patient_dice(["a/p1", "a/p1", "a/p2", "a/p3"], scores)
    assert ids == ["a/p1", "a/p2"]
    assert values == pytest.approx([2 * 25 / (50 + 25 + 20), 0.0])
    # the same scores under a mask rule that empties slice 1: its false positives go
    kept = scores.withhold(np.array([True, False, True, True]))
    assert patient_dice(["a/p1", "a/p1", "a/p2", "a/p3"], kept)[1][0] == pytest.approx(2 * 25 / 75)
    # true pixel counts not recorded (older scores): no pooled Dice rather than a wrong one
    old = MaskScores(scores.tumor, scores.dice, scores.iou, scores.hd95, scores.pred_pixels,
                     scores.pixel_area)
    assert patient_dice(["a/p1", "a/p1", "a/p2", "a/p3"], old) is None
