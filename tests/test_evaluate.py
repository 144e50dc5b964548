"""`mtl evaluate` end to end on a tiny phantom run."""

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.model.card import read_card, read_model_config

#: every test here reads conftest's learned_run: `make test` (--dist loadgroup) runs them on the
#: pytest-xdist worker that trains it for tests/test_train.py, so it is trained once
pytestmark = pytest.mark.xdist_group("learned_run")


@pytest.fixture(scope="module")
def run_dir(learned_run, tmp_path_factory):
    """A copy of the suite's tiny run on two phantom datasets (conftest.py; trained once for
    tests/test_train.py too): `mtl evaluate` writes into the run folder and its best.keras."""
    copy = tmp_path_factory.mktemp("runs") / "ev"
    shutil.copytree(learned_run[1].run_dir, copy)
    return copy


def test_evaluate_run_writes_metrics_report_and_plots(run_dir):
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--bootstrap", "50"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = run_dir / "eval-test"
    assert f"results: {out}" in result.output
    assert "presence accuracy" in result.output and "Dice mean" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    splits = json.loads((run_dir / "splits.json").read_text())
    n_test = sum(len(v["case_ids"]["test"]) for v in splits.values())
    assert overall["n_items"] == n_test  # exactly the run's held-out items
    # one row per item, the same items; its Dice column is what the headline Dice averages
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == n_test and "predictions.csv" in result.output
    scored = [float(r["dice"]) for r in rows if r["dice"] != ""]
    assert len(scored) == overall["mask"]["n_tumor"]
    assert sum(scored) / len(scored) == pytest.approx(overall["mask"]["dice_mean"], abs=1e-3)
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "threshold"):
        assert key in overall["presence"]
    assert overall["presence"]["calibration"]["ece"] is not None
    assert set(overall["type"]["per_class"]) == {"no_tumor", "glioma", "meningioma", "pituitary"}
    assert len(overall["type"]["confusion"]) == 4
    for key in ("dice_mean", "dice_median", "iou_mean", "hd95_median", "empty_fp_rate"):
        assert key in overall["mask"]
    assert overall["mask"]["hd95_unit"] == "mm"  # phantoms know their spacing
    # scored on the masks as exported; phantoms are 64 px like the network, so the two agree
    assert overall["mask"]["geometry"] == "source image"
    assert overall["mask"]["dice_mean"] == pytest.approx(
        overall["mask_network_input"]["dice_mean"], abs=0.02)
    assert set(overall["mask_by_type"]) <= {"glioma", "meningioma", "pituitary"}
    assert overall["mask_by_type"]
    free = overall["tumor_free_with_tumor_pixels"]
    assert free["n"] == overall["presence"]["n_negative"] and 0 <= free["count"] <= free["n"]
    assert "Dice mean, " in result.output
    assert set(overall["ci95"]) >= {"presence_accuracy", "type_macro_f1", "dice_mean"}
    assert overall["ci95_resampling"] == "patients"
    assert "resampling patients" in (out / "report.md").read_text()
    assert set(metrics["by_dataset"]) == {"phantoms", "phantoms#1"}
    for plot in ("roc.png", "confusion.png", "reliability.png", "dice_hist.png", "worst_cases.png"):
        assert (out / "plots" / plot).stat().st_size > 5000, plot
    report = (out / "report.md").read_text()
    assert "## Presence" in report and "## Type / grade" in report and "worst_cases.png" in report
    # calibration: ECE (15 bins) before and after the temperatures mtl train fitted on val
    fitted = read_model_config(run_dir / "best.keras")["calibration"]
    for task in ("presence", "type"):
        ece = overall[task]["ece"]
        assert ece["n_bins"] == 15 and overall[task]["calibration"]["n_bins"] == 15
        assert 0 <= ece["before_calibration"] <= 1 and 0 <= ece["after_calibration"] <= 1
        assert ece["temperature"] == pytest.approx(fitted[f"{task}_temperature"])
        assert ece["after_calibration"] == overall[task]["calibration"]["ece"]
    assert "presence ECE (15 bins), before / after calibration" in report
    assert "type ECE (15 bins), before / after calibration" in result.output
    # the run's own test split: its headline metrics go into best.keras's model card
    card = read_card(run_dir / "best.keras")
    assert card["metrics"]["split"] == "test" and card["metrics"]["source"] == "mtl evaluate"
    assert card["metrics"]["values"]["presence_accuracy"] == pytest.approx(
        overall["presence"]["accuracy"], abs=1e-4)
    assert card["metrics"]["items"] == n_test
    assert "model card updated with the test metrics" in result.output
    assert metrics["model_card"].startswith("model: demo model, synthetic data")


