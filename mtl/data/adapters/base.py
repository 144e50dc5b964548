"""What every dataset adapter provides: light records to split on, and samples on demand.

An adapter reads a dataset in the layout it ships in. ``records()`` lists every usable item with
its labels but without pixels (cheap, used for splits, counts and mixing); ``load(record)``
reads the pixels and returns a :class:`~mtl.data.sample.Sample`. Bad items raise
:class:`DataError` naming the file, or are skipped and counted when ``on_error="skip"``.

The base class does what every ``load`` ends with: :meth:`Adapter.sample` builds the sample and
its meta (dataset, patient id, source, then the adapter's own keys) and turns an inconsistent
one into a DataError naming the file; :meth:`Adapter.read_image` and :meth:`Adapter.load_failure`
end a bad item. The file helpers the image-folder adapters share (:func:`image_files`,
:func:`visible_dirs`, :func:`natural_key`, :func:`read_gray_image`) live here too.
"""

from __future__ import annotations

import abc
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np

from mtl.data.imageio import read_gray
from mtl.data.sample import Sample, make_sample

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

_IGNORED_DIRS = frozenset({"__macosx"})


class DataError(ValueError):
    """A dataset item that cannot be read or is inconsistent; the message names the file."""


def context_refusal(dataset: str, k: int) -> str:
    """Why a dataset of single images cannot give ``data.context_slices`` (``k``)."""
    return (f"{dataset}: its items are single images, not slices of volumes, so "
            f"data.context_slices ({k}) cannot read their neighbouring slices; use it with "
            "datasets of volumes (lgg, brats), or set data.context_slices: 0")


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

    def load_failure(self, source: str | Path, reason: str) -> NoReturn:
        """End a failed ``load``: always raises DataError naming the file.

        With ``on_error="skip"`` the item is also recorded in ``skipped`` first (once, however
        often it is loaded), so a loader that catches DataError can move on and the skip counts.
        """
        if (str(source), reason) not in self.skipped:
            self.skip_or_raise(source, reason)
        raise DataError(f"{source}: {reason}")

    def read_image(self, path: Path) -> np.ndarray:
        """:func:`read_gray_image`, turning decode errors into :meth:`load_failure`."""
        from PIL import Image

        try:
            return read_gray_image(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            self.load_failure(path, f"cannot read image ({type(err).__name__}: {err})")

    def drop_duplicate_ids(self, records: list[Record]) -> list[Record]:
        """Keep the first record of each case_id; later ones go through ``skip_or_raise``."""
        seen: dict[str, str] = {}
        kept: list[Record] = []
        for record in records:
            if record.case_id in seen:
                self.skip_or_raise(record.source, f"duplicate case id {record.case_id!r} "
                                   f"(also {seen[record.case_id]})")
                continue
            seen[record.case_id] = record.source
            kept.append(record)
        return kept

    def sample(
        self,
        record: Record,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        blame: str | Path | None = None,
        **meta: Any,
    ) -> Sample:
        """The checked sample of ``record`` (case id, presence, label) with ``image`` and ``mask``.

        ``meta`` holds "dataset", "patient_id" and "source", then the adapter's own keys in the
        order given. An inconsistent sample (:func:`~mtl.data.sample.make_sample` refuses it)
        raises DataError naming ``blame``, the file at fault (default: the record's source).
        """
        info = {"dataset": self.name, "patient_id": record.patient_id, "source": record.source}
        try:
            return make_sample(
                image,
                case_id=record.case_id,
                mask=mask,
                presence=record.presence,
                label=record.label,
                meta={**info, **meta},
            )
        except ValueError as exc:
            raise DataError(f"{blame if blame is not None else record.source}: {exc}") from exc

    @abc.abstractmethod
    def _scan(self) -> list[Record]:
        """List the dataset's items (no pixel decoding beyond what labels need)."""

    @abc.abstractmethod
    def load(self, record: Record) -> Sample:
        """Read one item's pixels and labels into a sample dict."""

    def volume_slice(self, record: Record) -> tuple[str, int] | None:
        """(volume, slice number) where the record is a slice of a volume the dataset ships
        (``mtl evaluate --largest-component`` keeps one 3-D region per volume, as ``mtl
        infer`` does for a volume); None for a single image (the default)."""
        return None

    def load_context(self, record: Record, k: int) -> Sample:
        """The record's sample with the ``k`` slices on either side of it in its volume as
        channels (:mod:`mtl.data.context`, ``data.context_slices``). Only adapters that read
        volumes can; the others refuse."""
        raise DataError(context_refusal(self.name, k))

    def __len__(self) -> int:
        return len(self.records())


# --- file helpers shared by the image-folder adapters -------------------------------------------


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image suffix (case-insensitive)."""
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders "y2" before "y10"."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder``, naturally sorted, without hidden or archive-tool folders."""
    dirs = [
        d
        for d in folder.iterdir()
        if d.is_dir() and not d.name.startswith(".") and d.name.lower() not in _IGNORED_DIRS
    ]
    return sorted(dirs, key=lambda d: natural_key(d.name))


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted."""
    files = [p for p in folder.iterdir() if is_image_file(p)]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_gray_image(path: Path) -> np.ndarray:
    """Read an image file as a 2-D array, as inference does (:func:`mtl.data.imageio.read_gray`).

    Raises :class:`~mtl.data.imageio.ImageReadError` (a ValueError) naming the file.
    """
    return read_gray(path)
