"""Data sources -> data/raw/ in the Kaggle archive layout.

- ``rsna``: the Kaggle competition archive, downloaded with the official client or taken from a
  local copy of the zip or of its unpacked folder; extracted safely, keeping only what the
  pipeline reads.
- ``folder``: a tree with one sub-folder per class (the Kermany / keremberke layout), turned into
  the same layout with a labels CSV without boxes and a ``groupId`` column (the patient, when the
  file names carry one).
- ``synthetic`` lives in :mod:`pneumo.synthetic`.

Every source builds data/raw/ in a sibling temporary folder and swaps it in only when complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pneumo.atomic import atomic_dir
from pneumo.rsna import (
    CLASS_INFO_COLUMNS,
    CLASS_INFO_CSV,
    LABEL_COLUMNS,
    LABELS_CSV,
    TEST_IMAGES,
    TRAIN_IMAGES,
)
from pneumo.sniff import sniff_file

log = logging.getLogger(__name__)

MAX_WARNINGS = 20  # per kind of skipped file; the count is always reported
# Zip bombs: RSNA's archive is 3.9 GB of JPEG DICOMs stored at a ratio near 1, and CSVs that
# deflate about 5-fold. A member larger than RATIO_FLOOR that expands more than MAX_RATIO-fold,
# or more than MAX_EXTRACT_BYTES in all (or more than the disk has free), refuses the archive.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
MAX_EXTRACT_BYTES = 32 << 30


class SourceError(RuntimeError):
    """A data source cannot become data/raw/; the message says what is wrong and what to do."""


def check_raw(raw_dir: Path) -> None:
    """Raise SourceError naming whatever the Kaggle layout needs and ``raw_dir`` lacks."""
    raw_dir = Path(raw_dir)
    missing = [name for name in (LABELS_CSV, CLASS_INFO_CSV) if not (raw_dir / name).is_file()]
    images = raw_dir / TRAIN_IMAGES
    if not images.is_dir():
        missing.append(f"{TRAIN_IMAGES}/")
    elif not any(p.is_file() for p in images.iterdir()):
        missing.append(f"{TRAIN_IMAGES}/ (it is empty)")
    if missing:
        raise SourceError(f"{raw_dir} lacks {', '.join(missing)}")
    with open(raw_dir / LABELS_CSV, newline="") as f:
        header = next(csv.reader(f), [])
    absent = [c for c in LABEL_COLUMNS if c not in header]
    if absent:
        raise SourceError(f"{raw_dir / LABELS_CSV}: header lacks column(s) {', '.join(absent)}")


# ----------------------------------------------------------------------------------------------
# rsna: the Kaggle competition


def fetch_rsna(
    raw_dir: Path,
    archive: str | Path | None,
    competition: str,
    keep_test_images: bool,
    download_dir: Path = Path("data/downloads"),
) -> dict:
    """Fill ``raw_dir`` from a local copy (zip or unpacked folder) or the Kaggle competition.

    A downloaded zip is kept in ``download_dir`` so that a re-run does not fetch 3.9 GB again.
    """
    if archive is not None:
        src = Path(archive).expanduser()
        if not src.exists():
            raise SourceError(f"data.rsna.archive: {src} does not exist")
        if Path(raw_dir).resolve() in (src.resolve(), *src.resolve().parents):
            raise SourceError(
                f"data.rsna.archive: {src} lies in {raw_dir}, which this stage replaces: "
                "keep the archive elsewhere"
            )
    else:
        src = download_competition(competition, Path(download_dir))
    if src.is_dir():
        with atomic_dir(raw_dir) as tmp:
            counts = copy_rsna_folder(src, tmp, keep_test_images)
            check_raw(tmp)
    elif zipfile.is_zipfile(src):
        with atomic_dir(raw_dir) as tmp:
            counts = extract_rsna_zip(src, tmp, keep_test_images)
            check_raw(tmp)
    else:
        raise SourceError(f"{src} is neither a zip archive nor a folder (or the zip is incomplete)")
    return {"source": "rsna", "from": str(src), **counts}


def _unsafe_reason(info: zipfile.ZipInfo, dest: Path) -> str | None:
    """Why extracting ``info`` under ``dest`` would be unsafe, or None."""
    name = info.filename
    if "\x00" in name:
        return "its name contains a NUL byte"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "it is an absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "it has a '..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    resolved = (dest / name).resolve()
    if not resolved.is_relative_to(dest.resolve()):
        return f"it resolves to {resolved}, outside the target"
    return None


def _kaggle_root(names: list[str], where: object) -> str:
    """The folder prefix inside an archive where the labels CSV lies ('' at the root)."""
    hits = [n for n in names if PurePosixPath(n).name == LABELS_CSV]
    if not hits:
        raise SourceError(
            f"{where} has no {LABELS_CSV}: is it the RSNA Pneumonia Detection Challenge archive?"
        )
    hits.sort(key=lambda n: (n.count("/"), n))
    return hits[0][: -len(LABELS_CSV)]


def _wanted(rel: str, keep_test_images: bool) -> bool:
    """Whether a path relative to the archive's root is something the pipeline reads."""
    parts = rel.split("/")
    if len(parts) == 1:
        return rel in (LABELS_CSV, CLASS_INFO_CSV)
    folders = (TRAIN_IMAGES, TEST_IMAGES) if keep_test_images else (TRAIN_IMAGES,)
    return len(parts) == 2 and parts[0] in folders and parts[1] != ""


