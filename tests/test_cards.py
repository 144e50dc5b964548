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


def _fake_package(site: Path) -> Path:
    package = site / "mtl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    return package


def _card(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    keys = "".join(f"{key}: x\n" for key in CARD_KEYS if key != "name")
    (folder / f"{name}.yaml").write_text(f"name: {name}\n{keys}")


def test_installed_package_reads_its_own_cards(tmp_path: Path, monkeypatch) -> None:
    """A wheel installs the cards as mtl/datasets/; a ``datasets`` folder beside the package in
    site-packages is another distribution's (e.g. Hugging Face's), never the cards."""
    import mtl

    site = tmp_path / "site-packages"
    package = _fake_package(site)
    _card(package / "datasets", "installed")
    _card(site / "datasets", "someone_elses")
    monkeypatch.setattr(mtl, "__file__", str(package / "__init__.py"))
    assert default_cards_dir() == package / "datasets"
    assert list(load_cards()) == ["installed"]


def test_checkout_reads_the_repository_cards(tmp_path: Path, monkeypatch) -> None:
    import mtl

    package = _fake_package(tmp_path / "repo")
    (tmp_path / "repo" / "setup.cfg").write_text("[metadata]\nname = mtl\n")
    _card(tmp_path / "repo" / "datasets", "checkout")
    monkeypatch.setattr(mtl, "__file__", str(package / "__init__.py"))
    assert default_cards_dir() == tmp_path / "repo" / "datasets"
    assert list(load_cards()) == ["checkout"]
    (tmp_path / "repo" / "setup.cfg").unlink()  # not a project root: not the cards
    with pytest.raises(FileNotFoundError, match="dataset card folder not found"):
        load_cards()


def test_build_puts_the_cards_in_the_package(tmp_path: Path) -> None:
    """setup.py/setup.cfg ship datasets/*.yaml as package data, mtl/datasets/*.yaml (what a
    wheel holds; building one takes too long for a test, build_py is its package part)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                           str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped = sorted(p.name for p in (tmp_path / "mtl" / "datasets").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (root / "datasets").glob("*.yaml"))
    assert load_cards(tmp_path / "mtl" / "datasets") == load_cards(root / "datasets")
