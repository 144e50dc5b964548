"""Masks are scored as `mtl infer` exports them: at each source image's own size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.config import Config, DataConfig, SourceConfig
from mtl.data.pipeline import TASK_NAMES, open_sources, plan_split
from mtl.data.preprocess import letterbox, letterbox_info, unletterbox
from mtl.evaluate.predict import SplitPredictions, source_geometry_passes, source_geometry_scores
from mtl.evaluate.report import score

CLASSES = ["no_tumor", "glioma", "meningioma", "pituitary"]
H, W, S = 48, 64, 32  # source images 64 x 48, network input 32


def _tumor_mask(i: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[10 + i : 22 + i, 12 + 2 * i : 30 + 2 * i] = 1
    return mask


@pytest.fixture
def sources(tmp_path: Path):
    """A figshare JPEG folder with expert masks (3 slices) and a yes/no folder (2 tumor-free)."""
    fig = tmp_path / "figshare"
    (fig / "masks").mkdir(parents=True)
    for i, folder in enumerate(("glioma", "meningioma", "pituitary")):
        (fig / folder).mkdir()
        pixels = np.random.default_rng(i).integers(0, 255, (H, W), dtype=np.uint8)
        Image.fromarray(pixels).save(fig / folder / f"{i + 1}.jpg", quality=95)
        (fig / folder / f"{i + 1}.txt").write_text(
            f"{ {'pituitary': 0, 'meningioma': 1, 'glioma': 2}[folder]} 0.5 0.5 0.5 0.5\n")
        Image.fromarray(_tumor_mask(i) * 255).save(fig / "masks" / f"{i + 1}.png")
    free = tmp_path / "free" / "no"
    free.mkdir(parents=True)
    for j in range(2):
        pixels = np.random.default_rng(10 + j).integers(0, 255, (H, W), dtype=np.uint8)
        Image.fromarray(pixels).save(free / f"n{j}.jpg", quality=95)
    config = Config(data=DataConfig(image_size=S, sources=[
        SourceConfig(format="figshare", root=str(fig), options={"image_similarity": False}),
        SourceConfig(format="class_folders", root=str(tmp_path / "free"))]))
    opened = open_sources(config)
    for s in opened:
        s.splits = {"test": list(range(len(s.records)))}
    return opened


def _network_truth(sources, plan) -> np.ndarray:
    """Each item's true mask letterboxed to the network size (what training sees)."""
    out = np.zeros((len(plan), S, S, 1), np.float32)
    for j in range(len(plan)):
        sample = sources[plan.source[j]].adapter.load(sources[plan.source[j]].records[plan.item[j]])
        info = letterbox_info(H, W, S)
        out[j, ..., 0] = letterbox(sample["mask"], info, nearest=True)
    return out


def _predictions(sources, probs: np.ndarray, presence: np.ndarray, **scoring) -> SplitPredictions:
    """SplitPredictions of the fixture's items with the given mask probabilities (network size)
    and presence probabilities; ``scoring``: source_geometry_scores's options."""
    plan = plan_split(sources, "test")
    n = len(plan)
    native = source_geometry_scores(sources, plan, probs, np.ones(n, np.float32), progress=False,
                                    **scoring)
    labels = [sources[s].records[i].label for s, i in zip(plan.source, plan.item)]
    targets = {
        "presence": np.array([[0.0 if lab == "no_tumor" else 1.0] for lab in labels]),
        "type": np.array([CLASSES.index(lab) for lab in labels]),
        "mask": _network_truth(sources, plan),
        "box": np.zeros((n, S, S, 1), np.float32),
        "spacing": np.full((n, 2), np.nan, np.float32),
    }
    weights = {k: np.ones(n, np.float32) for k in TASK_NAMES}
    weights["box"][:] = 0
    outputs = {"presence": presence.reshape(n, 1).astype(np.float32), "mask": probs,
               "type": np.eye(len(CLASSES))[targets["type"]]}
    return SplitPredictions([r.case_id for s in sources for r in s.records],
                            [s.name for s in sources for _ in s.records],
                            np.zeros((n, S, S, 1)), targets, weights, outputs, [], [], native)


