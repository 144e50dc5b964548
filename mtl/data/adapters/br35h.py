"""Br35H :: Brain Tumor Detection 2020 (Hamada A., Kaggle): tumor presence and tumor outlines.

On disk, ``yes/`` and ``no/`` directly under the root or one folder down (Kaggle variants)::

    root/                      or   root/br35h/
      yes/  y0.jpg ... y499.jpg           yes/ ...
            annotations_via.json          no/  ...
      no/   no0.jpg ...                   pred/   (unlabelled, ignored)

``annotations_via.json`` holds the tumor outlines in VGG Image Annotator JSON: a dict of entries
``{"filename": "y0.jpg", "regions": [{"shape_attributes": {"name": "polygon", "all_points_x":
[...], "all_points_y": [...]}}, ...]}`` in pixel coordinates (VIA 2; VIA 1 gives ``regions`` as a
dict, and a VIA project file wraps the entries in ``_via_img_metadata``; both are accepted).
Every ``*.json`` in ``yes/`` or next to it is read. Polygon, polyline, ellipse, circle and rect
regions are rasterised and unioned into the mask; points may lie up to
:data:`EDGE_TOLERANCE` pixels outside the image (then clipped), further out is an error.

Labels: ``yes/`` images are tumors of unknown type (presence 1, label None) with the outline as
mask; a ``yes/`` image without annotation keeps presence 1 but has mask None (they are listed in
``unannotated``). ``no/`` images are presence 0, label "no_tumor", all-zero mask.

Images are mixed sizes, RGB or grayscale (a few ".jpg" files are really PNGs): they load as 2-D
uint8 grayscale.

Br35H has no patient ids, and most of its images are near-duplicates of others: the same slice
resized, cropped, re-contrasted, sharpened, mirrored or byte-identical, up to some 50 copies of
one slice.
With ``dedup=True`` (the default) such copies share a patient group, found by
:func:`mtl.data.grouping.duplicate_groups` (perceptual hashes checked by thumbnail correlation;
features cached under ``$MTL_CACHE_DIR`` or ``~/.cache/mtl``), so splits keep all copies on one
side: ``patient_id`` is ``dup-<stem of the first copy>`` for a group and the file stem for an
image without copies. ``dedup=False`` makes every image its own group (``patient_id`` = stem),
which lets copies leak across splits.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from skimage import draw

from mtl.data.adapters.base import Adapter, DataError, Record, image_files, visible_dirs
from mtl.data.grouping.near_duplicates import duplicate_groups
from mtl.data.sample import NO_TUMOR, Sample

#: pixels a region may extend beyond the image before it counts as out of bounds
EDGE_TOLERANCE = 2.0

Region = dict[str, Any]  # {"name": "polygon", "x": [...], "y": [...]} or shape parameters


# --- VIA parsing --------------------------------------------------------------------------------


def via_entries(data: Any) -> list[dict[str, Any]]:
    """The per-image entries of a VIA JSON (plain export or project file)."""
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        return []
    return [e for e in data.values() if isinstance(e, dict) and "filename" in e]


def _numbers(attrs: dict[str, Any], *keys: str) -> list[float]:
    values = []
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{attrs.get('name')} region needs a number {key!r}, got {value!r}")
        values.append(float(value))
    return values


def parse_region(attrs: dict[str, Any]) -> Region:
    """One VIA ``shape_attributes`` dict as a checked region; ValueError on a bad shape."""
    name = attrs.get("name")
    if name in ("polygon", "polyline"):
        xs, ys = attrs.get("all_points_x"), attrs.get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise ValueError("polygon needs all_points_x and all_points_y lists of equal length")
        if len(xs) < 3:
            raise ValueError(f"polygon has {len(xs)} points, needs at least 3")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs + ys):
            raise ValueError("polygon points must be numbers")
        return {"name": "polygon", "x": [float(v) for v in xs], "y": [float(v) for v in ys]}
    if name == "ellipse":
        cx, cy, rx, ry = _numbers(attrs, "cx", "cy", "rx", "ry")
        if rx <= 0 or ry <= 0:
            raise ValueError(f"ellipse radii must be positive, got rx={rx:g}, ry={ry:g}")
        theta = float(attrs.get("theta", 0.0) or 0.0)
        return {"name": "ellipse", "cx": cx, "cy": cy, "rx": rx, "ry": ry, "theta": theta}
    if name == "circle":
        cx, cy, r = _numbers(attrs, "cx", "cy", "r")
        if r <= 0:
            raise ValueError(f"circle radius must be positive, got r={r:g}")
        return {"name": "ellipse", "cx": cx, "cy": cy, "rx": r, "ry": r, "theta": 0.0}
    if name == "rect":
        x, y, w, h = _numbers(attrs, "x", "y", "width", "height")
        return {"name": "polygon", "x": [x, x + w, x + w, x], "y": [y, y, y + h, y + h]}
    raise ValueError(f"unsupported region shape {name!r}")


def parse_entry_regions(entry: dict[str, Any]) -> list[Region]:
    """All regions of one VIA entry (``regions`` as a list, VIA 2, or a dict, VIA 1)."""
    regions = entry.get("regions") or []
    if isinstance(regions, dict):
        regions = list(regions.values())
    if not isinstance(regions, list):
        raise ValueError("'regions' must be a list or a dict")
    parsed = []
    for region in regions:
        attrs = region.get("shape_attributes") if isinstance(region, dict) else None
        if not isinstance(attrs, dict):
            raise ValueError("region without shape_attributes")
        parsed.append(parse_region(attrs))
    return parsed


# --- rasterisation ------------------------------------------------------------------------------


def region_extent(region: Region) -> tuple[float, float, float, float]:
    """(x_min, y_min, x_max, y_max) of the points that must lie on the image.

    For ellipses that is the centre: an outline drawn at the image edge may bulge out of it.
    """
    if region["name"] == "polygon":
        return min(region["x"]), min(region["y"]), max(region["x"]), max(region["y"])
    return region["cx"], region["cy"], region["cx"], region["cy"]


def region_inside(
    region: Region, shape: tuple[int, int], tolerance: float = EDGE_TOLERANCE
) -> bool:
    """True when the region's points lie on the (H, W) image, give or take ``tolerance``."""
    height, width = shape
    x0, y0, x1, y1 = region_extent(region)
    inside_x = -tolerance <= x0 and x1 <= width + tolerance
    return inside_x and -tolerance <= y0 and y1 <= height + tolerance


