"""``mtl serve`` with NRRD uploads: the mask comes back as NRRD in the input's geometry; uploads
that point to other files, or unpack to more than they announce, are refused."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest

from mtl.serve.uploads import Limits
from test_infer_support import TUMOR, head_volume
from test_serve_support import make_client

nrrd = pytest.importorskip("nrrd")

DIRECTIONS = np.array([[0.9, 0.0, 0.0], [0.0, 1.1, 0.19], [0.0, -0.19, 2.5]])
ORIGIN = np.array([-31.5, 40.2, 12.0])


@pytest.fixture
def serve_app():
    apps = []

    def make(**options):
        test_client, app = make_client(None, **options)
        apps.append(app)
        return test_client

    yield make
    for app in apps:
        assert not list(app.state.service.temp_root.iterdir()), "temporary files left behind"
        app.state.service.close()


def _nrrd_bytes(tmp_path, data, encoding="gzip", **fields):
    header = {"space": "left-posterior-superior", "space directions": DIRECTIONS,
              "space origin": ORIGIN, "kinds": ["domain"] * 3, "encoding": encoding, **fields}
    path = tmp_path / f"v_{encoding}.nrrd"
    nrrd.write(str(path), data, header, index_order="F")
    return path.read_bytes()


def _volume():
    vol = head_volume((48, 64, 8)).astype(np.int16)
    vol[30:38, 20:30, 2:5] = TUMOR
    truth = np.zeros(vol.shape, np.uint8)
    truth[30:38, 20:30, 2:5] = 1
    return vol, truth


def _post(client, content, filename="brain.nrrd"):
    return client.post("/predict", files={"file": (filename, content, "application/octet-stream")})


@pytest.mark.parametrize("encoding", ["gzip", "raw", "bzip2"])
def test_a_nrrd_upload_gives_a_nrrd_mask_in_its_geometry(serve_app, tmp_path, encoding):
    client = serve_app()
    vol, truth = _volume()
    res = _post(client, _nrrd_bytes(tmp_path, vol, encoding))
    assert res.status_code == 200, res.text
    r = res.json()
    assert (r["kind"], r["detected_type"], r["n_slices"]) == ("nrrd", "nrrd", 8)
    assert r["findings"]["tumor"]["pixels"] == 240 and r["findings"]["tumor"]["slices"] == [2, 3, 4]
    assert r["links"]["mask"].endswith("/mask.nrrd") and r["links"]["masks"]["nrrd"]
    download = client.get(r["links"]["mask"])
    assert download.status_code == 200
    assert download.headers["content-disposition"] == 'attachment; filename="brain_mask.nrrd"'
    stream = io.BytesIO(download.content)
    header = nrrd.read_header(stream)
    mask = nrrd.read_data(header, stream, index_order="F")
    assert header["space"] == "left-posterior-superior" and list(header["sizes"]) == [48, 64, 8]
    assert np.allclose(header["space directions"], DIRECTIONS)
    assert np.allclose(header["space origin"], ORIGIN)
    assert np.array_equal(mask, truth)


def test_nrrd_is_listed_as_accepted(serve_app):
    client = serve_app()
    assert any("NRRD" in t for t in client.get("/api/info").json()["accepted"])
    assert ".nrrd" in client.get("/").text


def test_nrrd_uploads_that_point_elsewhere_or_unpack_too_far_are_refused(serve_app, tmp_path):
    client = serve_app(limits=Limits(max_pixels=100_000))
    vol, _ = _volume()
    # a header that names another file on the server: never read
    detached = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 48 64 8\nendian: little\n"
                b"encoding: raw\ndata file: /etc/hostname\n\n")
    res = _post(client, detached)
    assert res.status_code == 415 and "separate data file" in res.json()["detail"]
    # more voxels than the server accepts, declared in the header
    res = _post(client, b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1000 1000 1000\n"
                        b"endian: little\nencoding: gzip\n\n" + gzip.compress(b"\0" * 100))
    assert res.status_code == 413 and "too large" in res.json()["detail"]
    # small header, data that unpacks far beyond it: stopped while unpacking
    bomb = (b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 16 16 4\nencoding: gzip\n\n"
            + gzip.compress(b"\0" * (20 << 20)))
    res = _post(client, bomb)
    assert res.status_code == 413 and "unpacks to more" in res.json()["detail"]
    # truncated compressed data
    good = _nrrd_bytes(tmp_path, vol)
    res = _post(client, good[: len(good) - 500])
    assert res.status_code == 400 and "truncated" in res.json()["detail"]
    assert str(tmp_path) not in res.text
    # a NRRD magic line and nothing usable
    res = _post(client, b"NRRD0004\nsizes: banana\n\n")
    assert res.status_code == 400
