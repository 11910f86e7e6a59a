"""DCT-scaled JPEG decoding: the scale chosen, the pixels libjpeg gives, the boxes, other CPUs.

``load_square`` decodes a JPEG (file or JPEG baseline DICOM frame) at 1/s when the fit needs at
most 1/s of its pixels; everything here is checked against Pillow's own draft decode, the full
decode path, the geometry of ``fit_to_square`` and np.percentile.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from pneumo.image_io.read import read_image, read_image_with_notes
from pneumo.imaging import dct_scale, fit_to_square, load_square, percentiles_u8
from test_dicom import make_ds, rsna_like, save

RNG = np.random.default_rng(3)


def chest_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gray picture with some texture and a bright rectangle at a known place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 60 + 80 * np.exp(-(((xx - w / 2) / (0.3 * w)) ** 2 + ((yy - h / 2) / (0.4 * h)) ** 2))
    img += rng.normal(0, 6, (h, w))
    img[h // 4 : h // 2, w // 5 : w // 3] = 235
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def bright_box(h: int, w: int) -> list[float]:
    """The bright rectangle of ``chest_like`` as xywh."""
    return [w // 5, h // 4, w // 3 - w // 5, h // 2 - h // 4]


def draft_decode(jpeg: bytes, scale: int) -> np.ndarray:
    """Pillow's own draft decode at 1/scale, independently of the reader."""
    with Image.open(io.BytesIO(jpeg)) as im:
        w, h = im.size
        im.draft("L", (w // scale, h // scale))
        im.load()
        return np.array(im)


# ----------------------------------------------------------------------------------------------
# The scale


@pytest.mark.parametrize(
    ("w", "h", "size", "mode", "expected"),
    [
        (1024, 1024, 224, "pad", 2),  # RSNA at the reference pipelines' size: 512 >= 2 x 224
        (1024, 1024, 256, "pad", 2),
        (1024, 1024, 257, "pad", 1),  # 512 < 2 x 257: the area resize needs its 2:1
        (1024, 1024, 128, "pad", 4),  # exactly 2:1 after the 1/4 decode
        (1024, 1024, 96, "pad", 4),  # 1/8 would leave 128 < 192
        (2048, 2048, 128, "pad", 8),  # 8 is libjpeg's largest
        (192, 192, 96, "pad", 1),  # the default profile: a 1/2 decode would be the cache itself
        (2000, 1000, 125, "pad", 8),  # landscape: the long side sets the drawn width
        (2000, 1000, 125, "crop", 4),  # the 1000 px centre square to 125
        (2000, 1000, 125, "stretch", 4),  # the short side limits
        (64, 64, 16, "pad", 2),
    ],
)
def test_dct_scale_leaves_two_decoded_pixels_per_output_pixel(w, h, size, mode, expected):
    assert dct_scale(w, h, size, mode) == expected


# ----------------------------------------------------------------------------------------------
# DICOM


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_jpeg_dicom_decodes_to_libjpegs_scaled_pixels(tmp_path, scale):
    path, jpeg = rsna_like(tmp_path / "a.dcm", chest_like(512, 512))
    read = read_image_with_notes(path, scale_for=lambda w, h: scale)
    assert (read.scale, read.full_size) == (scale, (512, 512))
    np.testing.assert_array_equal(read.image, draft_decode(jpeg, scale))
    # without a scale request, the full decode of today's path (pydicom's Pillow plugin)
    full = read_image_with_notes(path)
    assert (full.scale, full.full_size) == (1, None)
    np.testing.assert_array_equal(full.image, draft_decode(jpeg, 1))


def test_a_partial_last_block_is_decoded_and_boxes_map_as_from_the_full_image(tmp_path):
    h, w = 757, 1003  # neither a multiple of 8: the last block row and column are partial
    path, _ = rsna_like(tmp_path / "odd.dcm", chest_like(h, w))
    read = read_image_with_notes(path, scale_for=lambda *_: 8)
    assert read.image.shape == (95, 126) and read.full_size == (w, h)
    full = read_image(path)
    for mode in ("pad", "crop", "stretch"):
        sq = load_square(path, 96, mode)
        ref, ref_t = fit_to_square(full, 96, mode)
        assert sq.transform == ref_t, mode  # the same geometry as a full decode, to the bit
        x, y, bw, bh = sq.transform.apply_boxes([bright_box(h, w)])[0]
        bright = sq.image[int(y) + 1 : int(y + bh) - 1, int(x) + 1 : int(x + bw) - 1]
        assert bright.min() > 200, mode  # the box lands on the bright pixels
        # a smooth picture: the scaled decode is close to the full decode plus area resize
        assert np.abs(sq.image.astype(int) - ref).mean() < 2.0, mode


def test_monochrome1_jpeg_is_inverted_at_any_scale(tmp_path):
    image = chest_like(256, 256)
    path, _ = rsna_like(tmp_path / "m1.dcm", image)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    save(ds, path)
    full = read_image(path)
    half = read_image_with_notes(path, scale_for=lambda *_: 2)
    assert half.scale == 2
    assert abs(int(full.mean()) - int(half.image.mean())) <= 1
    assert full.mean() > 255 - image.mean() - 3  # inverted, not as stored


def test_other_dicoms_keep_the_full_path(tmp_path):
    arr = chest_like(128, 128)
    plain = save(make_ds(arr), tmp_path / "raw.dcm")  # explicit VR little endian, uncompressed
    read = read_image_with_notes(plain, scale_for=lambda *_: 4)
    assert read.scale == 1
    np.testing.assert_array_equal(read.image, arr)
    # a JPEG frame with a window: the VOI applies to the full image, so no scaling either
    windowed, _ = rsna_like(tmp_path / "w.dcm", arr)
    ds = pydicom.dcmread(windowed)
    ds.WindowCenter, ds.WindowWidth = 100, 120
    save(ds, windowed)
    assert read_image_with_notes(windowed, scale_for=lambda *_: 4).scale == 1


def test_a_frame_that_is_not_the_declared_jpeg_falls_back_and_is_reported(tmp_path):
    path, _ = rsna_like(tmp_path / "bad.dcm", chest_like(256, 256))
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff" + bytes(500)])
    save(ds, path)
    with pytest.raises(Exception) as scaled:
        load_square(path, 64, "pad")
    with pytest.raises(Exception) as whole:
        read_image(path)
    assert str(scaled.value) == str(whole.value) and "cannot decode" in str(whole.value)


# ----------------------------------------------------------------------------------------------
# JPEG files


def _jpeg_file(path: Path, image: np.ndarray, orientation: int = 1) -> Path:
    im = Image.fromarray(image, "L")
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    im.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def test_jpeg_file_decodes_scaled_and_matches_the_full_geometry(tmp_path):
    h, w = 600, 900
    path = _jpeg_file(tmp_path / "a.jpg", chest_like(h, w))
    read = read_image_with_notes(path, scale_for=lambda *_: 4)
    assert (read.scale, read.full_size, read.image.shape) == (4, (w, h), (150, 225))
    np.testing.assert_array_equal(read.image, draft_decode(path.read_bytes(), 4))
    ref, ref_t = fit_to_square(read_image(path), 128, "pad")
    sq = load_square(path, 128, "pad")
    assert sq.transform == ref_t
    assert np.abs(sq.image.astype(int) - ref).mean() < 2.0


@pytest.mark.parametrize(("h", "w", "expected"), [(600, 904, 4), (600, 906, 2), (601, 900, 1)])
def test_a_turned_jpeg_is_scaled_only_by_a_divisor_of_its_size(tmp_path, h, w, expected):
    # EXIF 6 turns the stored w x h picture upright as h x w: a partial block would move to the
    # left edge, so only exact multiples are scaled
    path = _jpeg_file(tmp_path / "turned.jpg", chest_like(h, w), orientation=6)
    read = read_image_with_notes(path, scale_for=lambda *_: 4)
    assert (read.scale, read.full_size) == (expected, (h, w))
    assert read.image.shape == (w // expected, h // expected)
    upright = read_image(path)
    assert upright.shape == (w, h)
    sq = load_square(path, 100, "pad")
    ref, ref_t = fit_to_square(upright, 100, "pad")
    assert sq.transform == ref_t
    assert np.abs(sq.image.astype(int) - ref).mean() < 2.0


def test_png_is_read_whole(tmp_path):
    arr = chest_like(200, 200)
    Image.fromarray(arr).save(tmp_path / "a.png")
    read = read_image_with_notes(tmp_path / "a.png", scale_for=lambda *_: 4)
    assert read.scale == 1
    np.testing.assert_array_equal(read.image, arr)


# ----------------------------------------------------------------------------------------------
# Every CPU


_HASH_SCALES = """
import hashlib, io, sys
from PIL import Image
data = open(sys.argv[1], "rb").read()
for s in (1, 2, 4, 8):
    im = Image.open(io.BytesIO(data)); w, h = im.size
    im.draft("L", (w // s, h // s)); im.load()
    print(s, im.size, hashlib.sha256(im.tobytes()).hexdigest())
"""


def test_scaled_idct_gives_the_same_bytes_without_libjpeg_turbos_simd(tmp_path):
    # libjpeg-turbo's SIMD covers the full-size IDCT (and, on Arm, the reduced ones): switched
    # off, every scale must still give the same pixels
    path = _jpeg_file(tmp_path / "t.jpg", chest_like(517, 645, seed=4))
    env = {k: v for k, v in os.environ.items() if k != "JSIMD_FORCENONE"}

    def scales(extra: dict[str, str]) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", _HASH_SCALES, str(path)],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout

    native = scales({})
    assert len(native.splitlines()) == 4
    assert scales({"JSIMD_FORCENONE": "1"}) == native
    expected = hashlib.sha256(draft_decode(path.read_bytes(), 4).tobytes()).hexdigest()
    assert expected in native


# ----------------------------------------------------------------------------------------------
# The usability check's percentiles


def test_histogram_percentiles_equal_numpys():
    for i in range(200):
        n = int(RNG.integers(1, 3000))
        top = int(RNG.integers(1, 256))
        a = RNG.integers(0, top, n, dtype=np.uint8) if i % 3 else np.full(n, top - 1, np.uint8)
        qs = (1, 99, float(RNG.uniform(0, 100)), 50, 0, 100)
        assert percentiles_u8(a, qs) == [float(v) for v in np.percentile(a, qs)]
