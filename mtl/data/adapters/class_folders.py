"""Classification sets laid out as one folder per class, optionally under subset folders.

On disk, either with subsets (the 4-class Kaggle brain tumor MRI set)::

    root/
      Training/  glioma/*.jpg  meningioma/*.jpg  pituitary/*.jpg  notumor/*.jpg
      Testing/   glioma/*.jpg  ...

or with class folders directly under the root (yes/no sets)::

    root/
      yes/*.jpg
      no/*.jpg

A folder holding image files directly is a class folder; a folder holding only sub-folders is a
subset. Folder names map to labels through ``label_map`` (case-insensitive, spaces and hyphens
read as underscores); the defaults are in :data:`DEFAULT_LABEL_MAP`. A "no tumor" class implies
an empty tumor mask, so those samples get ``presence=0``, ``label="no_tumor"`` and an all-zero
mask; tumor classes get ``presence=1`` and ``mask=None``; "yes"/"tumor" folders say a tumor is
present but not its type (``label=None``).

Such sets carry no patient ids, so each image is its own patient group (``patient_id`` is the
image's path relative to the root, without suffix: stems alone repeat across class folders in
some releases). Slices of one patient, or duplicated images, may therefore still fall into
different splits; nothing in the data allows to prevent it.

Images are read as 2-D greyscale arrays (see :func:`~mtl.data.adapters.base.read_gray_image`;
16-bit values are kept).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mtl.data.adapters.base import Adapter, DataError, Record, image_files, visible_dirs
from mtl.data.sample import NO_TUMOR, Sample

#: folder name (normalised) -> canonical label; ``None`` means "tumor of unknown type"
DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "notumor": NO_TUMOR,
    "no_tumor": NO_TUMOR,
    "no": NO_TUMOR,
    "normal": NO_TUMOR,
    "healthy": NO_TUMOR,
    "yes": None,
    "tumor": None,
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
}


def normalise_folder_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class ClassFoldersAdapter(Adapter):
    """Images in class folders, optionally under subset folders (e.g. Training/ and Testing/).

    Options:
        subset: a subset folder name ("Training", "Testing", case-insensitive), a list of them,
            or None for every subset found (and for layouts without subsets).
        label_map: folder name -> canonical label, merged over :data:`DEFAULT_LABEL_MAP`; map a
            folder to "no_tumor" for healthy slices and to None for "tumor, type unknown".

    A class folder whose name is not in the label map is a bad item (DataError, or skipped).
    """

    name = "class_folders"
    option_names = frozenset({"subset", "label_map"})
    summary = "Image classification folders (e.g. Training/glioma, Testing/notumor, or yes/ no/)"

    def _label_map(self) -> dict[str, str | None]:
        user = self.options.get("label_map") or {}
        merged = dict(DEFAULT_LABEL_MAP)
        merged.update({normalise_folder_name(k): v for k, v in user.items()})
        return merged

    def _wanted_subsets(self) -> set[str] | None:
        subset = self.options.get("subset")
        if subset is None:
            return None
        names = [subset] if isinstance(subset, str) else list(subset)
        return {name.lower() for name in names}

    def _class_dirs(self) -> list[tuple[str | None, Path]]:
        """(subset name or None, class folder) pairs, following the subset option."""
        found: list[tuple[str | None, Path]] = []
        subsets_seen: list[str] = []
        for child in visible_dirs(self.root):
            if image_files(child):
                found.append((None, child))
                continue
            subsets_seen.append(child.name)
            found.extend((child.name, grandchild) for grandchild in visible_dirs(child))
        wanted = self._wanted_subsets()
        if wanted is None:
            return found
        chosen = [(s, d) for s, d in found if s is not None and s.lower() in wanted]
        if not chosen:
            raise DataError(
                f"{self.root}: subset {self.options.get('subset')!r} not found; "
                f"subsets here: {', '.join(subsets_seen) or 'none'}"
            )
        return chosen

    def _scan(self) -> list[Record]:
        label_map = self._label_map()
        records: list[Record] = []
        for subset, folder in self._class_dirs():
            key = normalise_folder_name(folder.name)
            if key not in label_map:
                self.skip_or_raise(
                    folder,
                    f"class folder {folder.name!r} is not in label_map "
                    f"(known: {', '.join(sorted(label_map))})",
                )
                continue
            records.extend(self._folder_records(subset, folder, label_map[key]))
        return self.drop_duplicate_ids(records)

    def _folder_records(self, subset: str | None, folder: Path, label: str | None) -> list[Record]:
        presence = 0 if label == NO_TUMOR else 1
        records = []
        for path in image_files(folder):
            relative = path.relative_to(self.root).with_suffix("").as_posix()
            records.append(
                Record(
                    case_id=relative,
                    patient_id=relative,
                    presence=presence,
                    label=label,
                    has_mask=presence == 0,
                    source=str(path),
                    extra={"subset": subset, "folder": folder.name},
                )
            )
        return records

    def load(self, record: Record) -> Sample:
        path = Path(record.source)
        image = self.read_image(path)
        mask = np.zeros(image.shape, dtype=np.uint8) if record.presence == 0 else None
        return self.sample(record, image, mask, subset=record.extra.get("subset"),
                           folder=record.extra.get("folder"))
