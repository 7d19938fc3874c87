"""Datasets: Fashion-MNIST (the offline default), colour photo crops, and ImageFolder (ImageNet / OpenImages).

Every dataset yields ``(x, label)`` with ``x`` a float32 tensor of shape ``[C, H, W]`` and values in ``[-1, 1]`` (the
range of the LDM / EQ-VAE code), and ``label`` an ``int``.

Sources
-------
* Fashion-MNIST (Xiao et al. 2017, MIT licence): idx ``.gz`` files from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or from ``data/fashion-mnist/``. ``make data`` (or
  ``python -m eqvae_lib.data fetch``) puts them there.
* Photo crops: the colour photographs bundled in scikit-image, scikit-learn and matplotlib (see ``PHOTOS``).
* ImageFolder: any folder of images (``paper`` profile).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import matplotlib.cbook
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .runtime import DATA_DIR

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), DATA_DIR / "fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message names the places searched and the command that fetches them."""


# --------------------------------------------------------------------------------------------------- Fashion-MNIST
def find_fashion_mnist(dirs: Sequence[Path] | None = None) -> Path:
    """Return the first folder holding all four Fashion-MNIST idx ``.gz`` files.

    Raises:
        DatasetNotFoundError: naming every folder searched and ``make data`` as the fix.
    """
    dirs = tuple(dirs) if dirs is not None else FASHION_MNIST_DIRS
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    for d in dirs:
        if all((Path(d) / n).is_file() for n in names):
            return Path(d)
    raise DatasetNotFoundError(
        "Fashion-MNIST not found (looked for " + ", ".join(names[:1]) + " etc. in "
        + " and ".join(str(d) for d in dirs) + "). Run `make data`: it installs the Debian package "
        "dataset-fashion-mnist (as root) or downloads the files into data/fashion-mnist/.")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a uint8 array (LeCun's MNIST format).

    Raises:
        ValueError: if the file is truncated or not an unsigned-byte idx file (the message names it).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read idx file ({e}); delete it and run `make data` again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(dims):
        raise ValueError(f"{path}: truncated idx file ({len(raw) - offset} bytes of data, expected "
                         f"{math.prod(dims)} for shape {dims}); delete it and run `make data` again")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


class FashionMNIST(Dataset):
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; 60k train / 10k test, 10 classes, MIT licence).

    The 28×28 grayscale images are zero-padded (value −1 after scaling) to 32×32, optionally resized to ``size``
    (bilinear, antialiased when shrinking) and repeated to ``channels`` channels.

    Args:
        split: ``"train"`` or ``"test"``.
        size: output side in pixels (32 = padded original).
        channels: 1 (grayscale) or 3 (the channel repeated, for RGB autoencoders and Inception features).
        n: keep only the first ``n`` images of the split (``None`` = all).
        root: folder of the idx files (default: searched in ``FASHION_MNIST_DIRS``).

    Items: ``(x, label)``; ``x`` float32 ``[channels, size, size]`` in ``[-1, 1]``, ``label`` in ``0..9``.

    Raises:
        DatasetNotFoundError: when the files are missing (says to run ``make data``).
        ValueError: for a bad split, channel count or size.
    """

    def __init__(self, split: str = "train", size: int = 32, channels: int = 1, n: int | None = None,
                 root: str | os.PathLike | None = None):
        if split not in FASHION_MNIST_FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        folder = Path(root) if root is not None else find_fashion_mnist()
        if root is not None:
            find_fashion_mnist([folder])
        img_file, lbl_file = FASHION_MNIST_FILES[split]
        images = read_idx(folder / img_file)
        labels = read_idx(folder / lbl_file)
        if n is not None:
            images, labels = images[:n], labels[:n]
        self.split, self.size, self.channels, self.root = split, size, channels, folder
        self.images = torch.from_numpy(images.copy())  # uint8 [N, 28, 28]
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def _convert(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.float().div(127.5).sub(1.0).unsqueeze(1)  # [B, 1, 28, 28]
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
        if self.size != 32:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < 32).clamp(-1, 1)
        return x.expand(-1, self.channels, -1, -1).contiguous()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._convert(self.images[i: i + 1])[0], int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels at once: ``([N, channels, size, size]`` in ``[-1, 1]``, ``[N]`` int64``)``.
        Faster than a DataLoader on CPU for the small profiles."""
        return self._convert(self.images), self.labels.clone()


