"""Uploaded bytes -> a server-owned input file for :func:`mtl.infer.readers.load_case`.

The type of an upload is decided by its *content* (magic bytes), never by the name the client
sent; that name is only ever shown back as text. Accepted:

========== ====================================================== ==================
type       recognised by                                          read as
========== ====================================================== ==================
png        ``89 50 4E 47 0D 0A 1A 0A``                            image
jpeg       ``FF D8 FF``                                           image
tiff       ``II*\\0`` / ``MM\\0*`` (BigTIFF ``II+\\0`` / ``MM\\0+``) image
nifti      ``sizeof_hdr`` = 348 (either byte order), magic ``n+1`` volume
nifti-gz   gzip magic ``1F 8B``, then the NIfTI test on the decompressed header  volume
dicom      ``DICM`` at byte 128 (DICOM Part 10 file)              one-file series
nrrd       ``NRRD000`` magic line (a ``.nrrd`` holding its data)  volume
========== ====================================================== ==================

Before anything is decoded, the size the content *declares* is checked against the limits
(image width x height from the header, NIfTI dimensions, DICOM rows x columns x frames), and
gzip is decompressed in bounded steps that stop as soon as the output passes what the NIfTI
header announced (or an absolute cap): a small file that unpacks into gigabytes is refused
without ever being unpacked. Deflate-compressed DICOM (whose whole data set would be inflated
on reading) is refused. A gzip- or bzip2-encoded NRRD is unpacked the same bounded way (its
header's sizes and type announce the bytes) and stored raw; a NRRD header that points to a
separate data file (``data file:``, as a ``.nhdr`` does) is refused, so an upload never makes the
server read another file.

The checked content is written under a folder the server made, with a name the server chose
(``upload.png``, ``upload.nii``, ...), and handed to the readers as an
:class:`~mtl.infer.readers.InputItem`.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.infer.readers import InputItem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER = 348
NIFTI1_MAGIC = b"n+1\x00"
NIFTI1_PAIR_MAGIC = b"ni1\x00"
DICOM_MAGIC_OFFSET = 128
NRRD_MAGIC = b"NRRD000"
#: DICOM transfer syntax whose whole data set is deflate-compressed
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
#: bytes a NIfTI file may hold beyond what its header announces
NIFTI_SLACK = 1 << 20

ACCEPTED = ("PNG", "JPEG", "TIFF", "NIfTI-1 (.nii, .nii.gz)", "NRRD (.nrrd)", "DICOM")
#: detected type -> (reader kind, server-chosen file name)
FILE_NAMES = {
    "png": ("image", "upload.png"),
    "jpeg": ("image", "upload.jpg"),
    "tiff": ("image", "upload.tif"),
    "nifti": ("nifti", "upload.nii"),
    "nifti-gz": ("nifti", "upload.nii"),  # stored decompressed
    "dicom": ("dicom", "upload.dcm"),
    "nrrd": ("nrrd", "upload.nrrd"),  # compressed data stored raw
}


class UploadRejected(Exception):
    """An upload refused before reading: ``status`` is the HTTP status (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """``max_bytes``: upload size; ``max_pixels``: pixels of an image or voxels of a volume;
    ``max_decompressed_bytes``: absolute cap on what a gzip upload may unpack to."""

    max_bytes: int = 64 << 20
    max_pixels: int = 50_000_000
    max_decompressed_bytes: int = 1 << 30


def unsupported() -> UploadRejected:
    return UploadRejected(415, "unsupported file type: accepted are " + ", ".join(ACCEPTED)
                          + " (recognised by their content, not by the file name)")


def _nifti1_endian(head: bytes) -> str | None:
    """"<" or ">" if ``head`` starts a single-file NIfTI-1 header, else None."""
    if len(head) < NIFTI1_HEADER:
        return None
    for endian in "<>":
        if struct.unpack(endian + "i", head[:4])[0] == NIFTI1_HEADER:
            return endian if head[344:348] == NIFTI1_MAGIC else None
    return None


def detect(data: bytes) -> str:
    """The type of an upload from its first bytes (see the module table); raises 400/415."""
    if not data:
        raise UploadRejected(400, "the file is empty")
    # DICOM Part 10 first: its free 128-byte preamble may itself start with TIFF (or other) magic
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    if data.startswith(GZIP_MAGIC):
        return "nifti-gz"  # confirmed (or refused) while decompressing
    if data.startswith(NRRD_MAGIC):
        return "nrrd"
    if _nifti1_endian(data[:NIFTI1_HEADER]):
        return "nifti"
    if len(data) >= NIFTI1_HEADER and data[344:348] == NIFTI1_PAIR_MAGIC:
        raise UploadRejected(415, "a NIfTI header of a .hdr/.img pair: upload one .nii or "
                                  ".nii.gz file that holds header and data")
    raise unsupported()


def nifti_declared(head: bytes, limits: Limits) -> int | None:
    """Bytes a NIfTI-1 file with this header holds (None if the header's dimensions are broken:
    the reader then reports them); raises 413 when the volume has too many voxels."""
    endian = _nifti1_endian(head)
    if endian is None:
        raise UploadRejected(415, "not a NIfTI-1 file (no n+1 header)")
    dims = struct.unpack(endian + "8h", head[40:56])
    bitpix = struct.unpack(endian + "h", head[72:74])[0]
    vox_offset = struct.unpack(endian + "f", head[108:112])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d <= 0 for d in dims[1 : ndim + 1]) or bitpix <= 0:
        return None
    voxels = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=object))
    if voxels > limits.max_pixels:
        shape = "x".join(str(d) for d in dims[1 : ndim + 1])
        raise UploadRejected(413, f"the NIfTI volume is too large: {shape} = {voxels:,} voxels "
                                  f"(limit {limits.max_pixels:,})")
    offset = int(vox_offset) if np.isfinite(vox_offset) and vox_offset >= 352 else 352
    return offset + voxels * ((bitpix + 7) // 8)


def gunzip_nifti(data: bytes, dest: Path, limits: Limits) -> None:
    """Decompress a gzip upload into ``dest`` in bounded steps; it must be a NIfTI-1 file and
    may unpack to no more than its header announces (plus a little) nor the absolute cap."""
    chunk = 1 << 20
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz, dest.open("wb") as out:
            head = gz.read(NIFTI1_HEADER)
            if _nifti1_endian(head) is None:
                raise UploadRejected(415, "a gzip file that does not hold a NIfTI-1 volume; "
                                          + unsupported().message)
            declared = nifti_declared(head, limits)
            cap = limits.max_decompressed_bytes
            if declared is not None:
                cap = min(cap, declared + NIFTI_SLACK)
            out.write(head)
            total = len(head)
            while True:
                block = gz.read(chunk)
                if not block:
                    break
                total += len(block)
                if total > cap:
                    raise UploadRejected(413, "the gzip file unpacks to more than "
                                              f"{cap:,} bytes, more than its NIfTI header "
                                              "announces or the server accepts")
                out.write(block)
    except UploadRejected:
        raise
    except EOFError:
        raise UploadRejected(400, "the gzip data is truncated (incomplete upload?)") from None
    except (OSError, zlib.error) as exc:
        raise UploadRejected(400, f"the gzip data is corrupt ({exc})") from None


def check_image_size(path: Path, kind: str, limits: Limits) -> None:
    """Width x height from the image header (nothing decoded); 413 above ``max_pixels``."""
    from PIL import Image

    shape: tuple[int, ...] | None = None
    try:
        with Image.open(path) as img:  # lazy: reads the header only
            shape = (int(img.size[1]), int(img.size[0]))
    except Image.DecompressionBombError as exc:  # PIL's own, far higher limit
        raise UploadRejected(413, f"the image is too large ({exc})") from None
    except Exception:  # noqa: BLE001 - the reader reports unreadable images
        if kind == "tiff":
            try:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    shape = tuple(int(s) for s in tif.pages.first.shape)
            except Exception:  # noqa: BLE001
                shape = None
    if shape is None:
        return
    pixels = int(np.prod(shape, dtype=object))  # channels count too where PIL cannot tell
    if pixels > limits.max_pixels:
        size = "x".join(str(s) for s in shape)
        raise UploadRejected(413, f"the image is too large: {size} = {pixels:,} pixels "
                                  f"(limit {limits.max_pixels:,})")


def check_dicom(path: Path, limits: Limits) -> None:
    """Refuse deflated data sets and pixel data above the limit (file meta and header only)."""
    import pydicom
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception as exc:  # noqa: BLE001
        raise UploadRejected(400, f"cannot read the DICOM file meta information ({exc})") from None
    if str(getattr(meta, "TransferSyntaxUID", "")) == DEFLATED_TRANSFER_SYNTAX:
        raise UploadRejected(415, "deflate-compressed DICOM data sets are not accepted; "
                                  "send the file uncompressed")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise UploadRejected(400, f"cannot read the DICOM header ({exc})") from None
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    pixels = rows * cols * frames * samples
    if pixels > limits.max_pixels:
        raise UploadRejected(413, f"the DICOM image is too large: {frames} frame(s) of "
                                  f"{rows}x{cols} (limit {limits.max_pixels:,} pixels)")


def stage_nrrd(data: bytes, dest: Path, limits: Limits) -> None:
    """Check a NRRD upload's header (attached data only, size within the limits) and write it to
    ``dest``; gzip/bzip2 data is unpacked in bounded steps and stored raw."""
    import nrrd

    stream = io.BytesIO(data)
    try:
        header = nrrd.read_header(stream)
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, ...
        raise UploadRejected(400, f"cannot read the NRRD header ({' '.join(str(exc).split())})"
                             ) from None
    offset = stream.tell()
    if header.get("data file", header.get("datafile")) is not None:
        raise UploadRejected(415, "a NRRD header that refers to a separate data file (.nhdr): "
                                  "upload one .nrrd file that holds header and data")
    try:
        sizes = [int(v) for v in header["sizes"]]
    except Exception:  # noqa: BLE001 - missing or broken field
        raise UploadRejected(400, "broken NRRD header: no valid 'sizes' field") from None
    voxels = int(np.prod(sizes, dtype=object)) if sizes else 0
    if voxels > limits.max_pixels:
        raise UploadRejected(413, f"the NRRD volume is too large: {'x'.join(map(str, sizes))} "
                                  f"= {voxels:,} voxels (limit {limits.max_pixels:,})")
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in ("gzip", "gz", "bzip2", "bz2"):
        dest.write_bytes(data)  # raw or text: no bigger than the upload
        return
    if int(header.get("line skip", header.get("lineskip", 0)) or 0):
        raise UploadRejected(415, "a compressed NRRD with 'line skip' is not accepted")
    skip = max(int(header.get("byte skip", header.get("byteskip", 0)) or 0), 0)
    # 8 bytes: the widest NRRD scalar type (the reader then checks the exact size)
    cap = min(limits.max_decompressed_bytes, skip + voxels * 8 + NIFTI_SLACK)
    head = re.sub(rb"(?mi)^encoding:[ \t]*\S+[ \t]*(?=\r?$)", b"encoding: raw", data[:offset],
                  count=1)
    total = 0
    try:
        with dest.open("wb") as out:
            out.write(head)
            for block in _unpack(encoding, data[offset:]):
                total += len(block)
                if total > cap:
                    raise UploadRejected(413, f"the NRRD data unpacks to more than {cap:,} "
                                              "bytes, more than its header announces or the "
                                              "server accepts")
                out.write(block)
    except UploadRejected:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise UploadRejected(400, f"the NRRD's compressed data is corrupt ({exc})") from None


def _unpack(encoding: str, payload: bytes, chunk: int = 1 << 20):
    """Decompressed blocks of at most ``chunk`` bytes; 400 if the data ends before its end."""
    import bz2

    if encoding in ("gzip", "gz"):
        gz = zlib.decompressobj(zlib.MAX_WBITS | 16)
        pending = payload
        while not gz.eof:
            block = gz.decompress(pending, chunk)
            pending = gz.unconsumed_tail
            if block:
                yield block
            elif not pending:
                break
        complete = gz.eof
    else:
        bz = bz2.BZ2Decompressor()
        block = bz.decompress(payload, chunk)
        while True:
            if block:
                yield block
            if bz.eof or bz.needs_input:
                break
            block = bz.decompress(b"", chunk)
        complete = bz.eof
    if not complete:
        raise UploadRejected(400, "the NRRD's compressed data is truncated (incomplete upload?)")


def stage_upload(data: bytes, folder: Path, name: str, limits: Limits) -> tuple[InputItem, str]:
    """Check ``data`` and write it into ``folder`` (the server's) under a name the server
    chooses; returns the reader's input item (named ``name``) and the detected type."""
    if len(data) > limits.max_bytes:
        raise UploadRejected(413, f"the file is larger than the {limits.max_bytes:,}-byte limit")
    detected = detect(data)
    kind, file_name = FILE_NAMES[detected]
    path = folder / file_name
    if detected == "nifti-gz":
        gunzip_nifti(data, path, limits)
    elif detected == "nrrd":
        stage_nrrd(data, path, limits)
    else:
        if detected == "nifti":
            declared = nifti_declared(data[:NIFTI1_HEADER], limits)
            if declared is not None and len(data) > declared + NIFTI_SLACK:
                raise UploadRejected(400, f"the NIfTI file holds {len(data):,} bytes, more "
                                          f"than the {declared:,} its header announces")
        path.write_bytes(data)
        if kind == "image":
            check_image_size(path, detected, limits)
        elif kind == "dicom":
            check_dicom(path, limits)
    return InputItem(name, kind, path, (path,)), detected


__all__ = ["ACCEPTED", "Limits", "UploadRejected", "detect", "gunzip_nifti", "nifti_declared",
           "stage_nrrd", "stage_upload"]
