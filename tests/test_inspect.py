"""summarize() and write_mosaic() on small synthetic datasets (and the real ones if present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.data.adapters.base import DataError
from mtl.data.adapters.br35h import Br35hAdapter
from mtl.data.adapters.figshare import FigshareAdapter
from mtl.data.inspect import summarize, write_mosaic


def write_image(path: Path, size: tuple[int, int] = (40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = (np.arange(width * height).reshape(height, width) % 250).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def br35h_root(tmp_path: Path) -> Path:
    root = tmp_path / "br35h"
    for i in range(3):
        write_image(root / "yes" / f"y{i}.jpg")
    for i in range(4):
        write_image(root / "no" / f"no{i}.jpg")
    square = {"name": "polygon", "all_points_x": [5, 20, 20, 5], "all_points_y": [5, 5, 15, 15]}
    entries = {
        f"y{i}.jpg1": {"filename": f"y{i}.jpg", "regions": [{"shape_attributes": square}]}
        for i in (0, 1)
    }
    (root / "yes" / "annotations_via.json").write_text(json.dumps(entries))
    return root


@pytest.fixture
def figshare_root(tmp_path: Path) -> Path:
    root = tmp_path / "figshare"
    for folder, digit, ids in (("glioma", 2, (1, 2, 25)), ("pituitary", 0, (40,))):
        for i in ids:
            write_image(root / folder / f"{i}.jpg")
            (root / folder / f"{i}.txt").write_text(f"{digit} 0.5 0.5 0.4 0.3\n")
    (root / "glioma" / "3.jpg").write_bytes(b"junk")
    (root / "glioma" / "3.txt").write_text("1 0.5 0.5 0.4 0.3\n")  # wrong digit: skipped
    return root


def test_summarize_br35h(br35h_root: Path) -> None:
    # the fixture's images are identical copies: one group with dedup, one each without
    assert summarize(Br35hAdapter(br35h_root))["n_patients"] == 1
    summary = summarize(Br35hAdapter(br35h_root, dedup=False))
    assert summary["dataset"] == "br35h" and summary["n_items"] == 7 and summary["n_patients"] == 7
    assert summary["labels"] == {"no_tumor": 4, "unknown": 3}
    assert summary["presence"] == {"0": 4, "1": 3}
    assert summary["tasks"] == {"presence": 7, "type": 4, "mask": 6, "box": 0}
    assert summary["skipped"] == {"count": 0, "items": []}
    json.dumps(summary)


def test_summarize_figshare_counts_boxes_and_skips(figshare_root: Path) -> None:
    summary = summarize(FigshareAdapter(figshare_root, on_error="skip"))
    assert summary["n_items"] == 4 and summary["n_patients"] == 3  # blocks 0, 1, 2
    assert summary["labels"] == {"glioma": 3, "pituitary": 1}
    assert summary["tasks"] == {"presence": 4, "type": 4, "mask": 0, "box": 4}
    assert summary["skipped"]["count"] == 1
    assert summary["skipped"]["items"][0]["source"].endswith("3.txt")
    assert "digit 1" in summary["skipped"]["items"][0]["reason"]


def test_write_mosaic(br35h_root: Path, tmp_path: Path) -> None:
    path = write_mosaic(Br35hAdapter(br35h_root), tmp_path / "plots" / "mosaic.png", n=5, seed=1)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200


def test_write_mosaic_with_boxes_and_bad_items(figshare_root: Path, tmp_path: Path) -> None:
    (figshare_root / "glioma" / "2.jpg").write_bytes(b"not an image")
    adapter = FigshareAdapter(figshare_root, on_error="skip")
    path = write_mosaic(adapter, tmp_path / "m.png", n=16)
    assert path.stat().st_size > 0
    assert any(source.endswith("2.jpg") for source, _ in adapter.skipped)


def test_write_mosaic_raises_on_bad_item_by_default(figshare_root: Path, tmp_path: Path) -> None:
    for stale in ("3.jpg", "3.txt"):
        (figshare_root / "glioma" / stale).unlink()
    (figshare_root / "glioma" / "2.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"2\.jpg: cannot read image"):
        write_mosaic(FigshareAdapter(figshare_root), tmp_path / "m.png", n=16)


def test_mosaic_is_deterministic(br35h_root: Path, tmp_path: Path) -> None:
    first = write_mosaic(Br35hAdapter(br35h_root), tmp_path / "a.png", n=4, seed=7).read_bytes()
    second = write_mosaic(Br35hAdapter(br35h_root), tmp_path / "b.png", n=4, seed=7).read_bytes()
    assert first == second


def test_real_data_summaries_and_mosaic(shared_data: Path, tmp_path: Path) -> None:
    figshare_root = shared_data / "figshare-cheng"
    if not figshare_root.is_dir():
        pytest.skip(f"real figshare data not available at {figshare_root}")
    summary = summarize(FigshareAdapter(figshare_root))
    assert summary["labels"] == {"glioma": 1212, "meningioma": 601, "pituitary": 790}
    assert summary["tasks"]["box"] == 2603 and summary["tasks"]["mask"] == 2603  # masks/N.png
    write_mosaic(FigshareAdapter(figshare_root), tmp_path / "figshare.png", n=4)