def fetch_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Make Fashion-MNIST available and return its folder (what ``make data`` runs).

    Order: already present → nothing to do; running as root with apt → install the Debian package
    ``dataset-fashion-mnist``; otherwise download through torchvision into ``data/fashion-mnist/`` (needs internet).
    """
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError:
        pass
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
        if subprocess.run(cmd, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env)
            subprocess.run(cmd, env=env)
        try:
            return find_fashion_mnist()
        except DatasetNotFoundError:
            print("apt-get did not provide Fashion-MNIST; trying torchvision's download", file=sys.stderr)
    target = Path(root) if root is not None else DATA_DIR / "fashion-mnist"
    # lazy: only the download fallback needs torchvision.datasets (seconds to import; the Debian package needs none)
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    tmp = target.parent / ".fashion-mnist-download"
    TVFashionMNIST(str(tmp), train=True, download=True)
    TVFashionMNIST(str(tmp), train=False, download=True)
    target.mkdir(parents=True, exist_ok=True)
    for pair in FASHION_MNIST_FILES.values():
        for name in pair:
            shutil.copy(tmp / "FashionMNIST" / "raw" / name, target / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return find_fashion_mnist()


# ----------------------------------------------------------------------------------------------------- photo crops
#: The bundled colour photographs: name -> (package, loader description). The split is fixed: crops of the training
#: set and of the held-out set never come from the same photograph.
PHOTOS_TRAIN = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "china")
PHOTOS_HELDOUT = ("coffee", "stereo_motorcycle", "flower", "grace_hopper")
PHOTO_SOURCES = {
    "astronaut": "scikit-image", "chelsea": "scikit-image", "coffee": "scikit-image", "rocket": "scikit-image",
    "hubble_deep_field": "scikit-image", "immunohistochemistry": "scikit-image", "retina": "scikit-image",
    "stereo_motorcycle": "scikit-image", "china": "scikit-learn", "flower": "scikit-learn",
    "grace_hopper": "matplotlib",
}


def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as uint8 ``[H, W, 3]``.

    Raises:
        KeyError: for an unknown name (lists the known ones).
    """
    if name not in PHOTO_SOURCES:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTO_SOURCES)}")
    source = PHOTO_SOURCES[name]
    if source == "scikit-image":
        img = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            img = img[0]
    elif source == "scikit-learn":
        from sklearn.datasets import load_sample_image  # lazy: seconds to import; 2 photos use it

        img = load_sample_image(f"{name}.jpg")
    else:
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            img = np.asarray(Image.open(f).convert("RGB"))
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