def extract_rsna_zip(
    zip_path: Path,
    dest: Path,
    keep_test_images: bool,
    *,
    max_ratio: float = MAX_RATIO,
    max_bytes: int = MAX_EXTRACT_BYTES,
) -> dict:
    """Extract only the labels, class info and train (optionally test) images, safely.

    Every entry is checked before anything is written: an absolute path, a '..' component, a
    symbolic link or a name resolving outside ``dest`` refuses the whole archive, and so do the
    zip-bomb limits on what would be extracted (``_check_sizes``).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise SourceError(f"{zip_path} is not a readable zip ({e}): delete it and retry") from e
    with zf:
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe_reason(info, dest)
            if reason:
                raise SourceError(
                    f"{zip_path}: refusing entry {info.filename!r}: {reason}; nothing extracted"
                )
        root = _kaggle_root([i.filename for i in infos], zip_path)
        kept: Counter[str] = Counter()
        todo = []
        for info in infos:
            name = info.filename.replace("\\", "/")
            if info.is_dir() or not name.startswith(root):
                continue
            rel = name[len(root) :]
            if _wanted(rel, keep_test_images):
                todo.append((info, rel))
            else:
                kept["skipped"] += 1
        _check_sizes(zip_path, [info for info, _ in todo], dest, max_ratio, max_bytes)
        for info, rel in tqdm(todo, desc="extract", unit="file", disable=not sys.stderr.isatty()):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            kept[rel.split("/")[0] if "/" in rel else "csv"] += 1
    return _rsna_counts(kept)


def _check_sizes(
    zip_path: Path, infos: list[zipfile.ZipInfo], dest: Path, max_ratio: float, max_bytes: int
) -> None:
    """Refuse, before writing anything, what would expand past the limits or the free disk.

    zipfile stops reading a member at its declared size (and fails on a CRC mismatch), so the
    declared sizes bound what extraction can write.
    """
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > max_ratio:
            raise SourceError(
                f"{zip_path}: refusing entry {info.filename!r}: it expands {ratio:.0f}-fold "
                f"({info.compress_size:,} -> {info.file_size:,} bytes), more than {max_ratio:g}"
                "-fold (a zip bomb?); nothing extracted"
            )
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise SourceError(
            f"{zip_path}: refusing to extract {total:,} bytes, more than the limit of "
            f"{max_bytes:,}; nothing extracted"
        )
    free = shutil.disk_usage(dest).free
    if total > free:
        raise SourceError(
            f"{zip_path}: extraction needs {total / 1e9:.1f} GB and {dest} has {free / 1e9:.1f} GB "
            "free; nothing extracted"
        )


def _outside(path: Path, root: Path) -> str | None:
    """Why ``path`` (a link) must not be read, or None: links are followed only inside ``root``."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.is_relative_to(root.resolve()):
        return None
    return f"a symbolic link to {target}, outside {root}"


