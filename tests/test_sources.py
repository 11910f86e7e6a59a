"""Data sources: the RSNA archive (zip, unpacked folder, malicious zips, credentials), class
folders, the atomic swap of data/raw/, and the download stage script."""

from __future__ import annotations

import csv
import hashlib
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import write_params
from fixtures import KAGGLE_ZIP_NAME, write_kaggle_zip
from pneumo.rsna import CLASS_INFO_CSV, LABELS_CSV, TEST_IMAGES, TRAIN_IMAGES
from pneumo.sources.archive import extract_rsna_zip
from pneumo.sources.folder import import_folder, patient_from_name, sniff_image
from pneumo.sources.kaggle_download import kaggle_credentials
from pneumo.sources.layout import SourceError, check_raw
from pneumo.sources.rsna_source import fetch_rsna
from pneumo.synthetic import generate
from pneumo.synthetic.files import to_dicom, write_dicom
from pneumo.synthetic.render import synthesize

KAGGLE_FILES = (LABELS_CSV, CLASS_INFO_CSV)
FOLDER_CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}


def _fetch(raw: Path, archive: Path | None, **settings) -> dict:
    """``fetch_rsna`` with params.yaml's data.rsna settings unless given."""
    rsna = {"competition": "rsna-pneumonia-detection-challenge", "keep_test_images": False}
    return fetch_rsna(raw, archive=archive, **rsna | settings)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic raw dir (8 patients at 64 px)."""
    raw = tmp_path_factory.mktemp("gen") / "raw"
    generate(raw, 8, image_size=64, seed=5, workers=1)
    return raw


@pytest.fixture(scope="module")
def kaggle_zip(small_raw: Path) -> Path:
    return write_kaggle_zip(small_raw, small_raw.parent / KAGGLE_ZIP_NAME)


# ----------------------------------------------------------------------------------------------
# rsna: local zip and folder


def test_zip_layout_as_kaggle(kaggle_zip: Path, small_raw: Path) -> None:
    names = zipfile.ZipFile(kaggle_zip).namelist()
    assert LABELS_CSV in names and CLASS_INFO_CSV in names
    train = [n for n in names if n.startswith(f"{TRAIN_IMAGES}/")]
    test = [n for n in names if n.startswith(f"{TEST_IMAGES}/")]
    assert len(train) == 8 and len(test) == 2
    assert {n.split("/")[1] for n in train} == {
        p.name for p in (small_raw / TRAIN_IMAGES).iterdir()
    }
    assert [p.name for p in kaggle_zip.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_rsna_from_zip_keeps_only_what_is_needed(
    kaggle_zip: Path, small_raw: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "data" / "raw"
    summary = _fetch(raw, archive=kaggle_zip)
    assert tree_digest(raw) == tree_digest(small_raw)  # byte-identical, nothing else
    assert summary["n_train_images"] == 8 and summary["n_test_images"] == 0
    assert summary["n_skipped_entries"] == 4  # 2 test images, sample submission, credits note
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no temp dir left behind


def test_rsna_from_zip_with_test_images(kaggle_zip: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    summary = _fetch(raw, archive=kaggle_zip, keep_test_images=True)
    assert summary["n_test_images"] == 2
    test_files = sorted((raw / TEST_IMAGES).iterdir())
    assert len(test_files) == 2
    ds = pydicom.dcmread(test_files[0])
    assert ds.pixel_array.shape == (64, 64)


def test_rsna_from_unpacked_folder(kaggle_zip: Path, small_raw: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "download" / "rsna"
    with zipfile.ZipFile(kaggle_zip) as zf:
        zf.extractall(unpacked)  # our own archive: trusted
    before = tree_digest(unpacked)
    raw = tmp_path / "raw"
    summary = _fetch(raw, archive=unpacked)
    assert tree_digest(raw) == tree_digest(small_raw)
    assert summary["n_train_images"] == 8
    assert tree_digest(unpacked) == before  # the source is never modified


def test_rsna_zip_under_a_top_folder(small_raw: Path, tmp_path: Path) -> None:
    """A re-zipped copy with everything under one folder is found and flattened."""
    zpath = tmp_path / "nested.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(small_raw.rglob("*")):
            if p.is_file():
                zf.write(p, f"rsna/{p.relative_to(small_raw).as_posix()}")
    raw = tmp_path / "raw"
    _fetch(raw, archive=zpath)
    assert tree_digest(raw) == tree_digest(small_raw)


def test_rsna_replaces_previous_raw_atomically(kaggle_zip: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "stale.txt").write_text("from an earlier run")
    _fetch(raw, archive=kaggle_zip)
    assert not (raw / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def _zip_with(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(LABELS_CSV, "patientId,x,y,width,height,Target\n")
        zf.writestr(CLASS_INFO_CSV, "patientId,class\n")
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (("../evil.dcm", b"x"), "'..' component"),
        ((f"{TRAIN_IMAGES}/../../evil.dcm", b"x"), "'..' component"),
        (("/tmp/evil.dcm", b"x"), "absolute path"),
        ((f"{TRAIN_IMAGES}\\..\\..\\evil.dcm", b"x"), "'..' component"),
        (_symlink_entry(f"{TRAIN_IMAGES}/link.dcm", "/etc/passwd"), "symbolic link"),
        (_symlink_entry("evil", "../../outside"), "symbolic link"),
    ],
)
def test_malicious_zip_is_refused(
    entry: tuple[zipfile.ZipInfo | str, bytes], reason: str, tmp_path: Path
) -> None:
    zpath = _zip_with(tmp_path / "evil.zip", [entry])
    raw = tmp_path / "work" / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("previous output")
    before = tree_digest(tmp_path)
    name = entry[0] if isinstance(entry[0], str) else entry[0].filename
    with pytest.raises(SourceError) as err:
        _fetch(raw, archive=zpath)
    assert repr(name) in str(err.value) and reason in str(err.value)
    assert tree_digest(tmp_path) == before  # nothing written anywhere, old output intact
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]
    assert not Path("/tmp/evil.dcm").exists()


def test_zip_without_labels_is_named(tmp_path: Path) -> None:
    zpath = tmp_path / "other.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "not the RSNA archive")
    with pytest.raises(SourceError, match=LABELS_CSV):
        _fetch(tmp_path / "raw", archive=zpath)
    assert not (tmp_path / "raw").exists()


def test_zip_missing_images_is_named(tmp_path: Path) -> None:
    zpath = _zip_with(tmp_path / "noimg.zip", [])
    with pytest.raises(SourceError, match=f"{TRAIN_IMAGES}/"):
        _fetch(tmp_path / "raw", archive=zpath)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noimg.zip"]


def test_folder_missing_class_info_is_named(small_raw: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(small_raw, partial)
    (partial / CLASS_INFO_CSV).unlink()
    with pytest.raises(SourceError, match=CLASS_INFO_CSV):
        _fetch(tmp_path / "raw", archive=partial)


def test_archive_that_is_neither(tmp_path: Path) -> None:
    bogus = tmp_path / "rsna.zip"
    bogus.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(SourceError, match="neither a zip"):
        _fetch(tmp_path / "raw", archive=bogus)
    with pytest.raises(SourceError, match="does not exist"):
        _fetch(tmp_path / "raw", archive=tmp_path / "nope.zip")


def test_archive_inside_the_output_is_refused(kaggle_zip: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    inside = shutil.copyfile(kaggle_zip, raw / "rsna.zip")
    with pytest.raises(SourceError, match="which this stage replaces"):
        _fetch(raw, archive=inside)
    assert inside.is_file()


# ----------------------------------------------------------------------------------------------
# rsna: Kaggle credentials (never the network)


@pytest.fixture
def no_kaggle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A home without any Kaggle token; importing the client would fail loudly."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in list(sys.modules["os"].environ):
        if key.startswith("KAGGLE_") or key == "XDG_CONFIG_HOME":
            monkeypatch.delenv(key)
    monkeypatch.setitem(sys.modules, "kaggle", None)  # `import kaggle` now raises ImportError
    return home


def test_missing_credentials_message(no_kaggle: Path, tmp_path: Path) -> None:
    assert kaggle_credentials() is None
    with pytest.raises(SourceError) as err:
        _fetch(tmp_path / "raw", archive=None, download_dir=tmp_path / "dl")
    msg = str(err.value)
    for needle in (
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "kaggle.json",
        "KAGGLE_CONFIG_DIR",
        "~/.kaggle/access_token",
        "rules",
        "https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge/rules",
        "data.rsna.archive",
    ):
        assert needle in msg
    assert not (tmp_path / "raw").exists() and not (tmp_path / "dl").exists()


def test_credentials_found_where_the_client_looks(
    no_kaggle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = no_kaggle
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    assert "KAGGLE_API_TOKEN" in kaggle_credentials()
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    assert kaggle_credentials() is None  # a user name alone is not enough
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert "KAGGLE_USERNAME" in kaggle_credentials()
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text('{"username": "me", "key": "secret"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    assert str(cfg / "kaggle.json") in kaggle_credentials()
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    xdg = home / ".config" / "kaggle"  # used on Linux when ~/.kaggle does not exist
    xdg.mkdir(parents=True)
    (xdg / "kaggle.json").write_text('{"username": "me", "key": "secret"}')
    assert str(xdg / "kaggle.json") in kaggle_credentials()
    (xdg / "kaggle.json").unlink()
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "access_token").write_text("tok\n")
    assert "access_token" in kaggle_credentials()


# ----------------------------------------------------------------------------------------------
# folder


def _png(path: Path, value: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path, "PNG")


def _jpeg(path: Path, value: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size, 3), value, np.uint8)
    img[::3] = 255 - value
    Image.fromarray(img).save(path, "JPEG")


def _dicom(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    patient, rendered = synthesize(0, 1, 48)
    write_dicom(to_dicom(rendered.image, patient, 0.5), path)


@pytest.fixture
def kermany(tmp_path: Path) -> Path:
    """A Kermany-like tree: train/test/val each with NORMAL/ and PNEUMONIA/, plus clutter."""
    root = tmp_path / "chest_xray"
    _jpeg(root / "train" / "NORMAL" / "IM-0115-0001.jpeg", 10)
    _jpeg(root / "train" / "NORMAL" / "IM-0115-0002.jpeg", 20)
    _png(root / "train" / "NORMAL" / "scan.png", 30)
    _jpeg(root / "train" / "PNEUMONIA" / "person12_bacteria_45.jpeg", 40)
    _jpeg(root / "train" / "PNEUMONIA" / "person12_virus_46.jpeg", 50)
    _dicom(root / "train" / "PNEUMONIA" / "deeper" / "series1" / "IMG0001")  # no suffix
    _png(root / "test" / "NORMAL" / "scan.png", 60)  # same stem as train/NORMAL/scan.png
    _jpeg(root / "test" / "PNEUMONIA" / "person7_bacteria_1.jpeg", 70)
    _png(root / "val" / "PNEUMONIA" / "x y(1).png", 80)
    (root / "val" / "NORMAL").mkdir()
    shutil.copyfile(  # the Kaggle copy repeats files: same bytes, skipped
        root / "train" / "NORMAL" / "IM-0115-0001.jpeg", root / "val" / "NORMAL" / "copy.jpeg"
    )
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    _png(root / "__MACOSX" / "train" / "NORMAL" / "ghost.png", 90)
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_source_builds_the_kaggle_layout(
    kermany: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = tree_digest(kermany)
    raw = tmp_path / "data" / "raw"
    summary = import_folder(raw, kermany, {"NORMAL": 0, "PNEUMONIA": 1})
    assert tree_digest(kermany) == before  # source untouched
    labels = _read_csv(raw / LABELS_CSV)
    classes = _read_csv(raw / CLASS_INFO_CSV)
    assert list(labels[0]) == ["patientId", "x", "y", "width", "height", "Target", "groupId"]
    assert [r["patientId"] for r in labels] == [r["patientId"] for r in classes]
    assert len(labels) == 9 == summary["n_images"]
    assert summary["n_skipped_non_image"] == 1 and summary["n_skipped_duplicate"] == 1
    assert "notes.txt" in caplog.text and "copy.jpeg" in caplog.text
    ids = [r["patientId"] for r in labels]
    assert len(set(ids)) == len(ids)
    assert all(r[k] == "" for r in labels for k in ("x", "y", "width", "height"))
    by_id = {r["patientId"]: r for r in labels}
    cls = {r["patientId"]: r["class"] for r in classes}
    assert by_id["person12_bacteria_45"]["groupId"] == "person12"
    assert by_id["person12_virus_46"]["groupId"] == "person12"
    assert by_id["IM-0115-0001"]["groupId"] == by_id["IM-0115-0002"]["groupId"] == "IM-0115"
    assert by_id["person7_bacteria_1"]["Target"] == "1" and cls["person7_bacteria_1"] == "PNEUMONIA"
    assert by_id["IM-0115-0001"]["Target"] == "0" and cls["IM-0115-0001"] == "NORMAL"
    scans = sorted(i for i in ids if i.startswith("scan-"))  # colliding stems get a path hash
    assert len(scans) == 2 and all(by_id[s]["groupId"] == s for s in scans)
    assert "x_y_1_" in ids  # filename-safe
    files = {p.name for p in (raw / TRAIN_IMAGES).iterdir()}
    assert files == {
        "IM-0115-0001.jpeg",
        "IM-0115-0002.jpeg",
        "person12_bacteria_45.jpeg",
        "person12_virus_46.jpeg",
        "person7_bacteria_1.jpeg",
        "IMG0001.dcm",
        "x_y_1_.png",
        *(f"{s}.png" for s in scans),
    }
    assert pydicom.dcmread(raw / TRAIN_IMAGES / "IMG0001.dcm").pixel_array.shape == (48, 48)
    src = kermany / "train" / "PNEUMONIA" / "person12_bacteria_45.jpeg"
    assert (raw / TRAIN_IMAGES / src.name).read_bytes() == src.read_bytes()
    assert "ghost" not in " ".join(ids)  # __MACOSX is ignored


def test_folder_custom_class_names(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _png(root / "healthy" / "a.png", 1)
    _png(root / "sick" / "b.png", 2)
    raw = tmp_path / "raw"
    summary = import_folder(raw, root, {"healthy": 0, "sick": 1})
    assert summary["classes"] == {"healthy": 1, "sick": 1}
    rows = {r["patientId"]: r["Target"] for r in _read_csv(raw / LABELS_CSV)}
    assert rows == {"a": "0", "b": "1"}


def test_folder_errors_name_the_path(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _png(root / "NORMAL" / "a.png", 1)
    with pytest.raises(SourceError, match=r"no folder named PNEUMONIA") as err:
        import_folder(tmp_path / "raw", root, {"NORMAL": 0, "PNEUMONIA": 1})
    assert str(root) in str(err.value)
    (root / "PNEUMONIA").mkdir()
    (root / "PNEUMONIA" / "readme.md").write_text("x")
    with pytest.raises(SourceError, match="class PNEUMONIA: no PNG, JPEG or DICOM") as err:
        import_folder(tmp_path / "raw", root, {"NORMAL": 0, "PNEUMONIA": 1})
    assert str(root / "PNEUMONIA") in str(err.value)
    with pytest.raises(SourceError, match="data.folder.path is not set"):
        import_folder(tmp_path / "raw", None, FOLDER_CLASSES)
    with pytest.raises(SourceError, match="is not a folder"):
        import_folder(tmp_path / "raw", tmp_path / "missing", FOLDER_CLASSES)
    shutil.copyfile(root / "NORMAL" / "a.png", root / "PNEUMONIA" / "a2.png")
    with pytest.raises(SourceError, match="same image under two classes"):
        import_folder(tmp_path / "raw", root, FOLDER_CLASSES)
    assert not (tmp_path / "raw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp dir left


def test_folder_on_real_images(real_cxr: Path, tmp_path: Path) -> None:
    root = tmp_path / "real"
    picks = {
        "NORMAL": ["00027426_000.png", "tbx11k/imgs/health/h0001.png"],
        "PNEUMONIA": ["covid-19-pneumonia-58-prior.jpg", "00000001_000.png", "16747_3_1.jpg"],
    }
    for cls, names in picks.items():
        for name in names:
            (root / cls).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real_cxr / name, root / cls / Path(name).name)
    raw = tmp_path / "raw"
    summary = import_folder(raw, root, FOLDER_CLASSES)
    assert summary["n_images"] == 5 and summary["classes"] == {"NORMAL": 2, "PNEUMONIA": 3}
    rows = {r["patientId"]: r for r in _read_csv(raw / LABELS_CSV)}
    assert rows["00000001_000"]["groupId"] == "00000001"  # NIH: patient_follow-up
    for path in (raw / TRAIN_IMAGES).iterdir():
        with Image.open(path) as im:
            assert im.size[0] > 100
    assert len(list((raw / TRAIN_IMAGES).iterdir())) == 5


def test_sniff_image(tmp_path: Path) -> None:
    _png(tmp_path / "a.jpg", 1)  # a PNG with the wrong suffix is stored as what it is
    _jpeg(tmp_path / "b.JPEG", 1)
    _dicom(tmp_path / "c")
    (tmp_path / "d.dcm").write_bytes(b"\x08\x00\x05\x00")  # preamble-less: preprocess decides
    (tmp_path / "e.png").write_text("text")
    assert sniff_image(tmp_path / "a.jpg") == ".png"
    assert sniff_image(tmp_path / "b.JPEG") == ".jpeg"
    assert sniff_image(tmp_path / "c") == ".dcm"
    assert sniff_image(tmp_path / "d.dcm") == ".dcm"
    assert sniff_image(tmp_path / "e.png") is None


def test_patient_from_name() -> None:
    assert patient_from_name("person1_bacteria_1_jpeg.rf.0b1c2d") == "person1"
    assert patient_from_name("NORMAL2-IM-1427-0001") == "NORMAL2-IM-1427"
    assert patient_from_name("00030805_000") == "00030805"
    assert patient_from_name("scan") is None


# ----------------------------------------------------------------------------------------------
# staging and the stage script


def test_download_stage_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import download

    synthetic = {"n_patients": 5, "image_size": 64, "seed": 2, "workers": 1}
    write_params(tmp_path, {"data": {"source": "synthetic", "synthetic": synthetic}})
    monkeypatch.chdir(tmp_path)
    download.main()
    raw = tmp_path / "data" / "raw"
    check_raw(raw)
    assert len(list((raw / TRAIN_IMAGES).glob("*.dcm"))) == 5
    assert '"n_patients": 5' in capsys.readouterr().out
    write_params(tmp_path, {"data": {"source": "folder", "folder": {"path": str(tmp_path / "x")}}})
    with pytest.raises(SystemExit, match="download: data.folder.path"):
        download.main()
    assert len(list((raw / TRAIN_IMAGES).glob("*.dcm"))) == 5  # previous output intact


def test_check_raw_names_missing(tmp_path: Path) -> None:
    (tmp_path / LABELS_CSV).write_text("patientId,x,y,width,Target\n")
    with pytest.raises(SourceError) as err:
        check_raw(tmp_path)
    assert CLASS_INFO_CSV in str(err.value) and TRAIN_IMAGES in str(err.value)
    (tmp_path / CLASS_INFO_CSV).write_text("patientId,class\n")
    (tmp_path / TRAIN_IMAGES).mkdir()
    (tmp_path / TRAIN_IMAGES / "a.dcm").write_bytes(b"")
    with pytest.raises(SourceError, match="lacks column"):
        check_raw(tmp_path)


# ----------------------------------------------------------------------------------------------
# zip bombs and links


def test_zip_bomb_is_refused_before_anything_is_written(small_raw: Path, tmp_path: Path) -> None:
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in (LABELS_CSV, CLASS_INFO_CSV):
            zf.write(small_raw / name, name)
        # 8 MiB of zeros deflate to about 8 KB: a 1000-fold member, as in the 4 GiB bomb
        zf.writestr(f"{TRAIN_IMAGES}/bomb.dcm", bytes(8 << 20), zipfile.ZIP_DEFLATED)
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("previous output")
    with pytest.raises(SourceError) as err:
        _fetch(raw, archive=zpath)
    message = str(err.value)
    assert f"'{TRAIN_IMAGES}/bomb.dcm'" in message and "-fold" in message, message
    assert "nothing extracted" in message and "\n" not in message
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no temporary folder left
    assert (raw / "keep.txt").read_text() == "previous output"


def test_zip_total_size_limit_names_the_archive(kaggle_zip: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"refusing to extract [\d,]+ bytes, more than the limit"):
        extract_rsna_zip(kaggle_zip, tmp_path, False, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ok").mkdir()
    counts = extract_rsna_zip(kaggle_zip, tmp_path / "ok", False)  # within the default limits
    assert counts["n_train_images"] > 0


def test_folder_source_refuses_a_link_leading_outside(kermany: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    _png(secret, 99)
    (kermany / "train" / "NORMAL" / "innocent.png").symlink_to(secret)
    raw = tmp_path / "data" / "raw"
    with pytest.raises(SourceError) as err:
        import_folder(raw, kermany, {"NORMAL": 0, "PNEUMONIA": 1})
    assert "innocent.png: a symbolic link to" in str(err.value) and "outside" in str(err.value)
    assert not raw.exists() and not list(raw.parent.glob(".raw.*"))
    # a link that stays inside the folder is read like the file it names
    (kermany / "train" / "NORMAL" / "innocent.png").unlink()
    (kermany / "train" / "NORMAL" / "inside.png").symlink_to(
        kermany / "val" / "PNEUMONIA" / "x y(1).png"
    )
    with pytest.raises(SourceError, match="same image under two classes"):
        import_folder(raw, kermany, {"NORMAL": 0, "PNEUMONIA": 1})


def test_unpacked_rsna_folder_refuses_a_link_leading_outside(
    small_raw: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "unpacked"
    shutil.copytree(small_raw, copy)
    (copy / TRAIN_IMAGES / "passwd.dcm").symlink_to("/etc/passwd")
    with pytest.raises(SourceError, match=r"passwd\.dcm: a symbolic link to /etc/passwd"):
        _fetch(tmp_path / "data" / "raw", archive=copy)
    assert not (tmp_path / "data" / "raw").exists()
