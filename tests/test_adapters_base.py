"""The Adapter base: the load tail every adapter shares (sample, meta, the error naming the file)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.data.adapters import adapter_class
from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.data.sample import Sample


class Tiny(Adapter):
    """One 4x4 item; ``mask_size`` sets the mask it loads with (4: consistent)."""

    name = "tiny"
    option_names = frozenset({"mask_size"})

    def _scan(self) -> list[Record]:
        return [Record("c1", "p1", presence=1, label="glioma", has_mask=True, source="img.png",
                       extra={"mask": "img_mask.png"})]

    def load(self, record: Record) -> Sample:
        size = self.options.get("mask_size", 4)
        return self.sample(record, np.zeros((4, 4)), np.ones((size, size)),
                           blame=record.extra["mask"], slice=7, grade="G2")


def test_sample_builds_meta_in_order(tmp_path: Path) -> None:
    adapter = Tiny(tmp_path)
    sample = adapter.load(adapter.records()[0])
    assert list(sample["meta"].items()) == [
        ("dataset", "tiny"), ("patient_id", "p1"), ("source", "img.png"), ("slice", 7),
        ("grade", "G2")]
    assert (sample["case_id"], sample["presence"], sample["label"]) == ("c1", 1, "glioma")
    assert sample["mask"].dtype == np.uint8 and sample["mask"].all()


def test_inconsistent_sample_names_the_file_at_fault(tmp_path: Path) -> None:
    adapter = Tiny(tmp_path, mask_size=3)
    with pytest.raises(DataError, match=r"^img_mask\.png: c1: mask shape \(3, 3\) does not match"):
        adapter.load(adapter.records()[0])


def test_image_adapter_names_the_file_of_an_unusable_image(tmp_path: Path) -> None:
    """class_folders, br35h and figshare build their samples through the base as well: an image
    one pixel wide is a DataError naming its file (it was a bare ValueError naming the case)."""
    path = tmp_path / "glioma" / "thin.png"
    path.parent.mkdir()
    Image.fromarray(np.zeros((8, 1), np.uint8)).save(path)
    adapter = adapter_class("class_folders")(tmp_path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: glioma/thin: image must be"):
        adapter.load(adapter.records()[0])


def test_phantoms_live_with_the_other_adapters() -> None:
    assert adapter_class("phantoms").__module__ == "mtl.data.adapters.phantoms"