def copy_rsna_folder(src: Path, dest: Path, keep_test_images: bool) -> dict:
    """Copy what the pipeline reads from an unpacked archive folder (never modifying it)."""
    src, dest = Path(src), Path(dest)
    names = [
        str(p.relative_to(src).as_posix()) for p in src.glob(f"**/{LABELS_CSV}") if p.is_file()
    ]
    root = src / _kaggle_root(names, src)
    missing = [
        str(root / n) for n in (LABELS_CSV, CLASS_INFO_CSV, TRAIN_IMAGES) if not (root / n).exists()
    ]
    if missing:
        raise SourceError(f"{src} is not an unpacked RSNA archive: missing {', '.join(missing)}")
    kept: Counter[str] = Counter()
    for name in (LABELS_CSV, CLASS_INFO_CSV):
        _refuse_outside(root / name, src)
        shutil.copyfile(root / name, dest / name)
        kept["csv"] += 1
    for folder in (TRAIN_IMAGES, TEST_IMAGES) if keep_test_images else (TRAIN_IMAGES,):
        if not (root / folder).is_dir():
            continue
        (dest / folder).mkdir()
        for path in sorted((root / folder).iterdir()):
            if path.is_file():  # a link is read only when it stays inside the folder
                _refuse_outside(path, src)
                shutil.copyfile(path, dest / folder / path.name)
                kept[folder] += 1
    return _rsna_counts(kept)


def _refuse_outside(path: Path, root: Path) -> None:
    reason = _outside(path, root)
    if reason:
        # what is copied enters data/raw, the DVC cache and the team remote
        raise SourceError(f"{path}: {reason}: refused (copy the file itself into the folder)")


def _rsna_counts(kept: Counter[str]) -> dict:
    return {
        "n_train_images": kept[TRAIN_IMAGES],
        "n_test_images": kept[TEST_IMAGES],
        "n_skipped_entries": kept["skipped"],
    }


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.read_text().strip() != ""
    except OSError:
        return False


def kaggle_credentials(env: Mapping[str, str] | None = None) -> str | None:
    """Where the Kaggle client (2.x) would find credentials, or None; never uses the network.

    Mirrors the client's search: KAGGLE_API_TOKEN, ~/.kaggle/access_token, KAGGLE_USERNAME +
    KAGGLE_KEY, kaggle.json (in KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle), and the OAuth
    credentials of ``kaggle auth login`` (~/.kaggle/credentials.json).
    """
    env = os.environ if env is None else env
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    if env.get("KAGGLE_API_TOKEN"):
        return "the environment variable KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        if _nonempty(home / ".kaggle" / name):
            return str(home / ".kaggle" / name)
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else None
    if config_dir is None:
        config_dir = home / ".kaggle"
        if not config_dir.exists():
            xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
            config_dir = xdg / "kaggle"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "the environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    values = _read_json(config_dir / "kaggle.json")  # the client lets KAGGLE_* fill its gaps
    values.update({k[7:].lower(): v for k, v in env.items() if k.startswith("KAGGLE_")})
    if values.get("username") and values.get("key"):
        return str(config_dir / "kaggle.json")
    if (home / ".kaggle" / "credentials.json").is_file():
        return str(home / ".kaggle" / "credentials.json")
    return None


def missing_credentials_message(competition: str) -> str:
    """What to provide so that the Kaggle client can download ``competition``."""
    return (
        f"No Kaggle credentials found, so the competition {competition!r} cannot be downloaded. "
        "Provide one of: the environment variable KAGGLE_API_TOKEN (an API token from "
        "https://www.kaggle.com/settings/api) or that token in the file ~/.kaggle/access_token; "
        "the environment variables KAGGLE_USERNAME and KAGGLE_KEY; or a legacy API key file "
        'kaggle.json ({"username": ..., "key": ...}) in ~/.kaggle/ or in the folder named by '
        "KAGGLE_CONFIG_DIR (or log in once with `kaggle auth login`). You must also accept the "
        "competition's rules while logged in at "
        f"https://www.kaggle.com/competitions/{competition}/rules before the download is allowed. "
        "Alternatively set data.rsna.archive to a local copy of the zip or of its unpacked folder."
    )


