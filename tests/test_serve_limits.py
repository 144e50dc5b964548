"""``mtl serve`` under load and hostile input: overlays drawn at a bounded size whatever the
image's, a memory budget checked from the header before decoding, a bounded upload queue (503 +
Retry-After beyond it), the Origin check on POST, and a deadline for requests that arrive
slowly (a real uvicorn server on a free loopback port, timeouts of about a second)."""

from __future__ import annotations

import http.client
import io
import socket
import struct
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

import mtl.infer.predict as predict_module
from mtl.infer.overlay import DRAW_MAX_SIDE, for_display, render_overlay
from mtl.serve.app import create_app
from mtl.serve.command import bind_socket, make_server, serve
from mtl.serve.uploads import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_REQUEST_BYTES,
    Limits,
    request_cost,
)
from test_infer_support import fake_forward, make_dicom_series, nifti_header, tumor_image
from test_serve_command import _capture
from test_serve_support import image_bytes, png_array, tumor_png


def _post(client, content: bytes, filename: str = "scan.png", headers=None, **form):
    return client.post("/predict", files={"file": (filename, content, "application/octet-stream")},
                       data=form, headers=headers or {})


@pytest.fixture
def make_app(serve_app):
    """tests/conftest.py's serve_app: apps closed after the test, no temporary file left."""
    return serve_app


@pytest.fixture
def drawn(monkeypatch):
    """Shapes of every array handed to matplotlib's imshow and contour."""
    from matplotlib.axes import Axes

    shapes: list[tuple[int, ...]] = []
    for name in ("imshow", "contour"):
        real = getattr(Axes, name)

        def spy(self, *args, _real=real, **kwargs):
            shapes.append(np.shape(args[0]))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Axes, name, spy)
    return shapes


def _png_header_only(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit; 2 = RGB, 0 = grey), with no real data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _nifti_header(dims: tuple[int, ...], bitpix: int, datatype: int) -> bytes:
    return bytes(nifti_header(dims, bitpix, datatype))


# --------------------------------------------------------------------------- 1. overlay memory


def test_overlays_of_large_images_are_drawn_at_a_bounded_size(tmp_path, drawn):
    image = np.zeros((2100, 1400), np.float32)
    image[200:1900, 100:1300] = 100.0
    mask = np.zeros(image.shape, np.uint8)
    mask[1000:1003, 700:703] = 1  # 9 pixels: must stay visible once reduced
    render_overlay(tmp_path / "big.png", image, mask, lines=["big"])
    assert drawn and max(max(s[:2]) for s in drawn) <= DRAW_MAX_SIDE
    assert all(s[:2] == (700, 467) for s in drawn)  # reduced 3x, aspect kept
    shown, shown_mask, _ = for_display(image, mask)
    assert shown_mask.sum() >= 1, "the small tumor vanished from the reduced mask"
    assert shown.mean() == pytest.approx(image.mean(), rel=1e-3)  # block means

    drawn.clear()  # normal sizes are drawn as they are (mtl infer --overlay looks the same)
    render_overlay(tmp_path / "small.png", image[:512, :300], mask[:512, :300], lines=["small"])
    assert drawn and all(s[:2] == (512, 300) for s in drawn)


def test_a_large_upload_keeps_a_small_result_and_its_overlay_is_bounded(make_app, drawn):
    client, app = make_app()
    res = _post(client, image_bytes(tumor_image(1300, 1100, (500, 800, 300, 700))), "big.png")
    assert res.status_code == 200, res.text
    r = res.json()
    area = r["findings"]["tumor"]["area_px"]
    assert area > 0
    overlay = client.get(r["links"]["overlay"])
    assert overlay.status_code == 200
    assert drawn and max(max(s[:2]) for s in drawn) <= DRAW_MAX_SIDE
    # the mask download keeps the source geometry
    mask = png_array(client.get(r["links"]["mask"]).content)
    assert mask.shape == (1300, 1100) and (mask > 0).sum() == area
    # what stays in memory: the slice at drawing size, the mask packed 8 pixels a byte
    stored = app.state.service.store.get(r["id"])
    assert max(stored.slices.shape[1:]) <= DRAW_MAX_SIDE and stored.slices.dtype == np.uint8
    assert stored.slices.shape == (1, 650, 550) and stored.display_factor == 2
    assert stored.nbytes < 1300 * 1100 * 0.5


# --------------------------------------------------------------------------- 2. memory budget


