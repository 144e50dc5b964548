"""``mtl serve`` JSON API through the framework's test client: good and bad uploads, limits,
results in memory, concurrency. The network is the fake perfect segmenter (exact numbers)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mtl.serve.app import LOOPBACK_HOSTS
from mtl.serve.results import ResultStore, StoredResult
from mtl.serve.uploads import Limits
from test_infer_support import make_dicom_series, save_nifti, tumor_image
from test_infer_support import nifti_header as _nifti_header
from test_serve_support import (
    box_area,
    image_bytes,
    png_array,
    slow_forward,
    fake_predictor,
    tumor_nifti,
    tumor_png,
)

BOX = (10, 20, 30, 45)  # 150 px


@pytest.fixture
def client(serve_app):  # serve_app: tests/conftest.py
    return serve_app()[0]


def _post(client, content: bytes, filename: str = "scan.png", **form):
    return client.post("/predict", files={"file": (filename, content, "application/octet-stream")},
                       data=form)


# --------------------------------------------------------------------------- page and schema


def test_page_info_and_openapi_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "not a diagnosis" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    info = client.get("/api/info").json()
    assert info["classes"] == ["no_tumor", "glioma", "meningioma", "pituitary"]
    assert info["image_size"] == 64 and info["max_upload_bytes"] == 64 << 20

    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/predict"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[-1]
    props = schema["components"]["schemas"][ref]["properties"]
    assert props["file"].get("format") == "binary" or props["file"].get("contentMediaType")
    assert {"axis", "pixel_spacing"} <= set(props)
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])
    result = schema["components"]["schemas"]["PredictResult"]["properties"]
    assert {"id", "findings", "links", "slices", "n_slices"} <= set(result)
    assert "/results/{result_id}/{file_name}" in schema["paths"]
    assert "/results/{result_id}/slices/{index}/overlay.png" in schema["paths"]


# --------------------------------------------------------------------------- good uploads


def test_image_type_is_taken_from_content_and_numbers_masks_overlay_match(client):
    # a PNG sent under a NIfTI name with a path in it: read as a PNG, name only shown back
    res = _post(client, tumor_png(BOX), "../../some dir/scan.nii.gz", pixel_spacing="0.5,0.4")
    assert res.status_code == 200, res.text
    r = res.json()
    assert (r["kind"], r["detected_type"], r["source"], r["case"]) == ("image", "png",
                                                                      "scan.nii.gz", "scan")
    f = r["findings"]
    assert f["presence"]["decision"] is True and f["presence"]["probability"] == pytest.approx(0.9)
    assert f["type"]["label"] == "glioma"
    assert f["tumor"]["area_px"] == 150 and f["tumor"]["area_mm2"] == pytest.approx(150 * 0.2)
    assert r["slices"] == [{"index": 0, "evaluated": True, "presence": pytest.approx(0.9),
                            "area_px": 150, "area_mm2": pytest.approx(30.0)}]
    assert r["settings"]["threshold"] == 0.5 and r["expires_in_seconds"] > 3000

    mask = client.get(r["links"]["mask"])
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    assert mask.headers["content-disposition"] == 'attachment; filename="scan_mask.png"'
    assert mask.headers["cache-control"] == "no-store"
    m = png_array(mask.content)
    assert m.shape == (64, 64) and (m > 0).sum() == 150 and (m[10:20, 30:45] == 255).all()

    findings = client.get(r["links"]["findings"])
    record = json.loads(findings.content)
    assert record["findings"] == f and record["source"] == "scan.nii.gz"
    assert "not a diagnosis" in record["disclaimer"]
    assert client.get(r["links"]["self"]).json()["findings"] == f

    overlay = client.get(r["links"]["overlay"])
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    assert png_array(overlay.content).shape[0] > 64
    assert r["links"]["masks"]["nifti"] is None
    assert client.get(f"/results/{r['id']}/mask.nii.gz").status_code == 404


def test_jpeg_and_16_bit_tiff_are_accepted(client, tmp_path):
    import tifffile

    res = _post(client, image_bytes(tumor_image(64, 64, BOX), "JPEG"), "a.bin")
    assert res.status_code == 200, res.text
    assert res.json()["detected_type"] == "jpeg"
    assert abs(res.json()["findings"]["tumor"]["area_px"] - 150) < 30  # lossy
    image = tumor_image(64, 64, BOX).astype(np.uint16) * 200
    tifffile.imwrite(tmp_path / "a.tif", image)
    res = _post(client, (tmp_path / "a.tif").read_bytes(), "a.png")
    assert res.status_code == 200, res.text
    assert res.json()["detected_type"] == "tiff" and res.json()["findings"]["tumor"]["area_px"] == 150


def test_nifti_volumes_plain_and_gzip_give_mask_volume_and_slice_overlays(client, tmp_path):
    import nibabel as nib

    data, truth = tumor_nifti(tmp_path)
    res = _post(client, data, "brain.png")  # gzip NIfTI under an image name
    assert res.status_code == 200, res.text
    r = res.json()
    assert (r["kind"], r["detected_type"], r["n_slices"]) == ("nifti", "nifti-gz", 8)
    t = r["findings"]["tumor"]
    assert t["pixels"] == 240 and t["slices"] == [2, 3, 4] and t["hemisphere"]["side"] == "left"
    assert t["volume_ml"] == pytest.approx(240 * 0.9 * 1.1 * 2.5 / 1000)
    assert r["default_slice"] == 2
    assert [s["area_px"] for s in r["slices"]] == [0, 0, 80, 80, 80, 0, 0, 0]
    assert r["links"]["mask"].endswith("/mask.nii.gz") and r["links"]["masks"]["png"] is None

    mask = client.get(r["links"]["mask"])
    assert mask.headers["content-disposition"] == 'attachment; filename="brain_mask.nii.gz"'
    img = nib.Nifti1Image.from_bytes(gzip.decompress(mask.content))
    source = nib.load(tmp_path / "brain.nii.gz")
    assert np.array_equal(np.asarray(img.dataobj), truth) and np.allclose(img.affine, source.affine)

    for index in (3, 6):
        overlay = client.get(r["links"]["slice_overlay"].format(index=index))
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    slice_mask = png_array(client.get(r["links"]["slice_mask"].format(index=3)).content)
    assert np.array_equal(slice_mask > 0, truth[:, :, 3] > 0)
    assert client.get(r["links"]["slice_overlay"].format(index=8)).status_code == 404
    assert client.get(r["links"]["slice_mask"].format(index=-1)).status_code == 404

    # the same volume uncompressed, sliced along another axis
    plain = tmp_path / "brain.nii"
    save_nifti(plain, np.asarray(source.dataobj), source.affine)
    res = _post(client, plain.read_bytes(), "x", axis="0")
    assert res.status_code == 200, res.text
    r = res.json()
    assert (r["detected_type"], r["n_slices"], r["findings"]["tumor"]["pixels"]) == ("nifti", 48, 240)


def test_a_dicom_file_gives_png_and_nifti_masks(client, tmp_path):
    paths = make_dicom_series(tmp_path / "s", n=2, tumor_slices=(1,), tumor_box=(10, 20, 40, 52))
    res = _post(client, paths[1].read_bytes(), "IM0001")
    assert res.status_code == 200, res.text
    r = res.json()
    assert (r["kind"], r["detected_type"]) == ("dicom", "dicom")
    assert r["findings"]["tumor"]["pixels"] == 120
    assert r["findings"]["tumor"]["volume_ml"] == pytest.approx(120 * 0.9 * 0.8 * 3.0 / 1000)
    assert (png_array(client.get(r["links"]["masks"]["png"]).content) > 0).sum() == 120
    assert client.get(r["links"]["masks"]["nifti"]).status_code == 200


def test_a_dicom_upload_offers_a_dicom_seg_download(client, tmp_path):
    """The page and the JSON offer the DICOM SEG that `mtl infer` writes for DICOM input."""
    import pydicom
    from pydicom.uid import SegmentationStorage

    paths = make_dicom_series(tmp_path / "s", n=2, tumor_slices=(1,), tumor_box=(10, 20, 40, 52))
    source = pydicom.dcmread(paths[1])
    r = _post(client, paths[1].read_bytes(), "IM0001.dcm").json()
    link = r["links"]["masks"]["dicom_seg"]
    assert link == f"/results/{r['id']}/seg.dcm" and "seg.dcm" in r["outputs"]
    res = client.get(link)
    assert res.status_code == 200 and res.headers["content-type"] == "application/dicom"
    assert 'filename="IM0001_seg.dcm"' in res.headers["content-disposition"]
    seg = pydicom.dcmread(io.BytesIO(res.content))
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert int((seg.pixel_array > 0).sum()) == 120
    # the page has the button, shown for this link only; images get no SEG
    page = client.get("/").text
    assert 'id="dl-mask-seg"' in page and "links.masks.dicom_seg" in page
    png = _post(client, tumor_png(BOX)).json()
    assert png["links"]["masks"]["dicom_seg"] is None
    assert client.get(f"/results/{png['id']}/seg.dcm").status_code == 404


def test_volume_overlay_text_counts_slices_from_1(serve_app, tmp_path):
    client, app = serve_app()
    data, _ = tumor_nifti(tmp_path, "brain.nii.gz")
    r = _post(client, data, "brain.nii.gz").json()
    service = app.state.service
    result = service.store.get(r["id"])
    assert service.overlay_lines(result, 0)[1].startswith(f"slice 1/{r['n_slices']}: ")
    last = r["n_slices"] - 1
    assert service.overlay_lines(result, last)[1].startswith(f"slice {last + 1}/{r['n_slices']}: ")


def test_no_interactive_docs_that_need_a_cdn(client):
    """Swagger UI loads from a CDN: a blank page offline. The page links the schema only."""
    page = client.get("/").text
    assert 'href="docs"' not in page and "interactive API docs" not in page
    assert 'href="openapi.json"' in page
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


# --------------------------------------------------------------------------- bad uploads


def _truncated_gzip_nifti(tmp_path) -> bytes:
    data, _ = tumor_nifti(tmp_path, "t.nii.gz")
    return data[: len(data) // 2]


def _bad_uploads(tmp_path):
    rng = np.random.default_rng(0)
    good_png = tumor_png(BOX)
    four_d = tmp_path / "4d.nii.gz"
    save_nifti(four_d, rng.random((16, 16, 4, 3)).astype(np.float32), np.eye(4))
    pair = _nifti_header((16, 16, 4))
    pair[344:348] = b"ni1\x00"
    return [
        ("empty", b"", 400, "empty"),
        ("text", b"hello, this is not a scan" * 20, 415, "unsupported file type"),
        ("executable", b"\x7fELF" + bytes(600), 415, "unsupported file type"),
        ("truncated png", good_png[: len(good_png) // 2], 400, "cannot read image"),
        ("constant image", image_bytes(np.full((40, 40), 77, np.uint8)), 400, "constant"),
        ("tiny image", image_bytes((np.arange(16).reshape(4, 4) * 10).astype(np.uint8)), 400,
         "too small"),
        ("gzip text", gzip.compress(b"just text" * 100), 415, "does not hold a NIfTI"),
        ("truncated gzip", _truncated_gzip_nifti(tmp_path), 400, "truncated"),
        ("nifti pair", bytes(pair), 415, ".hdr/.img pair"),
        ("4-D nifti", four_d.read_bytes(), 400, "not a 3-D volume"),
        ("truncated nifti", bytes(_nifti_header((64, 64, 64))) + bytes(1000), 400, "truncated"),
    ]


def test_bad_files_get_a_clear_4xx_without_server_paths(tmp_path, serve_app):
    client, app = serve_app()
    root = str(app.state.service.temp_root)
    for what, content, status, message in _bad_uploads(tmp_path):
        res = _post(client, content, f"{what}.png")
        assert res.status_code == status, (what, res.text)
        detail = res.json()["detail"]
        assert message in detail, (what, detail)
        assert root not in detail and "mtl-serve-" not in detail, (what, detail)
    assert not list(app.state.service.temp_root.iterdir())


def test_bad_requests_missing_file_bad_options_and_unknown_results(client):
    assert client.post("/predict", data={"axis": "axial"}).status_code == 422
    res = _post(client, tumor_png(BOX), axis="diagonal")
    assert res.status_code == 400 and "axis" in res.json()["detail"]
    res = _post(client, tumor_png(BOX), pixel_spacing="-1")
    assert res.status_code == 400 and "pixel_spacing" in res.json()["detail"]
    good = _post(client, tumor_png(BOX)).json()["id"]
    for url in ["/results/nope", "/results/0123456789abcdef0123456789abcdef/mask.png",
                "/results/../setup.cfg", f"/results/{good}/..%2F..%2Fsetup.cfg",
                f"/results/{good}/etc%2Fpasswd", f"/results/{good}/overlay.svg",
                f"/results/{good}/slices/1/overlay.png"]:
        res = client.get(url)
        assert res.status_code == 404, url
    assert client.get(f"/results/{good}/mask.png").status_code == 200


# --------------------------------------------------------------------------- limits


def test_upload_size_limit_by_header_and_while_streaming(serve_app):
    client, _ = serve_app(limits=Limits(max_bytes=20_000))
    big = tumor_png(BOX, rows=64, cols=64) + bytes(30_000)  # a PNG with trailing junk
    res = _post(client, big)
    assert res.status_code == 413 and "20,000-byte limit" in res.json()["detail"]

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
        for _ in range(200):
            yield bytes(1000)

    res = client.post("/predict", content=chunks(),
                      headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 413 and "limit" in res.json()["detail"]
    # within the limit: fine
    assert _post(client, tumor_png(BOX)).status_code == 200


def test_pixel_and_decompression_bombs_are_refused_before_decoding(tmp_path, serve_app):
    client, app = serve_app(limits=Limits(max_pixels=200_000))
    # 1000 x 1000 pixels in a few kB of PNG
    res = _post(client, image_bytes(np.zeros((1000, 1000), np.uint8)))
    assert res.status_code == 413 and "1000x1000" in res.json()["detail"]
    # a PNG header announcing 30000 x 30000 pixels (no data at all)
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    header_only = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
                   + struct.pack(">I", zlib.crc32(ihdr)) + b"\0\0\0\0IEND\xaeB`\x82")
    res = _post(client, header_only)
    assert res.status_code == 413 and "too large" in res.json()["detail"]
    # a NIfTI header announcing 4096^3 voxels, plain and gzip-compressed
    huge = bytes(_nifti_header((4096, 4096, 4096))) + bytes(4096)
    for content in (huge, gzip.compress(huge)):
        res = _post(client, content, "v.nii")
        assert res.status_code == 413 and "voxels" in res.json()["detail"]
    # a small volume followed by 64 MB of zeros: refused while unpacking, not after
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as gz:
        gz.write(bytes(_nifti_header((16, 16, 4))) + np.ones(16 * 16 * 4, np.float32).tobytes())
        for _ in range(64):
            gz.write(bytes(1 << 20))
    assert len(bomb.getvalue()) < 200_000
    res = _post(client, bomb.getvalue(), "v.nii.gz")
    assert res.status_code == 413 and "unpacks to more than" in res.json()["detail"]
    # DICOM: too many pixels, and deflated data sets
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = make_dicom_series(tmp_path / "s", n=1, tumor_slices=(0,))[0]
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 1000, 1000
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    res = _post(client, (tmp_path / "big.dcm").read_bytes(), "big.dcm")
    assert res.status_code == 413 and "1000x1000" in res.json()["detail"]
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    res = _post(client, (tmp_path / "deflated.dcm").read_bytes(), "d.dcm")
    assert res.status_code == 415 and "deflate" in res.json()["detail"]
    assert not list(app.state.service.temp_root.iterdir())


# --------------------------------------------------------------------------- safety


def test_client_file_names_never_reach_the_file_system(tmp_path, serve_app):
    client, app = serve_app()
    target = tmp_path / "evil.png"
    for name in (str(target), f"../../../../{target}", "..\\..\\evil.png", "/etc/passwd",
                 "a\x00b.png", "<script>alert(1)</script>.png"):
        res = _post(client, tumor_png(BOX), name)
        assert res.status_code == 200, (name, res.text)
        assert "/" not in res.json()["source"] and "\\" not in res.json()["source"]
        assert all(c.isalnum() or c in "._-" for c in res.json()["case"])
    assert not target.exists()
    assert not list(app.state.service.temp_root.iterdir())


def test_host_header_check_for_a_loopback_server(serve_app):
    from fastapi.testclient import TestClient

    _, app = serve_app(allowed_hosts=LOOPBACK_HOSTS)
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/api/info").status_code == 200, base
    res = TestClient(app, base_url="http://attacker.example").get("/api/info")
    assert res.status_code == 400 and "Host" in res.json()["detail"]


# --------------------------------------------------------------------------- concurrency


def test_concurrent_requests_get_their_own_results_and_never_share_the_model(serve_app):
    forward = slow_forward(0.02)
    # room for all 8 at once (two analysed side by side: the model is still called by one)
    client, _ = serve_app(fake_predictor(forward), max_active=2, max_waiting=6)
    boxes = [(8 + i, 20 + 2 * i, 10 + i, 30 + 3 * i) for i in range(8)]
    assert len({box_area(b) for b in boxes}) == 8

    def one(box):
        res = _post(client, tumor_png(box, seed=box[0]), f"case{box[0]}.png")
        assert res.status_code == 200, res.text
        r = res.json()
        mask = png_array(client.get(r["links"]["mask"]).content) > 0
        return box, r, mask

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, boxes))
    ids = set()
    for box, r, mask in results:
        r0, r1, c0, c1 = box
        assert r["findings"]["tumor"]["area_px"] == box_area(box) == mask.sum()
        assert mask[r0:r1, c0:c1].all() and r["case"] == f"case{r0}"
        ids.add(r["id"])
    assert len(ids) == 8
    assert forward.state["most"] == 1  # network calls never overlapped


def test_result_store_is_bounded_and_expires():
    now = [0.0]
    store = ResultStore(max_items=2, ttl_seconds=10, clock=lambda: now[0])

    def result() -> StoredResult:
        empty = np.zeros((1, 8, 8), np.uint8)
        return StoredResult(name="x", kind="image", payload={}, files={}, slices=empty,
                            mask=empty, presence=np.zeros(1), type_probs=np.zeros((1, 2)),
                            findings={}, view=None, default_slice=0)

    first, second = store.put(result()), store.put(result())
    now[0] = 5
    third = store.put(result())
    assert store.get(first) is None and store.get(second) and store.get(third)
    now[0] = 10
    assert store.get(second) is None and store.get(third)
    now[0] = 15
    assert store.get(third) is None and len(store) == 0
    assert store.get("../../etc/passwd") is None and store.get(third.upper()) is None
    small = ResultStore(max_bytes=100)
    a, b = small.put(result()), small.put(result())  # 128 bytes each: only the newest stays
    assert small.get(a) is None and small.get(b)


PYDICOM_MR = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
              "MR_small_implicit.dcm", "MR_small_padded.dcm"]


@pytest.mark.parametrize("name", PYDICOM_MR)
def test_pydicoms_own_mr_files_are_read_as_dicom(client, name):
    """pydicom's bundled MR files: several carry TIFF magic in their 128-byte preamble."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    res = _post(client, open(path, "rb").read(), name)
    assert res.status_code == 200, res.text
    assert res.json()["detected_type"] == "dicom"
    seg = res.json()["links"]["masks"]["dicom_seg"]  # they have position and orientation
    assert seg and client.get(seg).status_code == 200