def download_competition(competition: str, download_dir: Path) -> Path:
    """Download the competition's zip with the official Kaggle client; return its path."""
    source = kaggle_credentials()
    if source is None:
        raise SourceError(missing_credentials_message(competition))
    # importing kaggle authenticates (and prints) at import time: only here, once we need it
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client exits on failed authentication
        raise SourceError(
            f"the Kaggle client could not authenticate with the credentials from {source}. "
            + missing_credentials_message(competition)
        ) from None
    download_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s with the Kaggle client (credentials: %s)", competition, source)
    try:
        api.competition_download_files(competition, path=str(download_dir), quiet=False)
    except Exception as e:  # the client raises requests / HTTP errors of several kinds
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {
            401: "the credentials were refused: create a new token",
            403: (
                "access denied: accept the competition's rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules while logged in"
            ),
            404: f"no competition named {competition!r} (data.rsna.competition)",
        }.get(status, "check the network, or set data.rsna.archive to a local copy")
        raise SourceError(f"downloading {competition!r} failed ({e}): {hint}") from e
    zip_path = download_dir / f"{competition}.zip"
    if not zip_path.is_file():
        raise SourceError(f"the Kaggle client finished but {zip_path} is not there")
    return zip_path


# ----------------------------------------------------------------------------------------------
# folder: one sub-folder per class


_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # Kermany pneumonia: person12_bacteria_45
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),  # Kermany normal: IM-0115-0001
    re.compile(r"^(\d{8})_\d{3}$"),  # NIH ChestX-ray14: 00000001_000 (patient_follow-up)
)
_SKIP_DIRS = ("__MACOSX",)  # macOS zip residue: a shadow tree of '._' resource forks


def patient_from_name(stem: str) -> str | None:
    """The patient a file name carries (Kermany ``person12_bacteria_45`` -> ``person12``)."""
    for pattern in _PATIENT_PATTERNS:
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return None


def sniff_image(path: Path) -> str | None:
    """The suffix to store ``path`` under (.png / .jpg / .jpeg / .dcm), or None if not an image."""
    kind = sniff_file(path)
    if kind is None:
        return None
    suffix = path.suffix.lower()
    if kind == "png":
        return ".png"
    if kind == "jpeg":
        return suffix if suffix in (".jpg", ".jpeg") else ".jpg"
    if kind == "dicom" or suffix in (".dcm", ".dicom"):
        # a .dcm without preamble may still be DICOM (implicit VR): preprocess decides
        return ".dcm"
    return None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_DIRS


def find_class_dirs(root: Path, classes: Mapping[str, int]) -> dict[str, list[Path]]:
    """Folders named like a class at any depth under ``root`` (Kermany: train/NORMAL, test/...)."""
    found: dict[str, list[Path]] = {c: [] for c in classes}
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for d in list(dirs):
            if d in found:
                found[d].append(Path(here) / d)
                dirs.remove(d)  # a class folder's contents are images, not more classes
    return found


def _safe_id(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".") or "image"


def _image_files(folder: Path, skipped: Counter[str], root: Path) -> Iterator[tuple[Path, str]]:
    """(path, suffix) of the images under ``folder``; other files are counted and warned about.

    A symbolic link (file or folder) that leads outside ``root`` refuses the import.
    """
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for d in dirs:
            _refuse_outside(Path(here) / d, root)  # os.walk does not descend into it; still say
        for name in sorted(f for f in files if not f.startswith(".")):  # .DS_Store, ._x: not data
            path = Path(here) / name
            _refuse_outside(path, root)
            suffix = sniff_image(path)
            if suffix is None:
                skipped["non-image"] += 1
                if skipped["non-image"] <= MAX_WARNINGS:
                    log.warning("warning: skipping %s: not a PNG, JPEG or DICOM file", path)
                continue
            yield path, suffix