def test_evaluate_model_file_on_other_data(run_dir, tmp_path):
    out = tmp_path / "ev"
    result = CliRunner().invoke(main, [
        "evaluate", str(run_dir / "last.keras"), "--data", "phantoms=", "--split", "all",
        "--out", str(out), "--bootstrap", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["n_items"] == 200  # PhantomAdapter's default n, every item
    assert metrics["overall"]["ci95"] == {} or all(v is None for v in metrics["overall"]["ci95"].values())


def test_evaluate_errors_are_clear(run_dir, tmp_path):
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert bad.exit_code != 0 and "best.keras" in bad.output
    wrong = CliRunner().invoke(main, ["evaluate", str(run_dir), "--split", "holdout"])
    assert wrong.exit_code != 0 and "holdout" in wrong.output


def test_case_ids_missing_from_the_data_are_reported(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    splits = json.loads((copy / "splits.json").read_text())
    splits["phantoms"]["case_ids"]["test"].append("phantom-99999")  # no longer in the data
    (copy / "splits.json").write_text(json.dumps(splits))
    result = CliRunner().invoke(main, ["evaluate", str(copy), "--bootstrap", "0", "--out",
                                       str(tmp_path / "ev")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "less 1 case id" in metrics["data"]["phantoms"]["items"]
    assert "phantom-99999" in metrics["data"]["phantoms"]["items"]


def test_evaluate_takes_the_export_options_of_mtl_infer(run_dir, tmp_path, monkeypatch):
    """--presence-threshold and --largest-component score the masks `mtl infer` exports with
    the same options; both are recorded in metrics.json, report.md and the model card."""
    import mtl.evaluate.evaluation as evaluation

    seen = {}
    real_predict, real_score = evaluation.predict_split, evaluation.evaluate_predictions

    def predict_split(*args, **kwargs):
        seen["predict"] = kwargs
        return real_predict(*args, **kwargs)

    def evaluate_predictions(*args, **kwargs):
        seen["score"] = kwargs
        return real_score(*args, **kwargs)

    monkeypatch.setattr(evaluation, "predict_split", predict_split)
    monkeypatch.setattr(evaluation, "evaluate_predictions", evaluate_predictions)
    out = tmp_path / "ev-options"
    result = CliRunner().invoke(main, [
        "evaluate", str(run_dir), "--bootstrap", "0", "--out", str(out), "--threshold", "0.5",
        "--presence-threshold", "0.3", "--largest-component"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == 0.5 and metrics["presence_threshold"] == 0.3
    assert metrics["largest_component"] is True
    # the masks are scored with the largest region kept, gated at the presence threshold
    assert seen["predict"]["largest_component"] is True and seen["predict"]["threshold"] == 0.5
    assert seen["predict"]["presence_threshold"] == 0.3  # volumes: gated before the region
    assert seen["score"]["presence_threshold"] == 0.3 and seen["score"]["threshold"] == 0.5
    overall = metrics["overall"]
    assert overall["presence"]["threshold"] == 0.3 and overall["mask"]["threshold"] == 0.5
    report = (out / "report.md").read_text()
    assert "- presence_threshold: 0.3" in report and "- largest_component: True" in report
    card = read_card(run_dir / "best.keras")["metrics"]
    assert card["presence_threshold"] == 0.3 and card["largest_component"] is True
    # the same thresholds as one --threshold of 0.3: presence decided alike, masks not
    one = tmp_path / "ev-one"
    assert CliRunner().invoke(main, [
        "evaluate", str(run_dir), "--bootstrap", "0", "--out", str(one), "--threshold", "0.3"],
        catch_exceptions=False).exit_code == 0
    single = json.loads((one / "metrics.json").read_text())
    assert single["presence_threshold"] == 0.3 and single["largest_component"] is False
    assert single["overall"]["presence"]["confusion"] == overall["presence"]["confusion"]
    assert single["overall"]["mask"]["threshold"] == 0.3
    bad = CliRunner().invoke(main, ["evaluate", str(run_dir), "--presence-threshold", "1.5"])
    assert bad.exit_code != 0 and "--presence-threshold" in bad.output
