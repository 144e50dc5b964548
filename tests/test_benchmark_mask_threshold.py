"""benchmarks/mask_threshold.py: threshold and empty-mask fallback rules, scored per group."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mask_threshold import study  # noqa: E402


def test_rules_recover_only_what_the_probabilities_hold() -> None:
    truth = np.zeros((4, 10), bool)
    truth[0, :4] = truth[1, :4] = truth[2, :4] = True   # three tumor slices, one tumor-free
    prob = np.zeros((4, 10), np.float32)
    prob[0, :4] = 0.9                                    # found at 0.5
    prob[1, :4] = 0.25                                   # weak: a fallback of 0.2 finds it
    prob[2, :4] = 0.02                                   # lost to any rule tried
    prob[3, :2] = 0.35                                   # tumor-free, presence says no
    presence = np.array([0.9, 0.8, 0.7, 0.1])
    groups = {"all": truth.any(1), "first": np.array([True, False, False, False])}
    out = study(prob, truth, presence, groups, ~truth.any(1), [0.5, 0.3], [0.2])
    rules = out["rules"]
    assert rules["t=0.5"]["dice_mean"]["all"] == np.float64(1 / 3)
    assert rules["t=0.5"]["tumor_slices_without_mask"] == 2
    assert rules["fallback=0.2"]["dice_mean"]["all"] == np.float64(2 / 3)
    assert rules["fallback=0.2"]["tumor_slices_without_mask"] == 1
    assert rules["t=0.3"]["tumor_free_with_pixels"] == 0.0   # presence rule empties slice 3
    assert rules["t=0.5"]["dice_mean"]["first"] == 1.0
    assert out["tumor_slices_without_mask_at_0.5"] == 2
    assert out["max_probability_on_them"]["0.1"] < 0.05
    assert out["precision_recall_at_0.5"]["first"] == {"precision": 1.0, "recall": 1.0}
