"""Two datasets' masks of one slice compared on one grid (mtl.evaluate.copy_agreement)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mtl.config import Config, DataConfig, SourceConfig
from mtl.data.copies import link_copies
from mtl.data.pipeline import open_sources
from mtl.evaluate.copy_agreement import (
    CopyMaskPair,
    agreement_summary,
    align,
    compare_masks,
    copy_mask_agreement,
)
from test_adapters_figshare import DIGIT
from test_copies import brain_like

SIZE = 160
#: figshare id -> tumor type; ids of one type run on, so each type is one patient group
FIGSHARE = {1: "glioma", 2: "glioma", 3: "glioma", 10: "pituitary", 11: "pituitary"}
#: figshare id -> how BRISC holds its copy, and how many pixels wider BRISC draws the mask
COPIED = {1: ("reencoded", 0), 2: ("mirrored", 0), 3: ("resized", 0), 10: ("reencoded", 6)}
BRISC_CODE = {"glioma": "gl", "pituitary": "pi"}


def box_mask(ident: int, widen: int = 0) -> np.ndarray:
    """A rectangle, placed by ``ident``, ``widen`` pixels wider on the right."""
    mask = np.zeros((SIZE, SIZE), bool)
    top, left = 40 + 3 * ident, 50 + 2 * ident
    mask[top:top + 30, left:left + 24 + widen] = True
    return mask


def _figshare(root: Path) -> None:
    (root / "masks").mkdir(parents=True)
    for ident, kind in FIGSHARE.items():
        (root / kind).mkdir(exist_ok=True)
        Image.fromarray(brain_like(ident, SIZE)).save(root / kind / f"{ident}.jpg", quality=95)
        (root / kind / f"{ident}.txt").write_text(f"{DIGIT[kind]} 0.5 0.5 0.2 0.2\n")
        Image.fromarray(box_mask(ident).astype(np.uint8) * 255).save(root / "masks" / f"{ident}.png")


def _brisc(root: Path) -> None:
    def add(index: int, kind: str, pixels: np.ndarray, mask: np.ndarray, how: str) -> None:
        stem = f"brisc2025_train_{index:05d}_{BRISC_CODE[kind]}_ax_t1"
        image, outline = Image.fromarray(pixels), Image.fromarray(mask.astype(np.uint8) * 255)
        if how == "mirrored":
            image, outline = ImageOps.mirror(image), ImageOps.mirror(outline)
        elif how == "resized":
            image = image.resize((233, 233), Image.Resampling.BILINEAR)
            outline = outline.resize((233, 233), Image.Resampling.NEAREST)
        for folder in (root / "classification_task" / "train" / kind,
                       root / "segmentation_task" / "train" / "images"):
            folder.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(folder / f"{stem}.jpg", quality=80 if how == "reencoded" else 95)
        masks = root / "segmentation_task" / "train" / "masks"
        masks.mkdir(parents=True, exist_ok=True)
        outline.save(masks / f"{stem}.png")

    for k, (ident, (how, widen)) in enumerate(COPIED.items()):
        add(100 + k, FIGSHARE[ident], brain_like(ident, SIZE), box_mask(ident, widen), how)
    for j in range(6):  # BRISC's own slices, copies of nothing
        add(500 + j, "glioma", brain_like(2000 + j, SIZE), box_mask(j), "plain")


@pytest.fixture
def copied_masks(tmp_path: Path) -> list[CopyMaskPair]:
    _figshare(tmp_path / "figshare")
    _brisc(tmp_path / "brisc")
    config = Config(data=DataConfig(sources=[
        SourceConfig(format="figshare", root=str(tmp_path / "figshare")),
        SourceConfig(format="brisc", root=str(tmp_path / "brisc"))]))
    sources = open_sources(config)
    return copy_mask_agreement(sources, link_copies(sources, progress=False), progress=False)


def test_every_copy_is_lined_up_and_its_mask_scored(copied_masks) -> None:
    by_case = {int(r.case_a): r for r in copied_masks}
    assert set(by_case) == set(COPIED)  # one pair per planted copy, nothing else
    for ident, (how, widen) in COPIED.items():
        pair = by_case[ident]
        assert pair.source_a == "figshare" and pair.source_b == "brisc#1"
        assert pair.label == FIGSHARE[ident]
        assert pair.orientation == ("mirrored" if how == "mirrored" else "plain")
        assert pair.correlation > 0.95
        truth = box_mask(ident)
        if widen:  # the wider mask holds the first: Dice = 2|A| / (|A| + |B|)
            other = box_mask(ident, widen)
            assert pair.dice == pytest.approx(2 * truth.sum() / (truth.sum() + other.sum()))
            assert pair.pixels_b == other.sum()
        elif how == "resized":  # nearest-neighbour there and back moves the border a pixel
            assert 0.9 < pair.dice <= 1.0
        else:
            assert pair.dice == pytest.approx(1.0)


def test_summary_per_type_and_dataset_pair(copied_masks) -> None:
    summary = agreement_summary(copied_masks)
    assert summary["pairs_with_two_masks"] == len(COPIED) and summary["not_lined_up"] == 0
    assert summary["orientations"] == {"mirrored": 1, "plain": len(COPIED) - 1}
    assert summary["by_type"]["glioma"]["pairs"] == 3
    assert summary["by_type"]["pituitary"]["pairs"] == 1
    assert summary["by_type"]["pituitary"]["below_0.8"] == 0.0
    assert summary["by_datasets"] == {"brisc#1+figshare": summary["overall"]}
    across = summary["by_type_across_datasets"]
    assert across["glioma"].pop("second_items") == 3 and across["pituitary"].pop("second_items") == 1
    assert across == summary["by_type"]  # no copies within one dataset here
    within = CopyMaskPair("brisc#1", "a", "brisc#1", "b", "glioma", "glioma", "plain", 1.0, 1.0,
                          5, 5)
    assert agreement_summary([*copied_masks, within])["by_type_across_datasets"] == (
        agreement_summary(copied_masks)["by_type_across_datasets"])
    json.dumps(summary)  # ready for a results file


def test_turned_copy_is_found_and_unrelated_images_are_not_scored() -> None:
    image, mask = brain_like(5, SIZE), box_mask(5)
    assert align(image, image[::-1, ::-1])[0] == "turned"
    assert align(image, image[::-1, :])[0] == "flipped"
    orientation, correlation, dice, *_ = compare_masks(
        {"image": image, "mask": mask}, {"image": image[::-1, ::-1], "mask": mask[::-1, ::-1]})
    assert (orientation, dice) == ("turned", pytest.approx(1.0)) and correlation > 0.99
    *_, dice, _, _ = compare_masks({"image": image, "mask": mask},
                                   {"image": brain_like(77, SIZE), "mask": mask})
    assert np.isnan(dice)


def test_labels_of_a_pair() -> None:
    def pair(a, b) -> CopyMaskPair:
        return CopyMaskPair("x", "1", "y", "2", a, b, "plain", 1.0, 0.5, 1, 1)

    assert pair("glioma", "glioma").label == "glioma"
    assert pair("meningioma", "pituitary").label == "meningioma/pituitary"
    assert pair(None, "glioma").label == "glioma"  # Br35H types nothing
    assert pair("glioma", None).datasets == "x+y"


def test_benchmark_script_writes_results_and_figure(tmp_path: Path) -> None:
    """benchmarks/copy_mask_agreement.py on the planted copies: JSON, CSV and figure."""
    from benchmarks.copy_mask_agreement import main

    _figshare(tmp_path / "figshare")
    _brisc(tmp_path / "brisc")
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  sources:\n"
        f"    - {{format: figshare, root: {tmp_path / 'figshare'}}}\n"
        f"    - {{format: brisc, root: {tmp_path / 'brisc'}}}\n"
        "  split: {train: 0.5, val: 0.25, test: 0.25}\n")
    out = tmp_path / "out" / "agreement.json"
    assert main(["--config", str(config), "--out", str(out), "--rows",
                 str(tmp_path / "rows.csv")]) == 0
    result = json.loads(out.read_text())
    assert result["all"]["pairs_with_two_masks"] == len(COPIED)
    assert sum(s["pairs_with_two_masks"] for s in result["by_split"].values()) == len(COPIED)
    once = result["train_copies_once"]
    assert once["figshare"]["left_out"] == 0
    assert 0 <= once["brisc#1"]["left_out"] <= len(COPIED)
    assert len(result["agree_least"]) == len(COPIED)
    assert result["agree_least"][0]["dice"] == min(r["dice"] for r in result["agree_least"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == len(COPIED) + 1
