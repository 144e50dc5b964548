"""``mtl serve`` with a model whose input channels are named MR sequences (issue 17): one upload
per sequence (multipart fields named as the model names them), one 3-channel image, the 400s
that name what is missing, and the limits applied to every file. The network is a fake that
segments the FLAIR channel and whose type probabilities depend on the channel order."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.data.preprocess import preprocessing_spec
from mtl.infer.predict import Predictor
from mtl.serve.uploads import REQUEST_FIXED_BYTES, Limits
from test_infer_support import CLASSES, fake_forward, save_nifti, tumor_image
from test_serve_support import box_area, image_bytes

NAMES = ["pre-contrast", "flair", "post-contrast"]
BOX = (10, 20, 30, 45)


def channel_forward(x: np.ndarray) -> dict[str, np.ndarray]:
    """The fake perfect segmenter on FLAIR (channel 1); type probabilities from the channels'
    mean intensities, so another channel order gives other probabilities."""
    x = np.asarray(x)
    out = fake_forward(x[..., 1:2])
    means = x.mean(axis=(1, 2))  # (B, 3)
    logits = np.concatenate([means, means[:, :1] - means[:, 2:]], axis=1) * 4
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    out["type"] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def sequence_predictor() -> Predictor:
    return Predictor(forward=channel_forward, classes=CLASSES,
                     preprocessing=preprocessing_spec(64, 3, [0.5, 99.5], NAMES))


def sequences(seed: int = 0) -> dict[str, np.ndarray]:
    """Three 64x64 uint8 slices: FLAIR holds the tumor box, the others other heads."""
    return {"pre-contrast": (tumor_image(64, 64, (5, 9, 5, 9), seed + 1) // 2).astype(np.uint8),
            "flair": tumor_image(64, 64, BOX, seed),
            "post-contrast": tumor_image(64, 64, (40, 50, 40, 50), seed + 2)}


@pytest.fixture
def serve(serve_app):
    """make(predictor, **create_app options) -> (client, app), the sequence predictor by
    default (tests/conftest.py's serve_app: no temporary file left)."""
    return lambda predictor=None, **options: serve_app(predictor or sequence_predictor(), **options)


def _files(arrays: dict[str, np.ndarray], fmt: str = "PNG") -> dict[str, tuple]:
    return {n: (f"case7_{n}.png", image_bytes(a, fmt), "application/octet-stream")
            for n, a in arrays.items()}


def _volume_files(arrays: dict[str, np.ndarray], affine: np.ndarray, folder) -> dict[str, tuple]:
    """One NIfTI volume per sequence (three copies of its slice), as multipart uploads."""
    return {n: (f"{n}.nii.gz", save_nifti(folder / f"{n}.nii.gz",
                                          np.stack([arrays[n]] * 3, -1).astype(np.int16),
                                          affine).read_bytes(), "application/gzip")
            for n in NAMES}


def test_info_schema_and_page_name_the_sequence_fields(serve):
    client, _app = serve()
    info = client.get("/api/info").json()
    assert info["channels"] == NAMES and info["overlay_channel"] == "flair"
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/predict"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = schema["components"]["schemas"][body]["properties"]
    assert list(fields) == ["file", *NAMES, "axis", "pixel_spacing"]
    assert "multipart fields 'pre-contrast', 'flair', 'post-contrast'" in post["description"]
    assert "'pre-contrast', 'flair', 'post-contrast'" in schema["info"]["description"]
    page = client.get("/").text
    assert 'id="sequences"' in page and 'id="send-sequences"' in page
    # a grey model keeps its one required field and says nothing of sequences
    grey, _ = serve(Predictor(forward=fake_forward, classes=CLASSES,
                              preprocessing=preprocessing_spec(64, 1, [0.5, 99.5])))
    assert grey.get("/api/info").json()["channels"] is None
    assert grey.post("/predict", files={"flair": ("a.png", b"x", "image/png")}).status_code == 422


def test_one_upload_per_sequence_equals_the_three_channel_image(serve):
    client, app = serve()
    arrays = sequences()
    split = client.post("/predict", files=_files(arrays))
    assert split.status_code == 200, split.text
    res = split.json()
    assert res["findings"]["tumor"]["area_px"] == box_area(BOX)  # segmented on FLAIR
    assert res["input"]["channels"] == NAMES and res["input"]["overlay_channel"] == "flair"
    assert res["input"]["files"] == {n: f"case7_{n}.png" for n in NAMES}
    assert res["source"] == "; ".join(f"{n}=case7_{n}.png" for n in NAMES)
    assert "mtl-serve" not in split.text  # no server path in the answer
    stacked = np.stack([arrays[n] for n in NAMES], axis=-1)
    whole = client.post("/predict", files={"file": ("slice.tif", image_bytes(stacked, "TIFF"),
                                                    "image/tiff")})
    assert whole.status_code == 200, whole.text
    assert whole.json()["findings"]["type"] == res["findings"]["type"]
    assert whole.json()["findings"]["presence"] == res["findings"]["presence"]
    # another order of the files under the names: other type probabilities
    swapped = dict(arrays, **{"pre-contrast": arrays["post-contrast"],
                              "post-contrast": arrays["pre-contrast"]})
    other = client.post("/predict", files=_files(swapped)).json()
    assert other["findings"]["type"]["probabilities"] != res["findings"]["type"]["probabilities"]
    # the overlay is drawn on FLAIR and says so
    stored = app.state.service.store.get(res["id"])
    assert "drawn on flair (input: pre-contrast, flair, post-contrast)" in \
        app.state.service.overlay_lines(stored, 0)
    assert stored.slices.shape == (1, 64, 64)
    assert client.get(res["links"]["overlay"]).status_code == 200


def test_missing_sequence_and_wrong_single_uploads_get_400_naming_them(serve, tmp_path):
    client, _app = serve()
    files = _files(sequences())
    del files["post-contrast"]
    missing = client.post("/predict", files=files)
    assert missing.status_code == 400
    assert missing.json()["detail"].startswith("missing sequence(s) post-contrast: this model "
                                               "needs pre-contrast, flair, post-contrast")
    grey = client.post("/predict", files={"file": ("g.png", image_bytes(sequences()["flair"]),
                                                   "image/png")})
    assert grey.status_code == 400
    detail = grey.json()["detail"]
    assert detail.startswith("g.png: a grey image (1 channel); this model needs 3 input channels")
    assert "form fields pre-contrast, flair, post-contrast" in detail and "--input" not in detail
    volume = save_nifti(tmp_path / "v.nii.gz", np.stack([sequences()["flair"]] * 3, -1),
                        np.eye(4)).read_bytes()
    single = client.post("/predict", files={"file": ("v.nii.gz", volume, "application/gzip")})
    assert single.status_code == 400
    assert "v.nii.gz: a NIfTI volume holds one sequence" in single.json()["detail"]
    both = client.post("/predict", files={**_files(sequences()),
                                          "file": ("g.png", image_bytes(sequences()["flair"]),
                                                   "image/png")})
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    nothing = client.post("/predict", data={"axis": "axial"})
    assert nothing.status_code == 400 and "missing sequence(s) pre-contrast, flair, " \
        "post-contrast" in nothing.json()["detail"]


def test_one_volume_per_sequence_and_their_geometry(serve, tmp_path):
    client, _app = serve()
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    arrays = sequences()
    files = _volume_files(arrays, affine, tmp_path)
    res = client.post("/predict", files=files)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["kind"] == "nifti" and body["n_slices"] == 3
    assert body["links"]["masks"]["nifti"] is not None
    moved = affine.copy()
    moved[1, 3] = 2.0
    files["flair"] = ("flair.nii.gz", save_nifti(tmp_path / "m.nii.gz",
                                                 np.stack([arrays["flair"]] * 3, -1)
                                                 .astype(np.int16), moved).read_bytes(),
                      "application/gzip")
    bad = client.post("/predict", files=files)
    assert bad.status_code == 400
    detail = bad.json()["detail"]
    assert "not on one grid: the affine of flair (flair.nii.gz" in detail
    assert "mtl-serve" not in detail and "upload.nii" not in detail


def test_limits_apply_to_every_file(serve):
    arrays = sequences()
    files = _files(arrays)
    largest = max(len(f[1]) for f in files.values())
    # the body of three files may exceed one upload's size; each file may not
    client, _app = serve(limits=Limits(max_bytes=largest + 16))
    assert client.post("/predict", files=files).status_code == 200
    small, _ = serve(limits=Limits(max_bytes=largest - 1))
    too_big = small.post("/predict", files=files)
    assert too_big.status_code == 413
    assert "larger than the" in too_big.json()["detail"]
    # the memory budget is shared: each file gets a third of its variable part. One 64x64
    # grey PNG needs about 160 kB besides the fixed part: it fits 300 kB, not a third of it
    budget = Limits(max_request_bytes=REQUEST_FIXED_BYTES + 300_000)
    grey, _ = serve(Predictor(forward=fake_forward, classes=CLASSES,
                              preprocessing=preprocessing_spec(64, 1, [0.5, 99.5])),
                    limits=budget)
    assert grey.post("/predict", files={"file": files["flair"]}).status_code == 200
    shared, _ = serve(limits=budget)
    refused = shared.post("/predict", files=files)
    assert refused.status_code == 413
    assert refused.json()["detail"].startswith("pre-contrast (case7_pre-contrast.png): the "
                                               "image is too large to analyse here")


def test_a_model_of_neighbouring_slices_takes_volumes_and_refuses_single_images(serve, tmp_path):
    """data.context_slices: the page and the API still ask for one upload per sequence; each
    volume's slices get their neighbours as channels, and 2-D images are refused (400)."""
    seen = []

    def context_forward(x):
        seen.append(np.asarray(x).shape[-1])
        return channel_forward(np.asarray(x)[..., 3:6])  # the slice itself: offset 0

    client, _app = serve(Predictor(forward=context_forward, classes=CLASSES,
                                   preprocessing=preprocessing_spec(64, 3, [0.5, 99.5], NAMES, 1)))
    info = client.get("/api/info").json()
    assert info["channels"] == NAMES and info["overlay_channel"] == "flair"
    single = client.post("/predict", files=_files(sequences()))
    assert single.status_code == 400
    detail = single.json()["detail"]
    assert "a single 2-D image" in detail and "1 slice on either side" in detail
    assert "form fields pre-contrast, flair, post-contrast" in detail and "--input" not in detail
    files = _volume_files(sequences(), np.diag([0.9, 0.9, 2.5, 1.0]), tmp_path)
    res = client.post("/predict", files=files)
    assert res.status_code == 200, res.text
    assert res.json()["n_slices"] == 3 and set(seen) == {9}
    del files["post-contrast"]
    missing = client.post("/predict", files=files)
    assert missing.status_code == 400 and "channel image" not in missing.json()["detail"]
    assert "each slice read with the 1 slice(s) on either side" in \
        client.get("/openapi.json").json()["info"]["description"]