def rasterise(regions: list[Region], shape: tuple[int, int]) -> np.ndarray:
    """Union of the regions as a uint8 {0, 1} mask of ``shape`` (H, W); points are clipped.

    Polygons are filled and their outline drawn too, so thin or tiny outlines still mark pixels.
    A VIA ellipse's ``theta`` turns its x radius from +x towards +y (clockwise on screen).
    """
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    for region in regions:
        if region["name"] == "polygon":
            rows = np.clip(np.asarray(region["y"]), 0, height - 1)
            cols = np.clip(np.asarray(region["x"]), 0, width - 1)
            mask[draw.polygon(rows, cols, shape=shape)] = 1
            mask[draw.polygon_perimeter(np.round(rows), np.round(cols), shape=shape)] = 1
        else:
            rr, cc = draw.ellipse(
                region["cy"],
                region["cx"],
                region["ry"],
                region["rx"],
                shape=shape,
                rotation=-region["theta"],
            )
            mask[rr, cc] = 1
            centre = (int(round(region["cy"])), int(round(region["cx"])))
            if 0 <= centre[0] < height and 0 <= centre[1] < width:
                mask[centre] = 1  # so that a sub-pixel ellipse still marks its pixel
    return mask


# --- the adapter --------------------------------------------------------------------------------


