"""The worst-case gallery shows and ranks the masks `mtl infer` exports (presence gate applied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtl.evaluate import plots
from mtl.evaluate.predict import SplitPredictions

S = 32
CLASSES = ["no_tumor", "glioma"]


def _predictions() -> SplitPredictions:
    """Three slices whose mask head outputs the same square:
    0: tumor, presence 0.2 (the gate of 0.5 withholds a perfect mask);
    1: tumor, presence 0.9 (exported, perfect);
    2: tumor-free, presence 0.1 (a false mask the gate withholds)."""
    square = np.zeros((S, S, 1), np.float32)
    square[8:20, 8:20] = 1.0
    n = 3
    targets = {"mask": np.stack([square, square, np.zeros_like(square)]),
               "presence": np.array([[1.0], [1.0], [0.0]], np.float32),
               "type": np.array([1, 1, 0]), "box": np.zeros((n, S, S, 1), np.float32),
               "spacing": np.full((n, 2), np.nan, np.float32)}
    weights = {"mask": np.ones(n, np.float32), "presence": np.ones(n, np.float32),
               "type": np.ones(n, np.float32), "box": np.zeros(n, np.float32)}
    outputs = {"mask": np.stack([square * 0.9] * n),
               "presence": np.array([[0.2], [0.9], [0.1]], np.float32),
               "type": np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1]], np.float32)}
    return SplitPredictions(["gated", "kept", "free"], ["d"] * n, np.zeros((n, S, S, 1)),
                            targets, weights, outputs, [])


def test_the_gallery_scores_the_exported_mask() -> None:
    pred = _predictions()
    pixels, withheld, dice, badness = plots.worst_case_scores(pred, 0.5, "presence")
    assert list(pixels) == [0, 144, 0] and list(withheld) == [144, 0, 144]
    # Dice on tumor slices only, as predictions.csv has it
    assert dice[0] == 0.0 and dice[1] == pytest.approx(1.0) and np.isnan(dice[2])
    assert int(np.argmax(badness)) == 0  # the withheld tumor mask is the worst case
    # the independent rule exports the mask head as it is: the tumor-free slice is then worst
    pixels, withheld, dice, badness = plots.worst_case_scores(pred, 0.5, "independent")
    assert list(pixels) == [144, 144, 144] and not withheld.any()
    assert dice[0] == pytest.approx(1.0)
    assert int(np.argmax(badness)) == 2
    # a lower gate (the presence threshold picked on validation) lets slice 0's mask through
    pixels, withheld, dice, _ = plots.worst_case_scores(pred, 0.5, "presence", 0.15)
    assert list(pixels) == [144, 144, 0] and dice[0] == pytest.approx(1.0)
    # pixels exactly at the threshold are not exported (mtl infer keeps p > threshold)
    pred.outputs["mask"][:] = np.where(pred.outputs["mask"] > 0, np.float32(0.5), 0)
    assert not plots.worst_case_scores(pred, 0.5, "independent")[0].any()


def test_evaluate_draws_the_gallery_under_its_own_mask_rule_and_gate(tmp_path: Path,
                                                                     monkeypatch) -> None:
    from mtl.evaluate.report import evaluate_predictions

    seen = {}

    def gallery(pred, classes, threshold, path, **kwargs):
        seen.update(kwargs, threshold=threshold)
        return None

    monkeypatch.setattr(plots, "worst_cases", gallery)
    evaluate_predictions(_predictions(), CLASSES, tmp_path, n_resamples=0,
                         mask_rule="independent", presence_threshold=0.15)
    assert seen == {"mask_rule": "independent", "presence_threshold": 0.15, "threshold": 0.5}


def test_withheld_masks_are_drawn_dashed(tmp_path: Path, monkeypatch) -> None:
    drawn = []
    original = plots.plt.Axes.contour

    def contour(ax, *args, **kwargs):
        drawn.append((kwargs.get("colors"), kwargs.get("linestyles")))
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "contour", contour)
    path = plots.worst_cases(_predictions(), CLASSES, 0.5, tmp_path / "worst.png")
    assert path.is_file() and path.stat().st_size > 0
    red = sorted(style for color, style in drawn if color == "red")
    assert red == ["dashed", "dashed", "solid"]