def test_the_default_pixel_limit_is_what_the_request_budget_affords():
    limits = Limits()
    assert (limits.max_pixels, limits.max_request_bytes) == (DEFAULT_MAX_PIXELS,
                                                             DEFAULT_REQUEST_BYTES)
    assert request_cost("image", DEFAULT_MAX_PIXELS, 1) <= DEFAULT_REQUEST_BYTES
    assert request_cost("image", DEFAULT_MAX_PIXELS, 3) > DEFAULT_REQUEST_BYTES  # RGB: less


def test_uploads_over_the_memory_budget_are_refused_from_their_header(make_app, tmp_path):
    client, _ = make_app()
    # 7000x7000 passes no more (the old 50-megapixel default let it through)
    res = _post(client, _png_header_only(7000, 7000, color_type=0), "bomb.png")
    assert res.status_code == 413 and "7000x7000" in res.json()["detail"]
    # within the pixel limit, but RGB at that size needs more memory than a request may use
    res = _post(client, _png_header_only(5000, 5000), "wide.png")
    assert res.status_code == 413, res.text
    assert "MB of server memory" in res.json()["detail"] and "5000x5000" in res.json()["detail"]

    small, _ = make_app(limits=Limits(max_request_bytes=200 << 20))
    volume = _nifti_header((300, 300, 200), bitpix=64, datatype=64)  # 18 M float64 voxels
    res = _post(small, volume, "head.nii")
    assert res.status_code == 413 and "NIfTI volume is too large to analyse" in res.json()["detail"]
    tiny, _ = make_app(limits=Limits(max_request_bytes=1 << 20))
    dicom = make_dicom_series(tmp_path / "s", n=1, tumor_slices=(0,))[0].read_bytes()
    res = _post(tiny, dicom, "IM0")
    assert res.status_code == 413 and "DICOM image is too large to analyse" in res.json()["detail"]
    assert _post(small, tumor_png()).status_code == 200


# --------------------------------------------------------------------------- 2. upload queue


def test_a_full_upload_queue_answers_503_with_retry_after(make_app):
    gate, entered = threading.Event(), threading.Event()

    def forward(x):
        entered.set()
        assert gate.wait(30)
        return fake_forward(x)

    from test_serve_support import fake_predictor

    client, app = make_app(fake_predictor(forward), max_active=1, max_waiting=1)
    queue = app.state.queue
    with ThreadPoolExecutor(2) as pool:
        try:
            running = [pool.submit(_post, client, tumor_png(seed=i)) for i in range(2)]
            deadline = time.monotonic() + 30
            while not (entered.is_set() and queue.in_flight == 2):
                assert time.monotonic() < deadline, "the two uploads never got in"
                time.sleep(0.02)
            busy = _post(client, tumor_png())
            info = client.get("/api/info").json()
        finally:
            gate.set()
        answers = [f.result() for f in running]
    assert busy.status_code == 503, busy.text
    assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]
    assert (info["max_active"], info["max_waiting"], info["uploads_in_progress"]) == (1, 1, 2)
    assert [a.status_code for a in answers] == [200, 200]
    assert queue.in_flight == 0 and _post(client, tumor_png()).status_code == 200


# --------------------------------------------------------------------------- 3. Origin


def test_posts_from_other_origins_are_refused(make_app):
    client, _ = make_app(allowed_origins=["http://localhost:5173"])
    foreign = _post(client, tumor_png(), headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]
    assert _post(client, tumor_png(), headers={"Origin": "null"}).status_code == 403
    assert _post(client, tumor_png(), headers={"Origin": "http://testserver"}).status_code == 200
    allowed = _post(client, tumor_png(), headers={"Origin": "http://localhost:5173"})
    assert allowed.status_code == 200
    assert _post(client, tumor_png()).status_code == 200  # no Origin: curl, scripts
    assert client.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200


# --------------------------------------------------------------------------- 3. timeouts


@pytest.fixture
def live():
    """start(app, **make_server options) -> (host, port) of a real uvicorn server."""
    running = []

    def start(app, **options):
        sock = bind_socket("127.0.0.1", 0)
        srv = make_server(app, **options)
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((srv, thread, sock, app))
        host, port = sock.getsockname()[:2]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/api/info", timeout=2):
                    return host, port
            except OSError:
                assert time.monotonic() < deadline and thread.is_alive(), "no server"
                time.sleep(0.05)

    yield start
    for srv, thread, sock, app in running:
        srv.should_exit = True
        thread.join(15)
        sock.close()
        app.state.service.close()


def _until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        part = sock.recv(65536)
        if not part:
            return data
        data += part