def test_scores_are_taken_at_the_source_size(sources) -> None:
    plan = plan_split(sources, "test")
    weights = np.ones(len(plan), np.float32)
    tumor = plan.source == 0
    # everything predicted: the exported mask covers the whole image, padding cropped away
    everything = source_geometry_scores(sources, plan, np.ones((len(plan), S, S, 1)), weights,
                                        progress=False)
    assert (everything.pred_pixels == H * W).all()
    for j in np.flatnonzero(tumor):
        area = _tumor_mask(int(sources[0].records[plan.item[j]].case_id) - 1).sum()
        assert everything.dice[j] == pytest.approx(2 * area / (area + H * W))
    assert np.isnan(everything.dice[~tumor]).all() and not everything.tumor[~tumor].any()
    # nothing predicted: Dice 0, HD95 undefined, no pixel on tumor-free images
    nothing = source_geometry_scores(sources, plan, np.zeros((len(plan), S, S, 1)), weights,
                                     progress=False)
    assert (nothing.dice[tumor] == 0).all() and np.isnan(nothing.hd95[tumor]).all()
    assert (nothing.pred_pixels == 0).all()
    # the network-size truth brought back: close to, but not exactly, the expert mask
    back = source_geometry_scores(sources, plan, _network_truth(sources, plan), weights,
                                  progress=False)
    assert (back.dice[tumor] > 0.8).all() and (back.dice[tumor] <= 1.0).all()
    assert back.hd95_unit == "source px" and (back.hd95[tumor] <= 2.0).all()
    # items without a mask label are not scored
    skipped = source_geometry_scores(sources, plan, np.ones((len(plan), S, S, 1)),
                                     np.zeros(len(plan), np.float32), progress=False)
    assert np.isnan(skipped.dice).all() and (skipped.pred_pixels == 0).all()


def test_score_reports_per_type_and_tumor_free_pixels(sources) -> None:
    plan = plan_split(sources, "test")
    probs = _network_truth(sources, plan)
    free = np.flatnonzero(plan.source == 1)
    probs[free[0], 5, 5, 0] = 1.0  # one stray pixel on one tumor-free image
    pred = _predictions(sources, probs, (plan.source == 0).astype(np.float32))
    native = pred.native
    labels = [sources[s].records[i].label for s, i in zip(plan.source, plan.item)]
    result = score(pred, CLASSES, mask_rule="independent")
    assert result["mask"]["geometry"] == "source image"
    assert set(result["mask_by_type"]) == {"glioma", "meningioma", "pituitary"}
    for name, entry in result["mask_by_type"].items():
        assert entry["n_tumor"] == 1
        assert entry["dice_mean"] == pytest.approx(native.dice[labels.index(name)])
    assert result["tumor_free_with_tumor_pixels"] == {"n": 2, "count": 1, "rate": 0.5}
    # the default rule withholds the stray pixel: presence says no tumor there
    gated = score(pred, CLASSES)
    assert gated["mask"]["mask_rule"] == "presence"
    assert gated["tumor_free_with_tumor_pixels"] == {"n": 2, "count": 0, "rate": 0.0}
    assert gated["mask_other_rule"]["tumor_free_with_tumor_pixels"]["count"] == 1
    assert gated["mask"]["dice_mean"] == pytest.approx(result["mask"]["dice_mean"])
    assert result["mask_network_input"]["dice_mean"] == pytest.approx(1.0)  # exact at 32 px
    assert result["mask"]["dice_mean"] < 1.0  # the exported masks are not


