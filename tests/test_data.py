"""Datasets: real Fashion-MNIST and photo crops have the documented shapes and ranges; bad input gives clear errors."""

import gzip
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from eqvae_lib import data
from eqvae_lib.data import (PHOTOS_HELDOUT, PHOTOS_TRAIN, DatasetNotFoundError, FashionMNIST, ImageFolder,
                            PhotoCrops, read_idx)


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_real_files_shapes_ranges_labels():
    train, test = FashionMNIST("train"), FashionMNIST("test")
    assert (len(train), len(test)) == (60000, 10000)
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # the 2-pixel padding is background (-1), the content is not
    assert torch.all(x[:, :2, :] == -1) and torch.all(x[:, :, -2:] == -1)
    assert x[:, 2:30, 2:30].max() > 0
    assert 0 <= y <= 9
    _, labels = test.tensors()
    assert torch.equal(torch.bincount(labels), torch.full((10,), 1000))  # the test split is balanced


def test_fashion_mnist_resize_and_channels():
    ds = FashionMNIST("test", size=64, channels=3, n=8)
    xs, ys = ds.tensors()
    assert xs.shape == (8, 3, 64, 64) and ys.shape == (8,)
    assert torch.equal(xs[:, 0], xs[:, 2])
    assert xs.min() >= -1 and xs.max() <= 1
    assert torch.allclose(ds[3][0], xs[3])


def test_idx_reader_round_trip_and_truncation(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(ValueError, match=r"b\.gz.*truncated"):
        read_idx(tmp_path / "b.gz")


def test_missing_fashion_mnist_names_folders_and_make_data(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"make data") as e:
        FashionMNIST("train", root=tmp_path / "nowhere")
    assert "nowhere" in str(e.value)


def test_fashion_mnist_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        FashionMNIST("val")
    with pytest.raises(ValueError, match="channels"):
        FashionMNIST("test", channels=2)


def test_photo_crops_shapes_determinism_and_split():
    assert not set(PHOTOS_TRAIN) & set(PHOTOS_HELDOUT)
    a = PhotoCrops("train", size=32, n=6, seed=1)
    b = PhotoCrops("train", size=32, n=6, seed=1)
    c = PhotoCrops("train", size=32, n=6, seed=2)
    xa, ya = a.tensors()
    assert xa.shape == (6, 3, 32, 32) and xa.min() >= -1 and xa.max() <= 1
    assert torch.equal(xa, b.tensors()[0]) and torch.equal(a[4][0], xa[4])
    assert not torch.equal(xa, c.tensors()[0])
    assert xa.std() > 0.05  # real image content, not a constant
    test = PhotoCrops("test", size=64, n=4)
    x, k = test[0]
    assert x.shape == (3, 64, 64) and test.photos[k] in PHOTOS_HELDOUT
    assert all(a.photos[y] in PHOTOS_TRAIN for y in ya.tolist())


def test_photo_crop_without_rescale_is_an_exact_crop_of_the_photo():
    ds = PhotoCrops("train", size=16, n=3, seed=0, max_rescale=1.0)
    x, k = ds[0]
    photo = torch.from_numpy(data.load_photo(ds.photos[k])).permute(2, 0, 1).float() / 127.5 - 1
    windows = photo.unfold(1, 16, 1).unfold(2, 16, 1)  # [3, H-15, W-15, 16, 16]
    err = (windows - x[:, None, None]).abs().amax(dim=(0, 3, 4))
    assert err.min() < 1e-6


def _write_image(path, size=(40, 30), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_crops_labels_and_bad_files(tmp_path):
    _write_image(tmp_path / "cat" / "a.png")
    _write_image(tmp_path / "dog" / "b.jpg", size=(80, 64), color=(0, 0, 255))
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = tmp_path / "dog" / "c.png"
    _write_image(good, size=(64, 64))
    truncated = tmp_path / "dog" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = ImageFolder(tmp_path, size=16, crop="center")
    assert {p.name for p in ds.skipped} == {"broken.png", "truncated.png"}
    assert any("broken.png" in str(m.message) for m in w)
    assert len(ds) == 3 and ds.classes == ["cat", "dog"]
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0
    assert torch.allclose(x[0], torch.full((16, 16), 200 / 127.5 - 1), atol=1e-6)
    x, y = ds[1]
    assert y == 1 and torch.allclose(x[2], torch.ones(16, 16), atol=0.02)  # JPEG: near 255
    rnd = ImageFolder(tmp_path, size=16, crop="random", hflip=0.5, seed=3)
    assert torch.equal(rnd[1][0], rnd[1][0]) and rnd[1][0].shape == (3, 16, 16)


def test_image_folder_empty_or_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no readable image"):
        ImageFolder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_adm_center_crop_takes_the_middle():
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:, 32:96] = 255  # the middle square is white, the sides black
    out = np.asarray(data.center_crop_adm(Image.fromarray(arr), 32))
    assert out.shape == (32, 32, 3) and out.min() > 250