def test_requests_that_arrive_too_slowly_get_408_and_are_closed(live):
    from test_serve_support import fake_predictor

    def slow(x):  # an analysis longer than the timeout is not cut short
        time.sleep(1.3)
        return fake_forward(x)

    app = create_app(fake_predictor(slow))
    host, port = live(app, request_timeout=1.0)
    start = time.monotonic()
    half_header = socket.create_connection((host, port), timeout=10)
    half_header.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    half_body = socket.create_connection((host, port), timeout=10)
    half_body.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                      b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
    answers = [_until_closed(s) for s in (half_header, half_body)]
    waited = time.monotonic() - start
    for s in (half_header, half_body):
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    assert b"did not arrive within 1 s" in answers[1]
    assert 0.9 < waited < 5
    deadline = time.monotonic() + 10
    while app.state.queue.in_flight:  # the stalled upload gave its place back
        assert time.monotonic() < deadline, "the slow upload still holds its place"
        time.sleep(0.05)

    status, _, body = _http_post(host, port, tumor_png())  # same-origin, slow analysis: kept
    assert status == 200, body


def _http_post(host: str, port: int, content: bytes, timeout: float = 30):
    """POST /predict over a real connection: (status, headers, body)."""
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body,
                     {"Content-Type": f"multipart/form-data; boundary={boundary}",
                      "Origin": f"http://127.0.0.1:{port}"})
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def test_a_busy_server_answers_a_large_upload_with_503_not_a_reset(live):
    from test_serve_support import fake_predictor

    gate = threading.Event()

    def forward(x):
        assert gate.wait(30)
        return fake_forward(x)

    app = create_app(fake_predictor(forward), max_active=1, max_waiting=0)
    host, port = live(app)
    with ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(_http_post, host, port, tumor_png())
            deadline = time.monotonic() + 20
            while app.state.queue.in_flight < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # 8 MB the server will not use: it reads and drops them, then answers
            status, headers, body = _http_post(host, port, b"\0" * (8 << 20))
        finally:
            gate.set()
        assert first.result()[0] == 200
    assert status == 503 and int(headers["retry-after"]) >= 1 and b"busy" in body


# --------------------------------------------------------------------------- the command


def test_serve_options_reach_the_app_and_the_server(monkeypatch):
    from fastapi.testclient import TestClient

    from test_serve_support import fake_predictor

    monkeypatch.setattr(predict_module.Predictor, "from_file",
                        classmethod(lambda cls, path, ensemble=(), **kw: fake_predictor(**kw)))
    seen_info = {}

    def drive(app, sock):
        host, port = sock.getsockname()[:2]
        client = TestClient(app, base_url=f"http://{host}:{port}")
        seen_info.update(client.get("/api/info").json())
        res = _post(client, tumor_png(), headers={"Origin": "http://localhost:5173"})
        seen_info["status"] = res.status_code

    seen = _capture(monkeypatch, drive)
    runner = CliRunner()
    with runner.isolated_filesystem():
        open("m.keras", "wb").close()
        result = runner.invoke(serve, ["m.keras", "--port", "0", "--max-active", "2",
                                       "--max-waiting", "5", "--max-request-mb", "300",
                                       "--request-timeout", "7",
                                       "--allow-origin", "http://localhost:5173"])
        assert result.exit_code == 0, result.output
        assert "2 upload(s) analysed at a time, 5 waiting" in result.output
        bad = runner.invoke(serve, ["m.keras", "--port", "0", "--allow-origin", "localhost"])
        assert bad.exit_code == 2 and "--allow-origin" in bad.output
    assert seen["request_timeout"] == 7
    assert (seen_info["max_active"], seen_info["max_waiting"]) == (2, 5)
    assert seen_info["max_request_bytes"] == 300 << 20 and seen_info["status"] == 200


def test_the_load_test_stays_on_loopback_and_its_uploads_are_what_they_say():
    from PIL import Image

    from benchmarks import serve_load

    for option in ("--serve=--host=0.0.0.0", "--serve=--port=80"):
        with pytest.raises(SystemExit) as exit_info:
            serve_load.main([option])
        assert exit_info.value.code == 2
    bomb = serve_load.declared_png(7000, 7000)
    assert len(bomb["content"]) < 200
    with Image.open(io.BytesIO(bomb["content"])) as img:
        assert img.size == (7000, 7000) and img.mode == "RGB"
    body, content_type = serve_load.multipart(bomb)
    assert content_type.split("boundary=")[1].encode() in body and bomb["content"] in body
