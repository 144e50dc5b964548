"""Dataset cards: every supported dataset has a complete card naming a real adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl.data.adapters import adapter_names
from mtl.data.cards import CARD_KEYS, default_cards_dir, format_card_table, load_cards

TASKS = {"presence", "type", "mask", "box"}


def test_default_dir_is_repo_datasets() -> None:
    assert default_cards_dir() == Path(__file__).resolve().parents[1] / "datasets"


def test_every_adapter_has_a_complete_card() -> None:
    cards = load_cards()
    assert sorted(cards) == adapter_names()
    for name, card in cards.items():
        assert set(CARD_KEYS) <= set(card), name
        assert card["name"] == name
        assert set(card["labels"]) <= TASKS, name
        assert card["layout"].strip() and card["licence"] and card["source"], name
        assert isinstance(card["label_map"], dict), name


def test_known_facts() -> None:
    cards = load_cards()
    assert "10.6084/m9.figshare.1512427" in cards["figshare"]["source"]
    assert cards["figshare"]["licence"] == "CC BY 4.0"
    assert cards["brisc"]["licence"] == "CC BY 4.0"
    assert ".mat" in cards["figshare"]["layout"] and ".txt" in cards["figshare"]["layout"]


def test_table() -> None:
    cards = load_cards()
    table = format_card_table(cards)
    lines = table.splitlines()
    assert lines[0].split() == ["name", "title", "labels", "licence"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + len(cards)
    assert any(line.startswith("brats ") for line in lines)
    assert "presence, type, mask" in table


def test_incomplete_card_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("name: x\ntitle: X\n")
    with pytest.raises(ValueError, match="x.yaml"):
        load_cards(tmp_path)
    (tmp_path / "x.yaml").write_text("- just a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_cards(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_cards(tmp_path / "absent")
