"""The ``folder`` source: one sub-folder per class -> the Kaggle layout, labels without boxes."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from pneumo.atomic import atomic_dir
from pneumo.progress import track
from pneumo.rsna import (
    CLASS_INFO_COLUMNS,
    CLASS_INFO_CSV,
    LABEL_COLUMNS,
    LABELS_CSV,
    TRAIN_IMAGES,
)
from pneumo.sniff import DICOM_SUFFIXES, sniff_file
from pneumo.sources.layout import SourceError, check_raw, refuse_outside

log = logging.getLogger(__name__)

MAX_WARNINGS = 20  # per kind of skipped file; the count is always reported

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
    if kind == "dicom" or suffix in DICOM_SUFFIXES:
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
            refuse_outside(Path(here) / d, root)  # os.walk does not descend into it; still say
        for name in sorted(f for f in files if not f.startswith(".")):  # .DS_Store, ._x: not data
            path = Path(here) / name
            refuse_outside(path, root)
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
        found = (x for f in folders for x in _image_files(f, skipped, root))
        # hashing reads every file: as long as the copy, and the total is not known yet
        for path, suffix in track(found, f"download: hash {cls}", "images"):
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
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


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
            for item in track(items, "download: copy", "images"):
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
