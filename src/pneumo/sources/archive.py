"""The RSNA archive (zip or unpacked folder) -> what the pipeline reads, extracted safely."""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

from pneumo.progress import track
from pneumo.rsna import (
    CLASS_INFO_CSV,
    LABELS_CSV,
    TEST_IMAGES,
    TRAIN_IMAGES,
)
from pneumo.sources.layout import SourceError, refuse_outside

# Zip bombs: RSNA's archive is 3.9 GB of JPEG DICOMs stored at a ratio near 1, and CSVs that
# deflate about 5-fold. A member larger than RATIO_FLOOR that expands more than MAX_RATIO-fold,
# or more than MAX_EXTRACT_BYTES in all (or more than the disk has free), refuses the archive.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
MAX_EXTRACT_BYTES = 32 << 30


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
        for info, rel in track(todo, "download: extract", "files"):
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
        refuse_outside(root / name, src)
        shutil.copyfile(root / name, dest / name)
        kept["csv"] += 1
    for folder in (TRAIN_IMAGES, TEST_IMAGES) if keep_test_images else (TRAIN_IMAGES,):
        if not (root / folder).is_dir():
            continue
        (dest / folder).mkdir()
        for path in sorted((root / folder).iterdir()):
            if path.is_file():  # a link is read only when it stays inside the folder
                refuse_outside(path, src)
                shutil.copyfile(path, dest / folder / path.name)
                kept[folder] += 1
    return _rsna_counts(kept)


def _rsna_counts(kept: Counter[str]) -> dict:
    return {
        "n_train_images": kept[TRAIN_IMAGES],
        "n_test_images": kept[TEST_IMAGES],
        "n_skipped_entries": kept["skipped"],
    }