class PhotoCrops(Dataset):
    """Random square crops of real colour photographs (bundled in scikit-image, scikit-learn, matplotlib).

    **No class labels**: the label returned is the index of the source photo in ``self.photos`` (useful to check the
    split, or as a class for a conditional model; treat the data as unlabelled).

    Crop ``i`` is a function of ``(seed, split, i)`` only, so the dataset is deterministic per seed and indexable in any
    order. A crop covers a square of side ``size · r`` pixels of the photo, with ``r ~ U(1, max_rescale)`` (random
    rescale; ``max_rescale = 1`` takes native-resolution crops), resized to ``size`` (bilinear, antialiased).

    Split: ``train`` uses ``PHOTOS_TRAIN`` (7 photos), ``test`` uses ``PHOTOS_HELDOUT`` (4 photos); no photo is in both.

    Args:
        split: ``"train"`` or ``"test"``.
        size: crop side in pixels (e.g. 32 or 64).
        n: number of crops (the dataset's length).
        seed: crop-position seed.
        max_rescale: largest source-square side as a multiple of ``size``.

    Items: ``(x, photo_index)``; ``x`` float32 ``[3, size, size]`` in ``[-1, 1]``.
    """

    def __init__(self, split: str = "train", size: int = 32, n: int = 10000, seed: int = 0,
                 max_rescale: float = 2.0):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if max_rescale < 1:
            raise ValueError(f"max_rescale must be >= 1, got {max_rescale}")
        self.split, self.size, self.n, self.seed, self.max_rescale = split, size, n, seed, max_rescale
        self.photos = PHOTOS_TRAIN if split == "train" else PHOTOS_HELDOUT
        self._images = [torch.from_numpy(load_photo(p)).permute(2, 0, 1).contiguous() for p in self.photos]
        for name, img in zip(self.photos, self._images):
            if min(img.shape[1:]) < size * max_rescale:
                raise ValueError(f"photo {name} ({tuple(img.shape[1:])}) is smaller than size·max_rescale = "
                                 f"{size * max_rescale:g}; lower size or max_rescale")
        # photo choice weighted by area so large photos give proportionally more crops
        areas = torch.tensor([img.shape[1] * img.shape[2] for img in self._images], dtype=torch.float64)
        self._weights = areas / areas.sum()
        self.classes = self.photos

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(i)) * 2 + (self.split == "test"))
        k = int(torch.multinomial(self._weights, 1, generator=g))
        img = self._images[k]
        r = 1.0 + (self.max_rescale - 1.0) * float(torch.rand((), generator=g))
        side = int(round(self.size * r))
        h, w = img.shape[1:]
        top = int(torch.randint(0, h - side + 1, (), generator=g))
        left = int(torch.randint(0, w - side + 1, (), generator=g))
        crop = img[:, top: top + side, left: left + side].float().unsqueeze(0)
        if side != self.size:
            crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                 antialias=True)
        return (crop[0] / 127.5 - 1.0).clamp(-1, 1), k

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All crops at once: ``([n, 3, size, size]`` in ``[-1, 1]``, ``[n]`` photo indices``)``."""
        xs, ys = zip(*(self[i] for i in range(self.n)))
        return torch.stack(xs), torch.tensor(ys)


# ---------------------------------------------------------------------------------------------------- ImageFolder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPEG")

#: What :func:`to_rgb8` does to each PIL mode (the conversion recorded per file). Modes not listed are refused.
IMAGE_MODE_CONVERSIONS = {
    "RGB": None,
    "RGBX": "RGBX: padding byte dropped",
    "L": "8-bit grey repeated to RGB",
    "1": "1-bit black/white to 0/255 grey, repeated to RGB",
    "P": "palette expanded to RGB",
    "PA": "palette expanded to RGB, alpha dropped (colour kept, as ADM/DiT's convert('RGB'))",
    "RGBA": "alpha dropped (colour kept, as ADM/DiT's convert('RGB'))",
    "RGBa": "premultiplied alpha un-multiplied, then alpha dropped",
    "LA": "grey repeated to RGB, alpha dropped",
    "CMYK": "CMYK to RGB by PIL's formula (no ICC colour management)",
    "YCbCr": "YCbCr to RGB (PIL)",
    "I;16": "16-bit grey scaled by 255/65535 to 8 bit, repeated to RGB",
    "I;16L": "16-bit grey scaled by 255/65535 to 8 bit, repeated to RGB",
    "I;16B": "16-bit grey scaled by 255/65535 to 8 bit, repeated to RGB",
    "I;16N": "16-bit grey scaled by 255/65535 to 8 bit, repeated to RGB",
    "I": "32-bit integer grey of the stated bit depth (int_bits 8: as is; 16: scaled by 255/65535), repeated to RGB",
    "F": "32-bit float grey read as [0, 1] (values must lie in it), scaled by 255, repeated to RGB",
}


class ImageDecodeError(RuntimeError):
    """An image file that fails to decode when read (``ImageFolder(verify="header")``); the message names it."""


class UnsupportedImageError(ValueError):
    """An image whose mode or value range the kit cannot map to 8-bit RGB; the message names the file and mode."""


def _int_note(int_bits: int) -> str:
    return (f"32-bit integer grey read as {int_bits}-bit" + (", scaled by 255/65535" if int_bits == 16 else "")
            + ", repeated to RGB")


def to_rgb8(im, path: str | os.PathLike = "<image>", int_bits: int | None = None):
    """Convert a PIL image of any supported mode to 8-bit ``RGB`` with the right value range.

    Every mode's rule is in :data:`IMAGE_MODE_CONVERSIONS` (16-bit grey ``I;16``/``I;16B``/``I;16L``: ``v/257``
    rounded, so a 16-bit ramp ``257·k`` gives the 8-bit ramp ``k``; ``F`` as [0, 1]; alpha dropped; grey repeated to
    RGB). 16-bit RGB PNGs are already reduced to 8-bit ``RGB`` by PIL when opened.

    Mode ``I`` (32-bit integer grey, e.g. from a TIFF) does not carry the image's bit depth: the same pixel value 200
    is near-white in an 8-bit image and near-black in a 16-bit one. It is therefore refused unless ``int_bits``
    (8 or 16) says which; 16-bit grey PNGs open as ``I;16`` and need no ``int_bits``.

    Args:
        im: a PIL image.
        path: the file's name, for messages.
        int_bits: bit depth of mode-``I`` images (8: values 0..255 kept; 16: 0..65535 scaled by 255/65535); ignored
            for other modes.

    Returns:
        ``(rgb_image, note)``: a PIL ``RGB`` image of the same size and the conversion applied (None for RGB).

    Raises:
        UnsupportedImageError: another mode (e.g. ``I;16S``, ``LAB``, ``HSV``), mode ``I`` without ``int_bits``,
            or ``I``/``F`` values outside the range above — naming the file and the mode.
        ValueError: ``int_bits`` other than None, 8 or 16.
    """
    mode = im.mode
    if mode not in IMAGE_MODE_CONVERSIONS:
        raise UnsupportedImageError(f"{path}: image mode {mode!r} is not supported (supported: "
                                    f"{', '.join(IMAGE_MODE_CONVERSIONS)}); convert it to 8-bit RGB or 16-bit grey")
    if int_bits not in (None, 8, 16):
        raise ValueError(f"int_bits must be 8 or 16 (the bit depth of mode-'I' images), got {int_bits!r}")
    note = IMAGE_MODE_CONVERSIONS[mode]
    if mode == "I":
        if int_bits is None:
            raise UnsupportedImageError(f"{path}: image mode 'I' (32-bit integer grey) does not say its bit depth; "
                                        "pass int_bits=8 or int_bits=16 (ImageFolder(..., int_bits=...)), or save the "
                                        "images as 8-bit grey (L) or 16-bit grey PNG (I;16)")
        note = _int_note(int_bits)
    if mode == "RGB":
        return im.convert("RGB"), None  # a loaded copy (the file may be closed after this)
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        a = a.astype(np.float64)
        if mode == "F":
            lo, hi, top = 0.0, 1.0, 1.0
        elif mode == "I" and int_bits == 8:
            lo, hi, top = 0.0, 255.0, 255.0
        else:
            lo, hi, top = 0.0, 65535.0, 65535.0
        if a.size and (not np.isfinite(a).all() or a.min() < lo or a.max() > hi):
            raise UnsupportedImageError(f"{path}: image mode {mode!r} with values in [{np.nanmin(a):g}, "
                                        f"{np.nanmax(a):g}] outside the {lo:g}..{hi:g} the kit assumes for this mode; "
                                        "rescale it to 16-bit (0..65535) or 8-bit before use")
        g = np.rint(a * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(g, mode="L").convert("RGB"), note
    if mode in ("PA", "RGBA", "RGBa", "LA") or (mode == "P" and "transparency" in im.info):
        if mode == "P":
            note = "palette with transparency expanded to RGB, alpha dropped (colour kept, as ADM/DiT's convert('RGB'))"
        return im.convert("RGBA").convert("RGB"), note
    return im.convert("RGB"), note


class ImageFolder(Dataset):
    """A folder of images (recursively), e.g. ImageNet or OpenImages, for the ``paper`` profile.

    Labels: the index of the image's first-level subfolder in sorted order (ImageNet's class folders); images at the
    top level get label 0.

    Crops (``crop``):
      * ``"center"``: ADM centre crop (repeated BOX down-sampling while the short side ≥ 2·size, then bicubic so the
        short side is ``size``, then a centre crop) — the evaluation / latent-extraction crop of DiT and EQ-VAE.
      * ``"random"``: the LDM autoencoder training crop: a random square of side U(0.5, 1)·short side, resized to
        ``size`` (bicubic) — what the EQ-VAE fine-tuning used on OpenImages.
    Optional horizontal flip with probability ``hflip``.

    Bad files: at construction every file is opened and decoded (``verify="full"``) or only its header read
    (``verify="header"``, for very large folders). Unreadable or truncated files are **skipped with a warning** that
    names each path; ``self.skipped`` lists them. With ``verify="header"`` a file that only fails at decode time raises
    a ``RuntimeError`` naming its path from ``__getitem__``.

    Conversions: every image becomes 8-bit RGB by :func:`to_rgb8` (grey repeated to RGB, alpha dropped, 16-bit grey
    scaled by 255/65535, palette expanded, CMYK by PIL's formula — :data:`IMAGE_MODE_CONVERSIONS`), then resized and
    cropped (``crop``). ``self.conversions`` counts the files per conversion applied; :meth:`describe` says all of it
    in one dict for records. A mode the kit cannot map is refused, and so are ``I``/``F`` values outside their range
    and mode ``I`` without ``int_bits`` (8 or 16; the mode does not carry its bit depth).

    Items: ``(x, label)``; ``x`` float32 ``[3, size, size]`` in ``[-1, 1]``.

    Raises:
        DatasetNotFoundError: if ``root`` does not exist or holds no readable image.
        UnsupportedImageError (a ``ValueError``): an image of an unsupported mode / value range, naming the file.
    """

    def __init__(self, root: str | os.PathLike, size: int = 256, crop: str = "center", hflip: float = 0.0,
                 verify: str = "full", seed: int = 0, int_bits: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"image folder {self.root} does not exist")
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if verify not in ("full", "header"):
            raise ValueError(f"verify must be 'full' or 'header', got {verify!r}")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix in IMAGE_EXTENSIONS
                       or p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        self.classes = sorted({p.relative_to(self.root).parts[0] for p in files if len(p.relative_to(self.root).parts) > 1})
        class_index = {c: i for i, c in enumerate(self.classes)}
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.skipped: list[Path] = []
        self.conversions: dict[str, int] = {}
        for p in files:
            try:
                with Image.open(p) as im:
                    mode = im.mode
                    if verify == "full":
                        im.load()
                        note = to_rgb8(im, p, int_bits)[1]  # refuses unsupported modes / value ranges, naming the file
                    else:
                        im.verify()
                        if mode not in IMAGE_MODE_CONVERSIONS or (mode == "I" and int_bits is None):
                            to_rgb8(im, p, int_bits)  # raises, naming the file
                        note = _int_note(int_bits) if mode == "I" else IMAGE_MODE_CONVERSIONS[mode]
            except UnsupportedImageError:
                raise
            except Exception:  # noqa: BLE001 - PIL raises many types for bad files
                self.skipped.append(p)
                continue
            if note:
                self.conversions[note] = self.conversions.get(note, 0) + 1
            parts = p.relative_to(self.root).parts
            self.files.append(p)
            self.labels.append(class_index[parts[0]] if len(parts) > 1 else 0)
        if self.skipped:
            warnings.warn(f"ImageFolder {self.root}: skipped {len(self.skipped)} unreadable or truncated file(s): "
                          + ", ".join(str(p) for p in self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        if not self.files:
            raise DatasetNotFoundError(f"image folder {self.root} holds no readable image "
                                       f"(extensions {', '.join(sorted(set(e.lower() for e in IMAGE_EXTENSIONS)))})")
        self.size, self.crop, self.hflip, self.seed, self.int_bits = size, crop, hflip, seed, int_bits
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> dict:
        """What this dataset does to the files, for records: root, number of images/skipped files, crop, size,
        flips and the per-mode conversions with their file counts."""
        crop = ("ADM centre crop (BOX halving, bicubic resize of the short side, centre crop)" if self.crop == "center"
                else "LDM random crop (square of U(0.5, 1)·short side, bicubic resize)")
        return {"root": str(self.root), "n_images": len(self.files), "n_skipped": len(self.skipped),
                "size": self.size, "resize_crop": crop, "hflip": self.hflip, "conversions": dict(self.conversions),
                "value_range": "[-1, 1] from 8-bit RGB (x/127.5 - 1)"}

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops/flips (deterministic per ``(seed, epoch, index)``)."""
        self._epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files[i]
        try:
            with Image.open(path) as im:
                img = to_rgb8(im, path, self.int_bits)[0]
        except UnsupportedImageError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ImageDecodeError(f"cannot decode image {path}: {e}") from e
        rng = np.random.default_rng((self.seed, self._epoch, i))
        img = center_crop_adm(img, self.size) if self.crop == "center" else random_crop_ldm(img, self.size, rng)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.hflip and rng.random() < self.hflip:
            x = x.flip(-1)
        return x, self.labels[i]


def center_crop_adm(pil_image, image_size: int):
    """ADM / DiT centre crop (guided-diffusion ``center_crop_arr``): PIL image → PIL image ``image_size²``."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])


def random_crop_ldm(pil_image, image_size: int, rng: np.random.Generator):
    """LDM autoencoder training crop: square of side U(0.5, 1)·short side at a random position, resized (bicubic)."""
    w, h = pil_image.size
    side = max(1, int(round(min(w, h) * rng.uniform(0.5, 1.0))))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    return pil_image.crop((left, top, left + side, top + side)).resize((image_size, image_size),
                                                                       resample=Image.BICUBIC)


# ------------------------------------------------------------------------------------ batches (the data contract)
def iter_batches(data: torch.Tensor | Dataset | Iterable, batch_size: int = 64,
                 device: torch.device | str | None = None, *, with_labels: bool = False,
                 labels: torch.Tensor | None = None, num_workers: int = 0) -> Iterator:
    """THE batcher of the kit: every loop that feeds images (or latents) through a model in order takes its batches
    from here, so a tensor, a Dataset and a loader are read the same way everywhere.

    Args:
        data: a tensor ``[N, C, H, W]`` (images in [-1, 1], or latents), sliced in order; a ``Dataset`` (or any
            sequence with ``len`` and indexing, e.g. a list) whose items are ``x`` or ``(x, label, ...)``, read in
            order by ONE ``DataLoader`` (``shuffle=False``, default collate); or a ``DataLoader`` / other iterable of
            batches (tensors or ``(x, labels, ...)`` tuples), passed through.
        batch_size: items per batch (the last batch may be smaller); ignored for an iterable of batches.
        device: move each ``x`` there (None = leave it where it is); labels stay on the CPU.
        with_labels: yield ``(x, y)`` with int64 labels ``y [B]`` (-1 where the data has none) instead of ``x``.
        labels: int64 ``[N]`` labels of a tensor ``data`` (only with ``with_labels``; a Dataset carries its own).
        num_workers: the DataLoader's worker processes (Datasets only).

    Yields:
        ``x [B, ...]`` (same dtype as the data), or ``(x, y)`` with ``with_labels=True``. Concatenating the batches
        gives the data in its order, whatever ``batch_size`` is.

    Raises:
        ValueError: a tensor that is not 4-D, a ``batch_size`` below 1, ``labels`` for a Dataset or without
            ``with_labels``, ``labels`` whose length differs from the data's, or a list of 4-D batch tensors.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and not with_labels:
        raise ValueError("labels= is only used with with_labels=True")

    def out(x, y):
        x = x.to(device) if device is not None else x
        if not with_labels:
            return x
        return x, (torch.full((len(x),), -1, dtype=torch.long) if y is None else torch.as_tensor(y).long())

    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"data must be a [N, C, H, W] tensor, got shape {tuple(data.shape)}")
        if labels is not None and len(labels) != len(data):
            raise ValueError(f"{len(labels)} labels for {len(data)} items")
        for i in range(0, len(data), batch_size):
            yield out(data[i: i + batch_size], None if labels is None else labels[i: i + batch_size])
        return
    if labels is not None:
        raise ValueError("labels= is only for tensors; a Dataset yields (x, label) itself")
    is_loader = isinstance(data, torch.utils.data.DataLoader)
    if isinstance(data, (list, tuple)) and data and torch.is_tensor(data[0]) and data[0].dim() == 4:
        raise ValueError(f"a {type(data).__name__} of [B, C, H, W] batches is ambiguous (items or batches?): pass "
                         "iter(batches) to read them as batches, or torch.cat(batches) as one tensor")
    if not is_loader and (isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__"))):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for b in data:
        if isinstance(b, (tuple, list)):
            yield out(b[0], b[1] if len(b) > 1 else None)
        else:
            yield out(b, None)


# ---------------------------------------------------------------------------------------------------- by name
def get_dataset(name: str, split: str = "train", size: int = 32, n: int | None = None, channels: int | None = None,
                seed: int = 0, root: str | None = None) -> Dataset:
    """Build a dataset by name: ``"fashion-mnist"``, ``"photo-crops"`` or ``"imagefolder"`` (``root`` required).

    ``channels`` applies to Fashion-MNIST only (photos are RGB). For ``imagefolder`` the split chooses the crop:
    ``train`` → LDM random crop, ``test`` → ADM centre crop.
    """
    if name == "fashion-mnist":
        return FashionMNIST(split, size=size, channels=channels or 1, n=n, root=root)
    if name == "photo-crops":
        return PhotoCrops(split, size=size, n=n or (20000 if split == "train" else 2000), seed=seed)
    if name == "imagefolder":
        if root is None:
            raise ValueError("dataset 'imagefolder' needs root=PATH (e.g. your ImageNet train or val folder)")
        return ImageFolder(root, size=size, crop="random" if split == "train" else "center", seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose fashion-mnist, photo-crops or imagefolder")


def cli_fetch_data(argv: list[str]) -> int:
    """``python -m eqvae_lib fetch-data``: make Fashion-MNIST available offline (Debian package or download into
    ``data/``). Returns 0."""
    argparse.ArgumentParser(prog="python -m eqvae_lib fetch-data", description="Make Fashion-MNIST available "
                            "(the Debian package dataset-fashion-mnist, or a download into data/fashion-mnist/)."
                            ).parse_args(argv)
    print(f"Fashion-MNIST: {fetch_fashion_mnist()}")
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eqvae_lib.data", description="dataset utilities")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="make Fashion-MNIST available (Debian package or download into data/)")
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        print(f"Fashion-MNIST: {fetch_fashion_mnist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
