"""The ``rsna`` source: a local copy of the Kaggle archive, or the download, -> data/raw."""

from __future__ import annotations

import zipfile
from pathlib import Path

from pneumo.atomic import atomic_dir
from pneumo.sources.archive import copy_rsna_folder, extract_rsna_zip
from pneumo.sources.kaggle_download import download_competition
from pneumo.sources.layout import SourceError, check_raw


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