def _collect(root: Path, class_dirs: dict[str, list[Path]]) -> tuple[list[dict], Counter[str]]:
    """Image files per class, de-duplicated by content; non-images skipped with a warning."""
    items: list[dict] = []
    skipped: Counter[str] = Counter()
    seen: dict[str, dict] = {}
    for cls, folders in class_dirs.items():
        for path, suffix in (x for f in folders for x in _image_files(f, skipped, root)):
            first = seen.setdefault(_sha1(path), {"path": path, "class": cls, "suffix": suffix})
            if first["path"] == path:
                items.append(first)
                continue
            if first["class"] != cls:
                raise SourceError(
                    f"{path} ({cls}) and {first['path']} ({first['class']}) are the same image "
                    "under two classes"
                )
            skipped["duplicate"] += 1  # the Kaggle copy of Kermany holds the tree twice
            if skipped["duplicate"] <= MAX_WARNINGS:
                log.warning("warning: skipping %s: same image as %s", path, first["path"])
    for kind, n in skipped.items():
        log.warning("skipped %d %s file(s) under %s", n, kind, root)
    return items, skipped


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _assign_ids(items: list[dict], root: Path) -> None:
    """Unique, filename-safe image ids: the stem, plus a short hash of the path on collisions."""
    stems = Counter(_safe_id(i["path"].stem).lower() for i in items)
    for item in items:
        stem = _safe_id(item["path"].stem)
        if stems[stem.lower()] > 1:
            rel = item["path"].relative_to(root).as_posix()
            stem = f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        item["id"] = stem
        item["group"] = patient_from_name(item["path"].stem) or stem


def import_folder(raw_dir: Path, path: str | Path | None, classes: Mapping[str, int]) -> dict:
    """Turn a tree of class folders into the Kaggle layout (images copied, labels without boxes).

    Class folders are found at any depth (Kermany has train/, test/ and val/ each holding NORMAL/
    and PNEUMONIA/); the images inside are searched recursively. Files are copied, never linked:
    DVC makes cached files read-only, which through a hard link would change the source.
    """
    if path is None:
        raise SourceError("data.folder.path is not set (a folder with one sub-folder per class)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SourceError(f"data.folder.path: {root} is not a folder")
    class_dirs = find_class_dirs(root, classes)
    missing = [c for c, dirs in class_dirs.items() if not dirs]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) or ["nothing"]
        raise SourceError(
            f"{root}: no folder named {', '.join(missing)} at any depth (data.folder.classes "
            f"lists {', '.join(classes)}; found {', '.join(found)})"
        )
    items, skipped = _collect(root, class_dirs)
    for cls in classes:
        if not any(i["class"] == cls for i in items):
            where = ", ".join(str(d) for d in class_dirs[cls])
            raise SourceError(f"class {cls}: no PNG, JPEG or DICOM image in {where}")
    _assign_ids(items, root)
    with atomic_dir(raw_dir) as tmp:
        images = tmp / TRAIN_IMAGES
        images.mkdir()
        with (
            open(tmp / LABELS_CSV, "w", newline="") as fl,
            open(tmp / CLASS_INFO_CSV, "w", newline="") as fc,
        ):
            wl, wc = csv.writer(fl, lineterminator="\n"), csv.writer(fc, lineterminator="\n")
            wl.writerow([*LABEL_COLUMNS, "groupId"])
            wc.writerow(CLASS_INFO_COLUMNS)
            for item in items:
                shutil.copyfile(item["path"], images / f"{item['id']}{item['suffix']}")
                wl.writerow([item["id"], "", "", "", "", classes[item["class"]], item["group"]])
                wc.writerow([item["id"], item["class"]])
        check_raw(tmp)
    return {
        "source": "folder",
        "from": str(root),
        "n_images": len(items),
        "n_groups": len({i["group"] for i in items}),
        "classes": dict(Counter(i["class"] for i in items)),
        "n_skipped_non_image": skipped["non-image"],
        "n_skipped_duplicate": skipped["duplicate"],
    }
