"""What every dataset adapter provides: light records to split on, and samples on demand.

An adapter reads a dataset in the layout it ships in. ``records()`` lists every usable item with
its labels but without pixels (cheap, used for splits, counts and mixing); ``load(record)``
reads the pixels and returns a :class:`~mtl.data.sample.Sample`. Bad items raise
:class:`DataError` naming the file, or are skipped and counted when ``on_error="skip"``.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mtl.data.sample import Sample


class DataError(ValueError):
    """A dataset item that cannot be read or is inconsistent; the message names the file."""


@dataclass(frozen=True)
class Record:
    """One item of a dataset, without its pixels."""

    case_id: str
    patient_id: str
    presence: int | None
    label: str | None
    has_mask: bool
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def stratum(self) -> str:
        """The label used to stratify splits: type label if known, else presence, else '?'."""
        if self.label is not None:
            return self.label
        if self.presence is not None:
            return f"presence={self.presence}"
        return "?"


class Adapter(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``_scan`` and ``load``."""

    name: ClassVar[str] = ""
    #: one line shown by ``mtl data list``; the full card lives in ``datasets/<name>.yaml``
    summary: ClassVar[str] = ""
    #: the ``options`` this adapter reads; any other is refused (a typo never passes silently)
    option_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def known_options(cls) -> frozenset[str]:
        """Every option name accepted: ``option_names`` plus the constructor's keyword arguments."""
        params = inspect.signature(cls.__init__).parameters
        named = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY or v.kind is v.POSITIONAL_OR_KEYWORD}
        return frozenset(cls.option_names | (named - {"self", "root", "on_error"}))

    def __init__(self, root: str | Path, *, on_error: str = "raise", **options: Any) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        unknown = sorted(set(options) - self.known_options())
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(self.known_options())) or 'none'}")
        self.root = Path(root).expanduser()
        self.on_error = on_error
        self.options = options
        self.skipped: list[tuple[str, str]] = []  # (source, reason) of items skipped
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        if self._records is None:
            if not self.root.exists():
                raise DataError(f"{self.name}: dataset folder not found: {self.root}")
            self._records = list(self._scan())
            if not self._records:
                raise DataError(f"{self.name}: no usable items found under {self.root}")
        return self._records

    def skip_or_raise(self, source: str | Path, reason: str) -> None:
        """Call on a bad item: raises DataError, or records the skip when on_error='skip'."""
        if self.on_error == "raise":
            raise DataError(f"{source}: {reason}")
        self.skipped.append((str(source), reason))

    @abc.abstractmethod
    def _scan(self) -> list[Record]:
        """List the dataset's items (no pixel decoding beyond what labels need)."""

    @abc.abstractmethod
    def load(self, record: Record) -> Sample:
        """Read one item's pixels and labels into a sample dict."""

    def __len__(self) -> int:
        return len(self.records())
