"""End to end: a real ``mtl serve`` server (uvicorn, a free loopback port) driven by headless
Chromium through Playwright: upload a slice and a volume on the page, see the overlay and
numbers, move the slice slider, get a clear error for a bad file.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` package (the test
extra); Playwright's own browser download is not used. Skips, saying why, where either is
missing. Screenshots go to ``$MTL_SCREENSHOTS`` (default: the system temp folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mtl.serve.app import LOOPBACK_HOSTS, create_app
from mtl.serve.command import bind_socket, make_server, url_for
from test_serve_support import fake_predictor, tumor_nifti, tumor_png

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for candidate in (os.environ.get("MTL_CHROMIUM"), shutil.which("chromium"),
                      "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("no Chromium browser: install Debian's chromium (apt-get install chromium; "
                ".ci/run does) or set MTL_CHROMIUM to its path")


@pytest.fixture(scope="module")
def server():
    """The app around the fake segmenter, served by uvicorn in a thread on a free port."""
    sock = bind_socket("127.0.0.1", 0)
    app = create_app(fake_predictor(), allowed_hosts=LOOPBACK_HOSTS)
    srv = make_server(app)  # as mtl serve: with the request deadline (the page's POSTs pass)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_for(sock)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/info", timeout=2) as res:
                    if res.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("the test server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()
        app.state.service.close()
    assert not thread.is_alive(), "the test server did not stop"


@pytest.fixture(scope="module")
def page(server):
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    profile = tempfile.mkdtemp(prefix="mtl-chromium-")
    with sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 900})
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start here
            shutil.rmtree(profile, ignore_errors=True)
            pytest.skip(f"Chromium at {executable} does not start: {exc}")
        try:
            tab = context.new_page()
            tab.set_default_timeout(20_000)
            tab.goto(server)
            yield tab
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _shots() -> Path:
    folder = Path(os.environ.get("MTL_SCREENSHOTS") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_for_overlay(page, src_part: str) -> None:
    """Until the overlay image from ``src_part`` has loaded (selectors only: the page's
    Content-Security-Policy forbids the eval that polling JavaScript predicates use)."""
    page.wait_for_selector(f'#overlay[data-ready="1"][src*="{src_part}"]', state="attached")
    assert page.eval_on_selector("#overlay", "img => img.naturalWidth") > 100


def test_upload_a_slice_and_see_overlay_and_numbers(page, server, tmp_path):
    page.wait_for_selector("#model-info:has-text('glioma')")
    slice_png = tmp_path / "patient slice.png"
    slice_png.write_bytes(tumor_png((10, 20, 30, 45)))
    page.fill("#spacing", "0.5,0.4")
    page.set_input_files("#file", str(slice_png))
    _wait_for_overlay(page, "/overlay.png")
    assert page.is_visible("#result")
    assert page.inner_text("#case-name") == "patient slice.png"
    presence = page.inner_text("#presence")
    assert "YES" in presence and "0.90" in presence
    assert page.inner_text("#type-label") == "glioma · 0.70"
    assert page.inner_text("#area") == "150 px = 30.0 mm²"
    assert page.locator("#type-probs tr").count() == 4
    assert not page.is_visible("#slider-row")
    assert page.inner_text("#status") == ""
    mask_href = page.get_attribute("#dl-mask", "href")
    assert mask_href.endswith("/mask.png") and page.inner_text("#dl-mask") == "Mask (PNG)"
    with urllib.request.urlopen(server.rstrip("/") + mask_href) as res:
        assert res.headers["content-type"] == "image/png"
    page.screenshot(path=str(_shots() / "mtl-serve-page.png"), full_page=True)


def test_upload_a_volume_and_move_the_slice_slider(page, tmp_path):
    data, _ = tumor_nifti(tmp_path, "brain.nii.gz")
    page.fill("#spacing", "")
    page.set_input_files("#file", str(tmp_path / "brain.nii.gz"))
    _wait_for_overlay(page, "/slices/2/overlay.png")  # the largest tumor slice first
    assert page.is_visible("#slider-row")
    assert page.inner_text("#slice-label") == "slice 3 / 8"  # counted from 1
    assert "0.59 mL" in page.inner_text("#volume")
    assert page.inner_text("#tumor-slices") == "3–5"
    assert page.inner_text("#hemisphere").startswith("left")
    assert page.inner_text("#dl-mask") == "Mask (NIfTI)"
    page.fill("#slice", "6")
    _wait_for_overlay(page, "/slices/6/overlay.png")
    assert page.inner_text("#slice-label") == "slice 7 / 8"
    assert "tumor area 0 px" in page.inner_text("#slice-info")
    page.fill("#slice", "3")
    _wait_for_overlay(page, "/slices/3/overlay.png")
    assert "tumor area 80 px" in page.inner_text("#slice-info")
    page.screenshot(path=str(_shots() / "mtl-serve-volume.png"), full_page=True)


def test_a_bad_file_shows_a_clear_error(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all " * 20)
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error")
    message = page.inner_text("#status")
    assert message.startswith("notes.png: unsupported file type")
    assert not page.is_visible("#result")  # the earlier result is not shown next to it
    page.screenshot(path=str(_shots() / "mtl-serve-error.png"), full_page=True)


def test_a_dicom_upload_offers_the_dicom_seg_and_readable_overlay_text(page, server, tmp_path):
    from mtl.infer.overlay import MIN_TEXT_PX, header_text_px
    from test_infer_support import make_dicom_series

    paths = make_dicom_series(tmp_path / "s", n=2, tumor_slices=(1,), tumor_box=(10, 20, 40, 52))
    page.set_input_files("#file", str(paths[1]))
    page.wait_for_selector(f'#case-name:text-is("{paths[1].name}")')
    _wait_for_overlay(page, "/overlay.png")
    assert page.is_visible("#dl-mask-seg") and page.inner_text("#dl-mask-seg") == "Mask (DICOM SEG)"
    href = page.get_attribute("#dl-mask-seg", "href")
    assert href.endswith("/seg.dcm")
    with urllib.request.urlopen(server.rstrip("/") + href) as res:
        assert res.headers["content-type"] == "application/dicom"
        assert res.read()[128:132] == b"DICM"
    # the overlay's header text as shown: its font scaled by the displayed / natural width
    natural = page.eval_on_selector("#overlay", "img => img.naturalWidth")
    shown = page.eval_on_selector("#overlay", "img => img.getBoundingClientRect().width")
    assert header_text_px(natural) * shown / natural >= MIN_TEXT_PX
    # an image upload has no SEG button
    png = tmp_path / "slice.png"
    png.write_bytes(tumor_png((10, 20, 30, 45)))
    page.set_input_files("#file", str(png))
    page.wait_for_selector('#case-name:text-is("slice.png")')
    _wait_for_overlay(page, "/overlay.png")
    assert not page.is_visible("#dl-mask-seg")