def test_an_item_that_cannot_be_read_again_is_left_out_not_counted_tumor_free(
        sources, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_split(sources, "test")
    free_adapter = sources[1].adapter
    monkeypatch.setattr(free_adapter, "load", lambda record: (_ for _ in ()).throw(OSError("gone")))
    native = source_geometry_scores(sources, plan, np.ones((len(plan), S, S, 1)),
                                    np.ones(len(plan), np.float32), progress=False)
    assert native.scored.tolist() == (plan.source == 0).tolist()
    from mtl.evaluate.metrics import summarise_masks

    summary = summarise_masks(native)
    assert summary["n_tumor"] == 3 and summary["n_empty"] == 0


def test_the_mask_rule_of_mtl_infer_applies(sources) -> None:
    plan = plan_split(sources, "test")
    n = len(plan)
    probs = np.ones((n, S, S, 1), np.float32)
    presence = np.where(plan.source == 0, 0.9, 0.2).astype(np.float32)
    presence[0] = 0.3  # a tumor slice the presence head misses
    raw = source_geometry_scores(sources, plan, probs, np.ones(n, np.float32), progress=False)
    gated = raw.withhold(presence > 0.5)  # as SplitPredictions.native_under("presence", 0.5)
    assert (raw.pred_pixels == H * W).all()
    assert gated.pred_pixels.tolist() == [0 if p <= 0.5 else H * W for p in presence]
    assert gated.dice[0] == 0 and gated.dice[1] == pytest.approx(raw.dice[1])
    assert np.isnan(gated.hd95[0]) and gated.hd95[1] == pytest.approx(raw.hd95[1])


def test_the_presence_threshold_gates_apart_from_the_mask_threshold(sources) -> None:
    """`mtl evaluate --presence-threshold`, as `mtl infer`'s: presence decisions and the mask
    rule's gate move; mask pixels keep `--threshold`."""
    plan = plan_split(sources, "test")
    probs = _network_truth(sources, plan) * 0.9 + 0.05  # tumor pixels 0.95, the rest 0.05
    presence = np.where(plan.source == 0, 0.9, 0.1)
    presence[0] = 0.3  # a tumor slice the presence head doubts
    pred = _predictions(sources, probs, presence)
    default = score(pred, CLASSES, threshold=0.5)
    lowered = score(pred, CLASSES, threshold=0.5, presence_threshold=0.25)
    assert default["presence"]["threshold"] == 0.5 and lowered["presence"]["threshold"] == 0.25
    assert default["presence"]["confusion"]["fn"] == 1 and lowered["presence"]["confusion"]["fn"] == 0
    # the doubted slice's mask is withheld at 0.5 and exported at 0.25: Dice 0 -> near 1
    dice_default = default["mask"]["per_image_dice"]
    dice_lowered = lowered["mask"]["per_image_dice"]
    assert dice_default[0] == 0 and dice_lowered[0] > 0.8
    assert dice_lowered[1:] == dice_default[1:]
    assert lowered["mask"]["dice_mean"] > default["mask"]["dice_mean"]
    # mask pixels still at 0.5: the 0.05 background never counts, whatever the presence gate
    assert lowered["mask"]["threshold"] == 0.5
    assert lowered["tumor_free_with_tumor_pixels"]["count"] == 0
    # presence_threshold None: one threshold for both, so lowering it far enough to pass the
    # tumor-free slices' presence (0.1) also turns their 0.05 background into tumor pixels
    # (evaluate scores the source-size masks at the same threshold, as predict_split does)
    both = score(_predictions(sources, probs, presence, threshold=0.04), CLASSES, threshold=0.04)
    assert both["presence"]["threshold"] == 0.04 and both["mask"]["threshold"] == 0.04
    assert both["tumor_free_with_tumor_pixels"]["count"] == 2


def test_largest_component_scores_the_masks_infer_exports_with_it(sources) -> None:
    """`mtl evaluate --largest-component`: a stray blob beside the tumor is dropped before
    scoring, as `mtl infer --largest-component` drops it from the exported mask."""
    plan = plan_split(sources, "test")
    probs = _network_truth(sources, plan)
    probs[:, 26:29, 26:29, 0] = 1.0  # a small stray blob, away from every tumor, on every item
    raw = source_geometry_scores(sources, plan, probs, np.ones(len(plan), np.float32),
                                 progress=False)
    kept = source_geometry_scores(sources, plan, probs, np.ones(len(plan), np.float32),
                                  progress=False, largest_component=True)
    tumor = plan.source == 0
    assert (kept.pred_pixels[tumor] < raw.pred_pixels[tumor]).all()
    assert (kept.dice[tumor] > raw.dice[tumor]).all()
    # on a tumor-free image the blob is the largest region: it stays, as infer keeps it
    assert (kept.pred_pixels[~tumor] == raw.pred_pixels[~tumor]).all()
    assert (kept.pred_pixels[~tumor] > 0).all()
    # what infer exports for one of these items, from the same probability map
    from mtl.data.preprocess import unletterbox
    from mtl.infer.predict import keep_largest_component

    j = int(np.flatnonzero(tumor)[0])
    exported = keep_largest_component(
        unletterbox(probs[j, ..., 0], letterbox_info(H, W, S)) > 0.5)
    assert kept.pred_pixels[j] == int(exported.sum())


def test_predictions_csv_holds_each_item_as_scored(sources, tmp_path: Path) -> None:
    """predictions.csv: one row per item with the calibrated probabilities, the decision at the
    presence threshold and the exported mask's scores; unlabelled cells empty, not 0."""
    import csv

    from mtl.evaluate.per_item import write_predictions_csv

    plan = plan_split(sources, "test")
    probs = _network_truth(sources, plan)
    presence = np.where(plan.source == 0, 0.9, 0.1)
    presence[0] = 0.3
    pred = _predictions(sources, probs, presence)
    pred.weights["type"][3] = 0  # one tumor-free item without a type label
    path = write_predictions_csv(pred, CLASSES, tmp_path / "predictions.csv", 0.5)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(plan)
    assert list(rows[0])[:8] == ["dataset", "case_id", "patient", "presence_true",
                                 "presence_prob", "presence_called", "label_true", "label_pred"]
    assert [f"p_{c}" for c in CLASSES] == list(rows[0])[8:12]
    scores = score(pred, CLASSES)
    tumor_rows = [r for r in rows if r["presence_true"] == "1"]
    assert len(tumor_rows) == scores["mask"]["n_tumor"] == 3
    # the doubted tumor slice: not called, its mask withheld (Dice 0, no predicted pixel)
    assert rows[0]["presence_prob"] == "0.3" and rows[0]["presence_called"] == "0"
    assert np.float32(rows[0]["presence_prob"]) == pred.outputs["presence"][0, 0]  # exact
    assert rows[0]["dice"] == "0.0" and rows[0]["tumor_px_pred"] == "0"
    assert int(rows[0]["tumor_px_true"]) == _tumor_mask(
        int(sources[0].records[plan.item[0]].case_id) - 1).sum()
    # the Dice column averages to the headline Dice
    assert np.mean([float(r["dice"]) for r in tumor_rows]) == pytest.approx(
        scores["mask"]["dice_mean"], abs=1e-4)
    # tumor-free items: no Dice (empty), and the unlabelled type stays empty
    free = [r for r in rows if r["presence_true"] == "0"]
    assert all(r["dice"] == "" and r["tumor_px_true"] == "0" for r in free)
    assert rows[3]["label_true"] == "" and rows[4]["label_true"] == "no_tumor"
    # under the independent rule the withheld mask is back
    independent = write_predictions_csv(pred, CLASSES, tmp_path / "ind.csv", 0.5, "independent")
    assert float(next(csv.DictReader(independent.open()))["dice"]) > 0.8


def test_presence_threshold_sweep_agrees_with_evaluate(sources, tmp_path: Path) -> None:
    """benchmarks/presence_threshold.py, from one --mask-rule independent evaluation's
    predictions.csv, gives at each threshold what `mtl evaluate --presence-threshold` scores."""
    import json
    import sys

    from mtl.evaluate.per_item import write_predictions_csv

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.presence_threshold import at_threshold, read_predictions, sweep

    from mtl.evaluate.patient import patient_dice

    plan = plan_split(sources, "test")
    probs = _network_truth(sources, plan)
    free = np.flatnonzero(plan.source == 1)
    probs[free, 3:6, 3:6, 0] = 1.0  # the mask head marks both tumor-free images
    presence = np.where(plan.source == 0, 0.8, 0.2)
    presence[0], presence[free[0]] = 0.3, 0.4
    presence[1] = np.nextafter(np.float32(0.35), np.float32(1))  # just above a swept threshold
    pred = _predictions(sources, probs, presence)
    # two patients: the first tumor slice with a tumor-free one, the other two tumor slices
    pred.patient_ids = [f"{name}/{'a' if j in (0, int(free[0])) else 'b'}"
                        for j, name in enumerate(pred.source_names)]
    write_predictions_csv(pred, CLASSES, tmp_path / "predictions.csv", 0.5, "independent")
    (tmp_path / "metrics.json").write_text(json.dumps({"mask_rule": "independent",
                                                       "threshold": 0.5}))
    table = read_predictions(tmp_path)
    for t in (0.1, 0.25, 0.3, 0.35, 0.5, 0.9):
        swept, scored = at_threshold(table, t), score(pred, CLASSES, presence_threshold=t)
        assert swept["dice_mean"] == pytest.approx(scored["mask"]["dice_mean"], abs=1e-9), t
        assert swept["tumor_free_with_tumor_pixels"] == pytest.approx(
            scored["tumor_free_with_tumor_pixels"]["rate"]), t
        assert swept["tumor_slices_without_mask"] == scored["mask"]["hd95_undefined"], t
        _, per_patient = patient_dice(pred.patient_ids, pred.native_under("presence", t))
        assert swept["dice_per_patient"] == pytest.approx(per_patient.mean(), abs=1e-9), t
    # at 0.35 the slice at float32's next value above 0.35 keeps its mask, as in evaluate
    assert at_threshold(table, 0.35)["tumor_slices_without_mask"] == 1
    # the pick: the best Dice within the tumor-free bound. 0.25 keeps every tumor slice and
    # marks one tumor-free image of two; 0.35 and 0.5 lose the doubted tumor slice (0.3), and
    # only 0.5 marks no tumor-free image
    result = sweep(table, [0.25, 0.35, 0.5], max_free_rate=0.5)
    assert result["pick"] == 0.25
    assert sweep(table, [0.25, 0.35, 0.5], max_free_rate=0.0)["pick"] == 0.5
    # cross-validation: the folds' evaluations, each holding some patients, pooled, sweep as
    # the one evaluation of all of them; a patient in two of them, or other options, refused
    from benchmarks.presence_threshold import pool_predictions

    folds = [tmp_path / "fold0", tmp_path / "fold1"]
    lines = (tmp_path / "predictions.csv").read_text().splitlines(keepends=True)
    column = lines[0].rstrip("\r\n").split(",").index("patient")
    for folder, patient in zip(folds, ("a", "b")):
        folder.mkdir()
        (folder / "metrics.json").write_text((tmp_path / "metrics.json").read_text())
        (folder / "predictions.csv").write_text("".join(
            [lines[0]] + [r for r in lines[1:] if r.split(",")[column] == patient]))
    pooled = pool_predictions([read_predictions(f) for f in folds], [str(f) for f in folds])
    for t in (0.1, 0.3, 0.5):
        assert at_threshold(pooled, t) == pytest.approx(at_threshold(table, t)), t
    with pytest.raises(SystemExit, match="is in .*fold0 and .*fold0"):
        pool_predictions([read_predictions(folds[0])] * 2, [str(folds[0])] * 2)
    for other, message in (({"threshold": 0.4}, "differ in threshold"),
                           ({"tta": True}, "differ in tta"),
                           ({"split": "test"}, "differ in split"),
                           ({"ensemble": ["runs/b/best.keras"]}, "differ in ensemble")):
        (folds[1] / "metrics.json").write_text(json.dumps({"mask_rule": "independent",
                                                           "threshold": 0.5, **other}))
        with pytest.raises(SystemExit, match=message):
            pool_predictions([read_predictions(f) for f in folds], [str(f) for f in folds])
    for folder in folds:  # the test split is never pooled into a pick
        (folder / "metrics.json").write_text(json.dumps({"mask_rule": "independent",
                                                         "threshold": 0.5, "split": "test"}))
    with pytest.raises(SystemExit, match="never the test split"):
        pool_predictions([read_predictions(f) for f in folds], [str(f) for f in folds])
    # an evaluation under the presence rule cannot be swept: its withheld masks are gone
    (tmp_path / "metrics.json").write_text(json.dumps({"mask_rule": "presence", "threshold": 0.5}))
    with pytest.raises(SystemExit, match="independent"):
        read_predictions(tmp_path)


def test_the_presence_threshold_reaches_every_figure_of_an_evaluation(sources, tmp_path: Path
                                                                      ) -> None:
    """evaluate_predictions: the presence threshold, not the mask one, decides the bootstrap
    interval of the headline Dice and the patient-level slice Dice too."""
    from mtl.evaluate.report import evaluate_predictions

    plan = plan_split(sources, "test")
    presence = np.where(plan.source == 0, 0.9, 0.1)
    presence[0] = 0.3
    pred = _predictions(sources, _network_truth(sources, plan), presence)
    pred.patient_ids = [f"{name}/p{j}" for j, name in enumerate(pred.source_names)]
    gated = evaluate_predictions(pred, CLASSES, tmp_path / "a", n_resamples=200)
    opened = evaluate_predictions(pred, CLASSES, tmp_path / "b", n_resamples=200,
                                  presence_threshold=0.25)
    assert gated["presence_threshold"] == 0.5 and opened["presence_threshold"] == 0.25
    assert opened["threshold"] == 0.5 and opened["overall"]["mask"]["threshold"] == 0.5
    low, high = gated["overall"]["ci95"]["dice_mean"], opened["overall"]["ci95"]["dice_mean"]
    assert low[0] < high[0]  # the withheld slice's Dice of 0 is only in the gated resamples
    # the patient-level slice Dice (one slice per patient here, so evaluate_predictions leaves
    # the patient level out; its Dice step is called directly)
    from mtl.evaluate.patient import _slice_dice

    figshare = np.array([name == "figshare" for name in pred.source_names])
    slice_dice = [_slice_dice(pred, figshare, 0.5, "presence", 50, 0, presence_threshold=t)
                  for t in (None, 0.25)]
    assert slice_dice[0]["dice_mean"] < slice_dice[1]["dice_mean"]
    assert slice_dice[1]["dice_mean"] == pytest.approx(opened["by_dataset"]["figshare"]["mask"]
                                                       ["dice_mean"])
    assert "- presence_threshold: 0.25" in (tmp_path / "b" / "report.md").read_text()


def _lgg_volumes(root: Path, n_slices: int = 6) -> None:
    """Two TCGA patients of ``n_slices`` 40x40 slices; tumor in slices 2-4 (the same box)."""
    import tifffile

    data = root / "kaggle_3m"
    rows = ["Patient,neoplasm_histologic_grade"]
    for p in range(2):
        folder = data / f"TCGA_XX_{1000 + p}_20000101"
        folder.mkdir(parents=True)
        for index in range(1, n_slices + 1):
            image = np.random.default_rng(10 * p + index).integers(0, 255, (40, 40, 3), np.uint8)
            mask = np.zeros((40, 40), np.uint8)
            if index in (2, 3, 4):
                mask[8:24, 8:24] = 255
            tifffile.imwrite(folder / f"{folder.name}_{index}.tif", image, photometric="rgb")
            tifffile.imwrite(folder / f"{folder.name}_{index}_mask.tif", mask)
        rows.append(f"TCGA_XX_{1000 + p},{1 + p}")
    (data / "data.csv").write_text("\n".join(rows) + "\n")


def test_largest_component_keeps_one_3d_region_per_volume(tmp_path: Path, caplog) -> None:
    """For the slices of a volume (lgg, brats), `mtl evaluate --largest-component` keeps one
    3-D region per volume, as `mtl infer --largest-component` exports a volume: a stray blob on
    a tumor-free slice, away from the tumor, goes; a gate (the presence rule) applies first."""
    from mtl.config import load_config
    from mtl.infer.predict import keep_largest_component

    _lgg_volumes(tmp_path)
    config = load_config(overrides=[
        "data.sources=[{format: lgg, root: " + str(tmp_path) + "}]", "data.image_size=32",
        "data.channels=3", "data.classes=[no_tumor, G2, G3]", "data.link_copies=false"])
    sources = open_sources(config)
    for s in sources:
        s.splits = {"test": list(range(len(s.records)))}
    plan = plan_split(sources, "test")
    records = [sources[0].records[int(i)] for i in plan.item]
    assert [sources[0].adapter.volume_slice(r)[1] for r in records[:6]] == [1, 2, 3, 4, 5, 6]
    probs = np.zeros((len(plan), 32, 32, 1), np.float32)
    number = np.array([sources[0].adapter.volume_slice(r)[1] for r in records])
    probs[np.isin(number, (2, 3, 4)), 6:19, 6:19] = 0.9   # the tumor, 40 px -> 32 px
    probs[number == 6, 26:30, 26:30] = 0.9                # a stray blob on a tumor-free slice
    probs[number == 3, 26:28, 2:4] = 0.9                  # and a speck beside one tumor slice
    ones = np.ones(len(plan), np.float32)
    raw = source_geometry_scores(sources, plan, probs, ones, progress=False)
    kept = source_geometry_scores(sources, plan, probs, ones, progress=False,
                                  largest_component=True)
    stray, speck = number == 6, number == 3
    assert (raw.pred_pixels[stray] > 0).all() and (kept.pred_pixels[stray] == 0).all()
    assert (kept.dice[speck] > raw.dice[speck]).all()
    # per slice, the blob would have stayed: the region is chosen over the whole volume
    exported = [keep_largest_component(unletterbox(probs[j, ..., 0], letterbox_info(40, 40, 32))
                                       > 0.5) for j in range(6)]
    volume = keep_largest_component(np.stack(exported))
    assert kept.pred_pixels[:6].tolist() == volume.reshape(6, -1).sum(1).tolist()
    # the presence rule gates before the region is chosen, as mtl infer does: with the tumor
    # slices gated out, the blob is the largest region left, and it stays
    gate = ~np.isin(number, (2, 3, 4))
    gated = source_geometry_scores(sources, plan, probs, ones, progress=False,
                                   largest_component=True, gate=gate)
    assert (gated.pred_pixels[stray] > 0).all() and (gated.pred_pixels[~gate] == 0).all()
    # predict_split scores both in one pass, each slice loaded once: the same scores
    loads = []
    real_load = sources[0].adapter.load
    sources[0].adapter.load = lambda record: loads.append(record) or real_load(record)
    try:
        both = source_geometry_passes(sources, plan, probs, ones, progress=False,
                                      largest_component=True, gates=(None, gate))
    finally:
        del sources[0].adapter.load
    assert len(loads) == len(plan)
    for one, alone in zip(both, (kept, gated)):
        for name in ("dice", "pred_pixels", "hd95", "scored"):
            np.testing.assert_array_equal(getattr(one, name), getattr(alone, name))
    # a slice missing from the split is a blank slice: no region joins across it
    half = [j for j in range(len(plan)) if number[j] != 3]
    sources[0].splits = {"test": [int(plan.item[j]) for j in half]}
    plan_gap = plan_split(sources, "test")
    probs_gap = probs[half]
    probs_gap[number[half] == 4, 6:19, 6:19] = 0.0
    probs_gap[number[half] == 4, 10:32, 10:32] = 0.9  # slice 4: larger than slice 2's, overlapping
    with caplog.at_level("WARNING", logger="mtl.evaluate.predict"):
        gap = source_geometry_scores(sources, plan_gap, probs_gap, ones[half], progress=False,
                                     largest_component=True)
    assert "2 volume(s) have slices that are not in the split" in caplog.text
    at = {n: gap.pred_pixels[:5][i] for i, n in enumerate(number[half][:5])}
    assert at[2] == 0 and at[4] > 0  # slices 2 and 4 were not joined through the missing 3
    stacked = source_geometry_scores(sources, plan_gap, probs_gap, ones[half], progress=False)
    assert stacked.pred_pixels[:5][1] > 0  # (slice 2 has its region before one is chosen)


def test_native_under_the_presence_rule_reads_the_masks_gated_first(sources, caplog) -> None:
    """Where a region was kept per volume, the presence rule at the evaluation's threshold
    reads the masks gated before the region was chosen (native_gated); at another threshold,
    or the independent rule, it reads the mask head's own."""
    plan = plan_split(sources, "test")
    probs = _network_truth(sources, plan)
    presence = np.array([0.9, 0.2, 0.9, 0.1, 0.1], np.float32)[:len(plan)]
    pred = _predictions(sources, probs, presence)
    ones = np.ones(len(plan), np.float32)
    pred.native_gated = source_geometry_scores(sources, plan, probs * 0.0, ones, progress=False)
    pred.gated_at = 0.5
    assert pred.native_under("presence", 0.5).pred_pixels.sum() == 0  # the gated scores
    with caplog.at_level("WARNING", logger="mtl.evaluate.predict"):
        assert pred.native_under("presence", 0.3).pred_pixels.sum() > 0
    assert "chosen before the gate" in caplog.text  # not the semantics of mtl infer: said so
    assert pred.native_under("independent", 0.5).pred_pixels.sum() > 0
    assert pred.select(np.ones(len(plan), bool)).gated_at == 0.5