class Br35hAdapter(Adapter):
    """Br35H: ``yes/`` tumor slices with VIA outlines, ``no/`` healthy slices.

    Options:
        dedup: group near-duplicate images into one patient group (default True), see the
            module docstring.
        cache_dir: cache folder for the image features instead of the default.

    After ``records()``, ``unannotated`` lists the yes-images without any outline and
    ``unmatched_annotations`` the annotated file names with no image in ``yes/``. An annotated
    image that is in neither ``yes/`` nor ``no/`` is a missing image: a DataError naming the
    JSON file and the image, or with ``on_error="skip"`` one entry in ``skipped``. With dedup,
    ``duplicate_groups`` maps each group of near-duplicates (two or more images) to its case
    ids, ``duplicate_groups_found`` is their number and ``mixed_label_groups`` lists the groups
    holding both yes/ and no/ images (a label conflict).
    """

    name = "br35h"
    option_names = frozenset({"dedup", "cache_dir"})
    summary = "Br35H 2020: yes/ tumor slices with VIA outlines (type unknown), no/ healthy slices"

    def __init__(self, root: str | Path, *, on_error: str = "raise", **options: Any) -> None:
        super().__init__(root, on_error=on_error, **options)
        self.unannotated: list[str] = []
        self.unmatched_annotations: list[str] = []
        self._annotations: dict[str, list[dict[str, Any]]] = {}
        self.duplicate_groups: dict[str, list[str]] = {}
        self.mixed_label_groups: list[str] = []

    @property
    def duplicate_groups_found(self) -> int:
        """Number of groups of two or more near-duplicate images (0 before ``records()``)."""
        return len(self.duplicate_groups)

    def _base(self) -> Path:
        """The folder holding yes/ and no/: the root or one of its sub-folders."""
        for candidate in [self.root, *visible_dirs(self.root)]:
            if any(d.name.lower() in ("yes", "no") for d in visible_dirs(candidate)):
                return candidate
        raise DataError(f"{self.root}: no yes/ or no/ folder found (also looked one level down)")

    @staticmethod
    def _subfolder(base: Path, name: str) -> Path | None:
        return next((d for d in visible_dirs(base) if d.name.lower() == name), None)

    def _scan(self) -> list[Record]:
        base = self._base()
        yes_dir, no_dir = self._subfolder(base, "yes"), self._subfolder(base, "no")
        records: list[Record] = []
        if yes_dir is not None:
            records.extend(self._scan_yes(base, yes_dir))
        no_images = image_files(no_dir) if no_dir is not None else []
        records.extend(self._plain_record(path, "no") for path in no_images)
        if yes_dir is not None:
            self._check_annotated_images(yes_dir, {p.name for p in no_images})
        records = self.drop_duplicate_ids(records)
        if self.options.get("dedup", True):
            records = self._group_duplicates(records)
        return records

    def _group_duplicates(self, records: list[Record]) -> list[Record]:
        """Give near-duplicate images one patient group and note what was found."""
        groups = duplicate_groups([r.source for r in records], cache=self.options.get("cache_dir"))
        members: dict[str, list[Record]] = {}
        for record, group in zip(records, groups):
            members.setdefault(group, []).append(record)
        self.duplicate_groups = {
            g: [r.case_id for r in rs] for g, rs in members.items() if len(rs) > 1
        }
        self.mixed_label_groups = sorted(
            g for g, rs in members.items() if len({r.presence for r in rs}) > 1
        )
        return [dataclasses.replace(r, patient_id=g) for r, g in zip(records, groups)]

    def _read_annotations(self, base: Path, yes_dir: Path) -> dict[str, list[dict[str, Any]]]:
        """VIA entries by image file name, from every JSON in yes/ and next to it."""
        by_name: dict[str, list[dict[str, Any]]] = {}
        for path in sorted({*yes_dir.glob("*.json"), *base.glob("*.json")}):
            try:
                entries = via_entries(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                self.skip_or_raise(path, f"cannot read VIA annotations ({err})")
                continue
            if not entries:
                self.skip_or_raise(path, "JSON file holds no VIA image entries")
                continue
            for entry in entries:
                name = Path(str(entry["filename"])).name
                by_name.setdefault(name, []).append({**entry, "_json": str(path)})
        return by_name

    def _check_annotated_images(self, yes_dir: Path, no_names: set[str]) -> None:
        """An annotation naming an image that is in neither yes/ nor no/: DataError naming the
        JSON file and the image, or (``on_error="skip"``) one skip per missing image."""
        missing = [name for name in self.unmatched_annotations if name not in no_names]
        for name in missing:
            files = sorted({e["_json"] for e in self._annotations.get(name, [])})
            self.skip_or_raise(
                yes_dir / name,
                f"missing image: {' and '.join(files)} annotate{'s' if len(files) == 1 else ''} "
                "it, but it is not in yes/ or no/ (restore it or remove its VIA entry)")

    def _scan_yes(self, base: Path, yes_dir: Path) -> list[Record]:
        annotations = self._read_annotations(base, yes_dir)
        self._annotations = annotations
        images = image_files(yes_dir)
        self.unmatched_annotations = sorted(annotations.keys() - {p.name for p in images})
        self.unannotated = []
        records = []
        for path in images:
            regions = self._regions_of(path, annotations.get(path.name, []))
            if regions is None:
                continue
            if not regions:
                self.unannotated.append(path.name)
                records.append(self._plain_record(path, "yes"))
                continue
            records.append(self._plain_record(path, "yes", regions=regions))
        return records

    def _regions_of(self, path: Path, entries: list[dict[str, Any]]) -> list[Region] | None:
        """All regions of an image's VIA entries; None (after skip_or_raise) on a bad one."""
        regions: list[Region] = []
        for entry in entries:
            try:
                regions.extend(parse_entry_regions(entry))
            except ValueError as err:
                self.skip_or_raise(path, f"bad VIA region in {entry['_json']}: {err}")
                return None
        return regions

    def _plain_record(self, path: Path, folder: str, regions: list[Region] | None = None) -> Record:
        tumor = folder == "yes"
        extra: dict[str, Any] = {"folder": folder}
        if regions:
            extra["regions"] = regions
        return Record(
            case_id=f"{folder}/{path.stem}",
            patient_id=path.stem,
            presence=1 if tumor else 0,
            label=None if tumor else NO_TUMOR,
            has_mask=bool(regions) or not tumor,
            source=str(path),
            extra=extra,
        )

    def _mask(self, record: Record, shape: tuple[int, int]) -> np.ndarray | None:
        if record.presence == 0:
            return np.zeros(shape, dtype=np.uint8)
        regions: list[Region] | None = record.extra.get("regions")
        if not regions:
            return None
        for region in regions:
            if not region_inside(region, shape):
                x0, y0, x1, y1 = region_extent(region)
                self.load_failure(
                    record.source,
                    f"{region['name']} region spans x {x0:g}..{x1:g}, y {y0:g}..{y1:g}, "
                    f"outside the {shape[1]}x{shape[0]} image",
                )
        mask = rasterise(regions, shape)
        if not mask.any():
            self.load_failure(record.source, "annotation rasterises to an empty mask")
        return mask

    def load(self, record: Record) -> Sample:
        image = self.read_image(Path(record.source))
        mask = self._mask(record, image.shape[:2])
        return self.sample(record, image, mask, folder=record.extra.get("folder"))
