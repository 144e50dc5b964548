"""`mtl data to-nifti`: a dataset's slices stacked back into volumes that `mtl infer` reads
slice for slice as the dataset holds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from mtl.cli import main
from mtl.data.adapters import DataError, get_adapter
from mtl.data.volumes import picture_to_ras, write_volumes

NAMES = ["pre-contrast", "flair", "post-contrast"]


def _patient(folder: Path, numbers, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices of 24x32 (not square: a transposition would show), tumor on the middle ones."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for k, number in enumerate(numbers):
        image = rng.integers(0, 255, (24, 32, 3), np.uint8)
        mask = np.zeros((24, 32), np.uint8)
        if 0 < k < len(numbers) - 1:
            mask[4:12, 6:20] = 255
        tifffile.imwrite(folder / f"{folder.name}_{number}.tif", image, photometric="rgb")
        tifffile.imwrite(folder / f"{folder.name}_{number}_mask.tif", mask)
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


@pytest.fixture
def lgg(tmp_path: Path):
    data = tmp_path / "lgg" / "kaggle_3m"
    pictures = {}
    for p, last in enumerate((11, 5)):  # 11 slices: slice 10 must follow 9, not 1
        name = f"TCGA_XX_{1000 + p}_20000101"
        pictures[name] = _patient(data / name, range(1, last + 1), p)
    (data / "data.csv").write_text("Patient,neoplasm_histologic_grade\nTCGA_XX_1000,1\n"
                                   "TCGA_XX_1001,2\n")
    return tmp_path / "lgg", pictures


def test_volumes_read_back_as_the_slices_the_dataset_holds(lgg, tmp_path: Path) -> None:
    from mtl.infer.readers import channel_item, load_case

    root, pictures = lgg
    out = tmp_path / "volumes"
    result = CliRunner().invoke(main, ["data", "to-nifti", "lgg", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 volume(s)" in result.output and "gives no voxel size" in result.output
    name = "TCGA_XX_1000_20000101"
    assert f"--input flair={out / name / (name + '_flair.nii.gz')}" in result.output
    images, masks = pictures[name]
    files = {n: out / name / f"{name}_{n}.nii.gz" for n in NAMES}
    item = channel_item(list(files.items()), NAMES)
    assert item.name == name  # mtl infer names the case after the volume
    case = load_case(item, channels=NAMES)
    # mtl infer turns each slice upright: exactly the dataset's picture, in slice order
    np.testing.assert_array_equal(case.slices, images)
    import nibabel as nib

    mask = np.asarray(nib.load(out / name / f"{name}_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, picture_to_ras(masks > 0).astype(np.uint8))
    assert mask.shape == (32, 24, 11)  # (x, y, slices): RAS, as a DICOM converter writes
    # and the mask of a prediction goes back into the file's array order
    np.testing.assert_array_equal(case.to_native((masks > 0).astype(np.uint8)), mask)


def test_only_the_volumes_asked_for_and_clear_refusals(lgg, tmp_path: Path) -> None:
    root, _ = lgg
    adapter = get_adapter("lgg", root)
    (one,) = write_volumes(adapter, tmp_path / "one", ["TCGA_XX_1001"])  # by patient id
    assert one.name == "TCGA_XX_1001_20000101" and one.slices == 5
    assert sorted(one.files) == sorted(NAMES + ["mask"])
    with pytest.raises(DataError, match="no volume named TCGA_XX_9"):
        write_volumes(adapter, tmp_path / "none", ["TCGA_XX_9"])
    gap = root / "kaggle_3m" / "TCGA_XX_1002_20000101"
    _patient(gap, (1, 2, 4), 7)
    with pytest.raises(DataError, match=r"slice\(s\) 3 missing between 1 and 4"):
        write_volumes(get_adapter("lgg", root), tmp_path / "gap", ["TCGA_XX_1002"])
    with pytest.raises(DataError, match="single images, not slices of volumes"):
        write_volumes(get_adapter("phantoms", None, n=4, size=32), tmp_path / "phantoms")


def test_brats_volumes_keep_the_modality_names_and_the_pixel_size(tmp_path: Path) -> None:
    """Sagittal BraTS slices (2 mm rows, 1 mm columns): files named by modality, the pixel size
    in the affine, and mtl infer reads back the adapter's pictures."""
    from test_adapters_brats import NAMES_2020, _subject

    from mtl.infer.readers import channel_item, load_case

    _subject(tmp_path / "data" / "BraTS2021_00001", NAMES_2020)
    adapter = get_adapter("brats", tmp_path / "data", axis=0, modalities=["t1", "flair"])
    (volume,) = write_volumes(adapter, tmp_path / "out")
    assert volume.name == "BraTS2021_00001/axis0" and volume.spacing_known
    names = list(adapter.modalities)  # the 2023 names: t1n, t2f
    assert sorted(volume.files) == sorted(names + ["mask"]) and names == ["t1n", "t2f"]
    import nibabel as nib

    image = nib.load(volume.files["t2f"])
    assert np.allclose(image.header.get_zooms(), (1.0, 2.0, 1.0))  # x: columns, y: rows
    item = channel_item([(n, volume.files[n]) for n in names], names)
    case = load_case(item, channels=names)
    records = adapter.records()
    first = adapter.volume_slice(records[0])[1]
    for k in (0, 5, len(records) - 1):
        picture = adapter.load(records[k])["image"]
        assert adapter.volume_slice(records[k])[1] == first + k
        np.testing.assert_array_equal(case.slices[k], picture)
