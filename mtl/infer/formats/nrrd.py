"""NRRD volumes: ``.nrrd`` (or a ``.nhdr`` header with its detached data file, 3D Slicer's
format) in, the mask out as a uint8 label NRRD, read and written with pynrrd.

The input's ``space``, ``space directions`` and ``space origin`` give the geometry; it is sliced
and turned upright exactly as NIfTI volumes are. The mask keeps the input's geometry fields
(``space``, ``space directions``, ``space origin``, ``kinds``, ...) and sizes, gzip-encoded. A
volume of another format with a known affine gets a NRRD mask in LPS, as Slicer writes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from mtl.data.imageio import describe_error
from mtl.infer.axes import axis_from_option, cut_slices
from mtl.infer.case import Case, InputError, InputItem, check_pixels
from mtl.infer.formats.base import LabelVolumeFormat

NRRD_SUFFIXES = frozenset({".nrrd", ".nhdr"})

#: NRRD ``space`` -> signs that turn its coordinates into RAS+ (None: not anatomical)
_NRRD_SPACE_TO_RAS: dict[str, tuple[float, float, float] | None] = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
    "scanner-xyz": None, "3d-right-handed": None, "3d-left-handed": None,
}
#: NRRD ``space units`` -> millimetres
_NRRD_UNIT_TO_MM = {"mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "cm": 10.0, "m": 1000.0,
                    "um": 0.001, "micron": 0.001, "microns": 0.001, "": 1.0}
#: header fields of a NRRD that describe where its voxels are (copied to the mask)
NRRD_GEOMETRY_FIELDS = ("space", "space dimension", "space directions", "space origin",
                        "space units", "kinds", "spacings", "thicknesses", "axis mins",
                        "axis maxs", "centers", "centerings", "measurement frame")


def _nrrd_space(header: dict[str, Any]) -> tuple[str | None, tuple[float, ...] | None]:
    space = str(header.get("space", "") or "").strip().lower()
    time = space.endswith("-time") or space in ("rast", "last", "lpst")
    base = space[:-5] if space.endswith("-time") else (space[:3] if time else space)
    return (space or None), _NRRD_SPACE_TO_RAS.get(base)


def load_nrrd_case(item: InputItem, axis: int | str = "axial") -> Case:
    """A NRRD volume (``.nrrd``, or ``.nhdr`` + data file) -> slices along ``axis``, as NIfTI.

    Native order is the file's axis order (fastest axis first, as pynrrd's Fortran order and
    nibabel's NIfTI order); ``affine`` maps it to RAS+ mm from ``space directions`` and
    ``space origin``. Non-spatial axes of size 1 (``kinds: list``, a "none" direction) are
    dropped; the mask is written with the same geometry fields (:data:`NRRD_GEOMETRY_FIELDS`).
    """
    import nrrd

    path = item.paths[0]
    try:
        opened = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open NRRD ({exc.strerror or describe_error(exc)})") \
            from exc
    with opened as fh:
        try:
            header = nrrd.read_header(fh)
        except StopIteration as exc:  # no line at all
            raise InputError(f"{path}: cannot read NRRD header (the file is empty)") from exc
        except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, ...
            raise InputError(f"{path}: cannot read NRRD header ({describe_error(exc)})") from exc
        try:
            data = nrrd.read_data(header, fh, str(path), index_order="F")
        except FileNotFoundError as exc:  # a .nhdr whose data file is missing
            raise InputError(f"{path}: cannot read NRRD data: {exc.strerror or 'no such file'}: "
                             f"{exc.filename}") from exc
        except nrrd.NRRDError as exc:
            problem = "the file may be truncated" if str(exc).startswith("Size of the data") \
                else "broken NRRD header"
            raise InputError(f"{path}: cannot read NRRD data, {problem} "
                             f"({describe_error(exc)})") from exc
        except Exception as exc:  # noqa: BLE001 - ValueError, zlib.error, EOFError...
            raise InputError(f"{path}: cannot read NRRD data, the file may be truncated or "
                             f"corrupt ({describe_error(exc)})") from exc
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: NRRD pixel type {data.dtype} is not supported (grey only)")
    warnings: list[str] = []
    space, signs = _nrrd_space(header)
    ndim = data.ndim
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64)
        if directions.ndim != 2 or directions.shape[0] != ndim:
            raise InputError(f"{path}: broken NRRD header: 'space directions' has "
                             f"{directions.shape[0] if directions.ndim else 0} entries for "
                             f"{ndim} axes")
        spatial = [i for i in range(ndim) if np.all(np.isfinite(directions[i]))]
    else:
        kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * ndim)]
        spatial = [i for i in range(ndim) if kinds[i] in ("domain", "space", "???", "none")]
    other = [i for i in range(ndim) if i not in spatial]
    if any(data.shape[i] != 1 for i in other) or not 2 <= len(spatial) <= 3:
        raise InputError(f"{path}: NRRD of sizes {list(data.shape)} with {len(spatial)} spatial "
                         "axes is not a grey 2-D or 3-D volume (vector, colour and time data "
                         "are not supported)")
    if other:
        warnings.append(f"NRRD axes {other} (size 1, not spatial) dropped")
        data = data.reshape([data.shape[i] for i in spatial])
    shape = tuple(int(s) for s in data.shape)
    if min(shape) <= 0:
        raise InputError(f"{path}: broken NRRD header: sizes {list(shape)} must be positive")
    check_pixels(path, data, "volume")
    # geometry: index (spatial axes) -> space coordinates, then -> RAS+ mm
    linear = np.eye(3)
    origin = np.zeros(3)
    orientation_known = False
    if directions is not None:
        dirs = directions[spatial][:, :3]
        if dirs.shape[1] < 3:  # a 2-D space: embed in 3-D
            dirs = np.pad(dirs, ((0, 0), (0, 3 - dirs.shape[1])))
        linear[:, : len(spatial)] = dirs.T
        raw_origin = header.get("space origin")
        if raw_origin is not None:
            raw_origin = np.asarray(raw_origin, dtype=np.float64)[:3]
            if not np.all(np.isfinite(raw_origin)):
                raise InputError(f"{path}: broken NRRD header: 'space origin' "
                                 f"{raw_origin.tolist()} is not finite")
            origin[: len(raw_origin)] = raw_origin
        orientation_known = signs is not None
        units = [str(u).strip().lower() for u in header.get("space units", []) or []]
        scales = [_NRRD_UNIT_TO_MM.get(u) for u in units]
        if any(s is None for s in scales):
            warnings.append(f"NRRD space units {units} not understood: millimetres assumed")
        elif scales and len(set(scales)) == 1:
            linear *= scales[0]
            origin *= scales[0]
    else:
        spacings = header.get("spacings")
        if spacings is not None:
            values = np.asarray(spacings, dtype=np.float64)[spatial]
            linear[np.arange(len(spatial)), np.arange(len(spatial))] = np.where(
                np.isfinite(values) & (values > 0), values, 1.0)
    if len(spatial) == 2:  # one slice: the third column is the unit normal
        normal = np.cross(linear[:, 0], linear[:, 1])
        norm = float(np.linalg.norm(normal))
        linear[:, 2] = normal / norm if norm > 0 else (0.0, 0.0, 1.0)
    if not np.all(np.isfinite(linear)) or abs(np.linalg.det(linear)) < 1e-12:
        raise InputError(f"{path}: broken NRRD header: 'space directions' "
                         f"{np.round(directions, 4).tolist() if directions is not None else None}"
                         " are not independent vectors")
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    if orientation_known:
        affine = np.diag([*signs, 1.0]) @ affine
    else:
        warnings.append(f"NRRD space {space or '(none)'} is not an anatomical one (RAS, LAS, LPS): "
                        "hemisphere not reported"
                        + ("" if axis in (0, 1, 2) else "; sliced along array axis 2"))
    volume = data if data.ndim == 3 else data[..., None]
    try:
        slice_axis = 2 if data.ndim == 2 else axis_from_option(
            axis, affine if orientation_known else None)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    spacing, slices = cut_slices(path, volume, affine, slice_axis)
    geometry = {k: header[k] for k in NRRD_GEOMETRY_FIELDS if k in header}
    for key in ("space directions", "kinds", "spacings", "thicknesses", "axis mins",
                "axis maxs", "centers", "centerings"):
        if key in geometry and other:  # keep the entries of the spatial axes only
            value = geometry[key]
            geometry[key] = (np.asarray(value)[spatial] if isinstance(value, np.ndarray)
                             else [value[i] for i in spatial])
    return Case(item.name, "nrrd", item.source, np.ascontiguousarray(slices), shape,
                slice_axis=slice_axis, affine=affine, orientation_known=orientation_known,
                spacing=spacing, nrrd=geometry, warnings=warnings)


def nrrd_label_header(mask: np.ndarray, geometry: dict[str, Any]) -> dict[str, Any]:
    """The header of a uint8 label NRRD in ``geometry`` (a NRRD's geometry fields)."""
    header = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in geometry.items()}
    directions = header.get("space directions")
    if directions is not None and len(directions) != np.ndim(mask):
        raise ValueError(f"mask of {np.ndim(mask)} axes for {len(directions)} space directions")
    header["type"] = "uint8"
    header["encoding"] = "gzip"
    header["content"] = "mtl tumor mask (1 = tumor)"
    return header


