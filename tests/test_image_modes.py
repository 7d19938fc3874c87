"""Issue #16 kind 3: every PIL mode reaches the autoencoder with the right value range, or is refused by name.

The same 8-bit grey ramp (16..240) is written in every mode; all must load as the same tensor. Before the fix a
16-bit PNG loaded as 255 everywhere (PIL's convert("RGB") clips I;16)."""

import numpy as np
import pytest
import torch
from PIL import Image

from eqvae_lib.data import IMAGE_MODE_CONVERSIONS, ImageFolder, UnsupportedImageError, to_rgb8

S = 32
RAMP = np.tile(np.linspace(16, 240, S).round().astype(np.uint8), (S, 1))  # [S, S] uint8


def _variants() -> dict[str, tuple[Image.Image, str]]:
    """mode label -> (PIL image holding RAMP, file suffix)."""
    g16 = RAMP.astype(np.uint16) * 257
    rgba = np.dstack([RAMP] * 3 + [np.full_like(RAMP, 77)])
    pal = Image.fromarray(RAMP, "L").convert("P")
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    cmyk = np.dstack([np.zeros_like(RAMP)] * 3 + [255 - RAMP])
    return {
        "L": (Image.fromarray(RAMP, "L"), ".png"),
        "RGB": (Image.fromarray(np.dstack([RAMP] * 3), "RGB"), ".png"),
        "RGBA": (Image.fromarray(rgba, "RGBA"), ".png"),
        "LA": (Image.fromarray(np.dstack([RAMP, np.full_like(RAMP, 9)]), "LA"), ".png"),
        "P": (pal, ".png"),
        "P+transparency": (pal_t, ".png"),
        "I;16 (16-bit PNG)": (Image.fromarray(g16), ".png"),
        "I;16B": (Image.frombytes("I;16B", (S, S), g16.astype(">u2").tobytes()), ".tif"),
        "I;16L": (Image.frombytes("I;16L", (S, S), g16.astype("<u2").tobytes()), ".tif"),
        "I (32-bit, 16-bit values)": (Image.fromarray(g16.astype(np.int32), "I"), ".tif"),
        "I (32-bit, 8-bit values)": (Image.fromarray(RAMP.astype(np.int32), "I"), ".tif"),
        "F (float in [0, 1])": (Image.fromarray(RAMP.astype(np.float32) / 255, "F"), ".tif"),
        "CMYK": (Image.fromarray(cmyk, "CMYK"), ".tif"),
    }


def test_grey_ramp_loads_identically_in_every_mode(tmp_path):
    ref = None
    modes_seen = set()
    for i, (label, (im, suffix)) in enumerate(_variants().items()):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        im.save(folder / f"ramp{suffix}")
        with Image.open(folder / f"ramp{suffix}") as back:
            modes_seen.add(back.mode)
        bits = 8 if "8-bit values" in label else 16  # mode I carries no bit depth: the caller states it
        ds = ImageFolder(folder, size=S, crop="center", int_bits=bits)
        x = ds[0][0]
        assert x.shape == (3, S, S)
        u8 = torch.round((x + 1) * 127.5).to(torch.uint8)
        if ref is None:
            ref = u8
            assert torch.equal(u8[0, 0], torch.from_numpy(RAMP[0]))  # 16..240, not clipped
        assert torch.equal(u8, ref), label  # identical, not merely close
        info = ds.describe()
        assert info["n_images"] == 1 and (label in ("RGB",) or sum(info["conversions"].values()) == 1), label
    assert {"I;16", "I;16B", "I", "F", "CMYK", "LA", "P", "RGBA"} <= modes_seen


def test_alpha_is_dropped_not_composited_and_recorded(tmp_path):
    rgba = np.dstack([RAMP] * 3 + [np.zeros_like(RAMP)])  # fully transparent: colour kept as ADM/DiT do
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    ds = ImageFolder(tmp_path, size=S)
    assert torch.round((ds[0][0][0, 0] + 1) * 127.5).to(torch.uint8).tolist() == RAMP[0].tolist()
    assert list(ds.describe()["conversions"]) == [IMAGE_MODE_CONVERSIONS["RGBA"]]


def test_out_of_range_and_unknown_modes_are_refused_by_name(tmp_path):
    Image.fromarray(RAMP.astype(np.float32), "F").save(tmp_path / "hdr.tif")  # 16..240 in a float image
    with pytest.raises(UnsupportedImageError, match=r"hdr\.tif.*'F'"):
        ImageFolder(tmp_path, size=S)
    with pytest.raises(UnsupportedImageError, match=r"x\.png.*'I'.*outside"):
        to_rgb8(Image.fromarray(np.full((4, 4), -5, np.int32), "I"), "x.png", int_bits=16)
    with pytest.raises(UnsupportedImageError, match=r"x\.png.*'I'.*outside"):  # 16-bit values said to be 8-bit
        to_rgb8(Image.fromarray(np.full((4, 4), 4000, np.int32), "I"), "x.png", int_bits=8)
    with pytest.raises(UnsupportedImageError, match=r"y\.tif.*'HSV'"):
        to_rgb8(Image.new("HSV", (4, 4)), "y.tif")


def _png16_rgb(path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    h, w, _ = rgb16.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_rgb_png_loads_as_the_same_ramp(tmp_path):
    g16 = RAMP.astype(np.uint16) * 257
    _png16_rgb(tmp_path / "rgb48.png", np.dstack([g16] * 3))
    (tmp_path / "ref").mkdir()
    Image.fromarray(RAMP, "L").save(tmp_path / "ref" / "l.png")
    x = ImageFolder(tmp_path, size=S)
    assert len(x) == 2
    a, b = (torch.round((x[i][0] + 1) * 127.5).to(torch.uint8) for i in range(2))
    assert torch.equal(a, b) and a[0, 0].tolist() == RAMP[0].tolist()


@pytest.mark.parametrize("verify", ["full", "header"])
def test_mode_I_without_a_bit_depth_is_refused_by_name(tmp_path, verify):
    """The same pixel value 200 is near-white at 8 bits and near-black at 16: mode I does not say which, so the kit
    refuses to guess (before the fix an 8-bit image in mode I loaded almost black)."""
    Image.fromarray(RAMP.astype(np.int32), "I").save(tmp_path / "ct.tif")
    with pytest.raises(UnsupportedImageError, match=r"ct\.tif.*'I'.*int_bits"):
        ImageFolder(tmp_path, size=S, verify=verify)
    with pytest.raises(ValueError, match="int_bits must be 8 or 16"):
        to_rgb8(Image.fromarray(RAMP.astype(np.int32), "I"), "ct.tif", int_bits=12)
    ds = ImageFolder(tmp_path, size=S, verify=verify, int_bits=8)
    assert torch.round((ds[0][0][0, 0] + 1) * 127.5).to(torch.uint8).tolist() == RAMP[0].tolist()
