"""Dataset cards: one YAML file per supported dataset, in the repository's ``datasets/`` folder.

The cards are package data too: a built wheel carries them as ``mtl/datasets/*.yaml`` (setup.py
maps the package ``mtl.datasets`` onto the repository's ``datasets/``), so ``mtl data list``
works from an installed package as from a checkout (:func:`cards_dir_candidates`).

Each card names its adapter and says where the data comes from, under which licence, how it
looks on disk, which tasks it labels and how patients are identified. ``mtl data list`` prints
:func:`format_card_table` of :func:`load_cards`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import mtl

CARD_KEYS = (
    "name",
    "title",
    "source",
    "licence",
    "citation",
    "modality",
    "layout",
    "label_map",
    "labels",
    "patient_ids",
    "notes",
)


def cards_dir_candidates(package: Path | None = None) -> list[Path]:
    """Where the cards may be, first found wins: ``mtl/datasets/`` inside the package (an
    installed wheel), then ``datasets/`` beside it where that is the project's root (a source
    checkout or an editable install; a ``datasets`` folder beside an installed package in
    site-packages is some other distribution's, not the cards)."""
    package = Path(mtl.__file__).resolve().parent if package is None else Path(package)
    candidates = [package / "datasets"]
    root = package.parent
    if (root / "setup.py").is_file() or (root / "setup.cfg").is_file():
        candidates.append(root / "datasets")
    return candidates


def default_cards_dir(package: Path | None = None) -> Path:
    """The first folder of :func:`cards_dir_candidates` that exists (the last one where none
    does, so that the error names it)."""
    candidates = cards_dir_candidates(package)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[-1]


def read_card(path: Path) -> dict[str, Any]:
    """One card, checked to be a mapping holding every key of :data:`CARD_KEYS`."""
    try:
        with path.open(encoding="utf-8") as handle:
            card = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(card, dict):
        raise ValueError(f"{path}: a dataset card must be a YAML mapping")
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"{path}: dataset card lacks {', '.join(missing)}")
    return card


def load_cards(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """All cards in ``directory`` (default: the repository's ``datasets/``), keyed by name."""
    folder = Path(directory) if directory is not None else default_cards_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset card folder not found: {folder}")
    cards: dict[str, dict[str, Any]] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        card = read_card(path)
        name = str(card["name"])
        if name in cards:
            raise ValueError(f"{path}: a second card named {name!r}")
        cards[name] = card
    return cards


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return " ".join(str(value).split())


def format_card_table(cards: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: name, title, labels, licence; one dataset per row."""
    header = ("name", "title", "labels", "licence")
    rows = [header] + [
        tuple(_cell(card.get(key, "")) for key in header) for _, card in sorted(cards.items())
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
