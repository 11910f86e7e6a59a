"""The image reader: DICOMs written here with pydicom, PNG/JPEG, broken files, the DICOM zoo."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumo.image_io.errors import MAX_PIXELS, ImageReadError
from pneumo.image_io.header import read_meta
from pneumo.image_io.read import read_image, read_image_with_notes

RNG = np.random.default_rng(0)


def make_ds(
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **elements: object,
) -> Dataset:
    """A minimal Secondary Capture dataset holding ``arr`` uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "CR"
    ds.PatientID = "p1"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def stretch_expected(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.rint((x.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)


def dicom_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window onto 0..255, written out independently."""
    y = ((x.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


def rsna_like(path: Path, image: np.ndarray, age: str = "62") -> tuple[Path, bytes]:
    """An RSNA-style file: Pillow JPEG baseline wrapped with encapsulate, bare-number age."""
    buf = io.BytesIO()
    Image.fromarray(image, "L").save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ConversionType, ds.ViewPosition, ds.PatientSex = "CR", "WSD", "PA", "F"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientAge = age
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return save(ds, path), jpeg


# ----------------------------------------------------------------------------------------------
# Grayscale rules


def test_8bit_monochrome2_is_returned_exactly(tmp_path):
    arr = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
    out = read_image(save(make_ds(arr), tmp_path / "a.dcm"))
    assert out.dtype == np.uint8 and out.shape == (37, 53)
    np.testing.assert_array_equal(out, arr)


def test_monochrome1_is_inverted(tmp_path):
    arr = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    out = read_image(save(make_ds(arr, "MONOCHROME1"), tmp_path / "m1.dcm"))
    np.testing.assert_array_equal(out, 255 - arr)


def test_12bit_without_window_is_stretched_between_percentiles(tmp_path):
    arr = RNG.integers(0, 4096, (64, 48), dtype=np.uint16)
    out = read_image(save(make_ds(arr, bits_stored=12), tmp_path / "b12.dcm"))
    lo, hi = np.percentile(arr, [0.5, 99.5])
    expected = stretch_expected(arr, lo, hi)
    assert np.abs(out.astype(int) - expected).max() <= 1  # float32 vs float64 rounding
    assert out.min() == 0 and out.max() == 255


def test_16bit_burned_in_label_does_not_set_the_range(tmp_path):
    body = RNG.integers(20000, 24000, (100, 100)).astype(np.uint16)
    body[:2, :5] = 65535  # 0.1 % of the pixels: a burned-in annotation at full white
    out = read_image(save(make_ds(body, bits_stored=16), tmp_path / "b16.dcm"))
    # a plain min/max would squeeze the anatomy into about 78..93
    assert np.percentile(out[2:], 99) > 240 and np.percentile(out[2:], 1) < 15
    assert (out[:2, :5] == 255).all()


def test_signed_ct_rescale_and_window_are_applied(tmp_path):
    hu = np.rint(np.linspace(-1000, 1000, 40 * 50)).reshape(40, 50)
    stored = (hu - 500).astype(np.int16)  # signed stored values, most of them negative
    ds = make_ds(stored, bits_stored=16, RescaleSlope=1, RescaleIntercept=500)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    out = read_image(save(ds, tmp_path / "ct.dcm"))
    expected = dicom_window(hu, 40, 400)
    assert np.abs(out.astype(float) - expected).max() <= 1.0
    assert (out[hu < -160] == 0).all() and (out[hu > 240] == 255).all()
    assert out[(hu > -100) & (hu < 180)].min() > 0 and out[(hu > -100) & (hu < 180)].max() < 255


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_12bit_window_is_applied(tmp_path, photometric):
    arr = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    ds = make_ds(arr, photometric, bits_stored=12, WindowCenter=1000, WindowWidth=500)
    out = read_image(save(ds, tmp_path / "w.dcm")).astype(float)
    expected = dicom_window(arr, 1000, 500)
    if photometric == "MONOCHROME1":
        expected = 255 - np.rint(expected)
    assert np.abs(out - expected).max() <= 1.0
    assert (out[arr < 750] == (0 if photometric == "MONOCHROME2" else 255)).all()


def test_signed_without_window_keeps_order(tmp_path):
    arr = RNG.normal(0, 300, (50, 50)).astype(np.int16)
    out = read_image(save(make_ds(arr, bits_stored=16), tmp_path / "s.dcm"))
    lo, hi = np.percentile(arr, [0.5, 99.5])
    assert np.abs(out.astype(int) - stretch_expected(arr, lo, hi)).max() <= 1


def test_voi_lut_sequence_is_applied(tmp_path):
    arr = RNG.integers(0, 4096, (32, 32), dtype=np.uint16)
    ds = make_ds(arr, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [min(65535, 4095 - v) * 16 for v in range(4096)])  # inverting
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 100, 10  # ignored: pydicom prefers the LUT, as we do
    out = read_image(save(ds, tmp_path / "voi.dcm")).astype(float)
    expected = (4095 - arr) * 16 / (4095 * 16) * 255
    assert np.abs(out - expected).max() <= 1.0


def test_rle_compressed_file_reads_like_uncompressed(tmp_path):
    arr = RNG.integers(0, 4096, (40, 60), dtype=np.uint16)
    plain = read_image(save(make_ds(arr, bits_stored=12), tmp_path / "plain.dcm"))
    ds = make_ds(arr, bits_stored=12)
    ds.compress(RLELossless)
    path = save(ds, tmp_path / "rle.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_image(path), plain)


def test_rsna_like_jpeg_baseline_is_exact_and_quiet(tmp_path, caplog):
    y, x = np.mgrid[0:96, 0:128]
    image = ((x + y) % 256).astype(np.uint8)
    path, jpeg = rsna_like(tmp_path / "rsna.dcm", image)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read_image_with_notes(path)
    assert not caught, [str(w.message) for w in caught]  # RSNA's "Invalid value for VR AS"
    assert not caplog.records, caplog.text  # pydicom also logs each warning
    assert result.notes == ()
    np.testing.assert_array_equal(result.image, np.asarray(Image.open(io.BytesIO(jpeg))))
    assert read_meta(path).age == 62


def test_colour_dicom_becomes_luminance_with_a_note(tmp_path):
    rgb = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    result = read_image_with_notes(save(make_ds(rgb, "RGB", PlanarConfiguration=0), tmp_path / "c"))
    expected = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    assert np.abs(result.image.astype(float) - expected).max() <= 1
    assert any("converted to gray" in n for n in result.notes)


def test_file_without_meta_is_read_as_implicit_vr(tmp_path):
    arr = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    ds = make_ds(arr)
    del ds.file_meta
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    path = tmp_path / "acr_nema.dcm"
    path.write_bytes(fp.getvalue())  # no preamble, no DICM, no file meta
    result = read_image_with_notes(path)
    np.testing.assert_array_equal(result.image, arr)
    assert any("Implicit VR Little Endian" in n for n in result.notes)


# ----------------------------------------------------------------------------------------------
# PNG / JPEG


def test_png_renamed_dcm_is_read_as_png(tmp_path):
    arr = RNG.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    (tmp_path / "x.png").rename(tmp_path / "x.dcm")
    result = read_image_with_notes(tmp_path / "x.dcm")
    np.testing.assert_array_equal(result.image, arr)
    assert any("PNG content" in n for n in result.notes)


def test_png_and_jpeg_modes(tmp_path):
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    np.testing.assert_array_equal(
        read_image(tmp_path / "g.jpg"), np.asarray(Image.open(tmp_path / "g.jpg"))
    )
    rgb = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    result = read_image_with_notes(tmp_path / "rgb.png")
    np.testing.assert_array_equal(result.image, gray)  # R = G = B: luminance is exact
    assert any("colour" in n for n in result.notes)
    deep = RNG.integers(1000, 3000, (20, 30)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d16.png")
    out = read_image(tmp_path / "d16.png")
    lo, hi = np.percentile(deep, [0.5, 99.5])
    assert np.abs(out.astype(int) - stretch_expected(deep, lo, hi)).max() <= 1


# ----------------------------------------------------------------------------------------------
# Rejections


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height (CRC fixed), with a tiny real body."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def _broken_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    arr = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    good = save(make_ds(arr), tmp_path / "good.dcm").read_bytes()
    rsna, _ = rsna_like(tmp_path / "rsna.dcm", arr)
    files = {}

    def put(name: str, data: bytes, expect: str) -> None:
        (tmp_path / name).write_bytes(data)
        files[name] = (tmp_path / name, expect)

    put("zero.dcm", b"", "empty file")
    put("random.dcm", RNG.bytes(4096), "not a DICOM, PNG or JPEG")
    put("truncated_native.dcm", good[: len(good) - 1000], "truncated")
    put("truncated_jpeg.dcm", rsna.read_bytes()[:-600], "truncated")
    put("gzipped.dcm", gzip.compress(good), "gzip")
    put("text.dcm", b"patientId,x,y\n" * 20, "not a DICOM, PNG or JPEG")
    frames = make_ds(RNG.integers(0, 256, (2, 8, 8), dtype=np.uint8))
    files["multi.dcm"] = (save(frames, tmp_path / "multi.dcm"), "multi-frame image (2 frames)")
    nopix = make_ds(arr)
    del nopix.PixelData
    for k in ("Rows", "Columns"):
        delattr(nopix, k)
    files["nopix.dcm"] = (save(nopix, tmp_path / "nopix.dcm"), "no pixel data")
    huge = make_ds(arr)
    huge.Rows = huge.Columns = 65535  # 4.3 gigapixels declared over 4 KB of data
    files["huge.dcm"] = (save(huge, tmp_path / "huge.dcm"), "enormous image")
    files["huge.png"] = (_png_with_size(tmp_path / "huge.png", 30000, 30000), "enormous image")
    files["missing.dcm"] = (tmp_path / "missing.dcm", "file not found")
    (tmp_path / "folder.dcm").mkdir()
    files["folder.dcm"] = (tmp_path / "folder.dcm", "not a regular file")
    return files


def test_broken_files_are_rejected_with_a_specific_reason(tmp_path):
    for name, (path, expect) in _broken_files(tmp_path).items():
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        err = info.value
        assert expect in err.reason, (name, err.reason)
        assert err.path == path
        assert "\n" not in str(err) and str(err).startswith(str(path)), str(err)


def test_enormous_header_is_rejected_before_decoding(tmp_path, monkeypatch):
    import pneumo.image_io.dicom as reader

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoder called for an enormous image")

    monkeypatch.setattr(reader, "pixel_array", no_decoding)
    huge = make_ds(np.zeros((8, 8), np.uint8))
    huge.Rows, huge.Columns = 20000, 20000
    assert MAX_PIXELS < 20000 * 20000
    with pytest.raises(ImageReadError, match="enormous"):
        read_image(save(huge, tmp_path / "huge.dcm"))


def test_image_read_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ImageReadError("/x/y.dcm", "empty file (0 bytes)")))
    assert isinstance(err, ImageReadError)
    assert (err.path, err.reason) == (Path("/x/y.dcm"), "empty file (0 bytes)")
    assert str(err) == "/x/y.dcm: empty file (0 bytes)"


# ----------------------------------------------------------------------------------------------
# The DICOM zoo: 217 real-world files


def _zoo_rows(zoo: Path) -> list[dict[str, str]]:
    with (zoo / "zoo.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_zoo_file_converts_or_gets_a_reason(dicom_zoo):
    converted, rejected = 0, 0
    for row in _zoo_rows(dicom_zoo):
        path = dicom_zoo / row["file"]
        single = row["NumberOfFrames"] in ("", "1")
        decodable = row["decode"].startswith("ok") and row["has_pixel_data"] == "1"
        try:
            image = read_image(path)
        except ImageReadError as e:
            rejected += 1
            assert e.reason and "\n" not in str(e)
            assert not (decodable and single), f"{row['file']}: rejected: {e.reason}"
            if row["has_pixel_data"] == "0" and row["Modality"]:  # RT plans, reports, ECGs
                assert "no pixel data" in e.reason or "truncated" in e.reason, e.reason
            continue
        converted += 1
        assert decodable and single, f"{row['file']} converted but zoo.csv says {row['decode']}"
        assert image.dtype == np.uint8 and image.ndim == 2
        rows, cols = row["array_shape"].split("x")[:2]
        assert image.shape == (int(rows), int(cols)), row["file"]
    assert converted > 100 and rejected > 50


def test_fake_monochrome1_is_the_exact_inverse_of_its_twin(dicom_zoo):
    rows = _zoo_rows(dicom_zoo)
    fake = next(r for r in rows if r["file"].endswith("Fake_MONOHR1.dcm"))
    twin = next(
        r
        for r in rows
        if r["md5"] != fake["md5"]
        and r["source_repo"] == fake["source_repo"]
        and r["PhotometricInterpretation"] == "MONOCHROME2"
    )
    assert twin["file"].endswith("850819.dcm")
    mono1 = read_image(dicom_zoo / fake["file"])
    mono2 = read_image(dicom_zoo / twin["file"])
    assert mono2.std() > 10  # a real picture, not a blank
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_read_meta_rejects_bytes_that_are_not_dicom(tmp_path: Path) -> None:
    """A forced read parses any bytes into bogus elements; read_meta must not pass them off."""
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="garbage.dcm: not a DICOM file"):
        read_meta(garbage)