def nrrd_mask_bytes(mask: np.ndarray, geometry: dict[str, Any]) -> bytes:
    """Label volume (0/1 uint8) as the bytes of an attached ``.nrrd`` in ``geometry``; ``mask``
    is in the input's axis order (fastest axis first)."""
    import nrrd

    data = (np.asarray(mask) > 0).astype(np.uint8)
    buffer = io.BytesIO()
    nrrd.write(buffer, data, nrrd_label_header(data, geometry), index_order="F")
    return buffer.getvalue()


def affine_geometry(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(mask, NRRD geometry fields) of a label volume with a given RAS+ affine (a NIfTI or
    DICOM input), in LPS as Slicer writes; trailing singleton axes of a NIfTI are dropped."""
    mask = np.asarray(mask)
    if mask.ndim > 3:
        mask = mask.reshape(mask.shape[:3])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    geometry = {"space": "left-posterior-superior",
                "space directions": lps[:3, : mask.ndim].T.copy(),
                "space origin": lps[:3, 3].copy(), "kinds": ["domain"] * mask.ndim}
    return mask, geometry


class NrrdFormat(LabelVolumeFormat):
    kind, mask_format, what = "nrrd", "nrrd", "a NRRD volume"
    suffixes, aliases = tuple(sorted(NRRD_SUFFIXES)), ("nhdr",)
    index_order = "i, j, k (file axis order, fastest first)"
    mask_name, mask_label = "mask.nrrd", "nrrd mask"
    downloads, download_title = ("nrrd",), "NRRD"
    file_types = "NRRD .nrrd/.nhdr"
    load = staticmethod(load_nrrd_case)

    def write_bytes(self, case: Case, stack: np.ndarray, native: np.ndarray,
                    notes: list[str]) -> bytes:
        """With the input NRRD's geometry fields, else in the case's affine (LPS)."""
        if case.nrrd is not None:
            return nrrd_mask_bytes(native, case.nrrd)
        return nrrd_mask_bytes(*affine_geometry(native, case.affine))


__all__ = ["NRRD_GEOMETRY_FIELDS", "NRRD_SUFFIXES", "NrrdFormat", "affine_geometry",
           "load_nrrd_case", "nrrd_label_header", "nrrd_mask_bytes"]
