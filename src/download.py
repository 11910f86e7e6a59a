"""Download stage: fill data/raw/ (Kaggle archive layout) from ``data.source``."""

from __future__ import annotations

import json
import logging
import sys

from pneumo import synthetic
from pneumo.layout import DOWNLOADS, RAW
from pneumo.params import load_or_exit
from pneumo.sources.folder import import_folder
from pneumo.sources.layout import SourceError
from pneumo.sources.rsna_source import fetch_rsna


def main() -> None:
    """Build data/raw/ from the synthetic generator, the RSNA archive or a class-folder tree."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = load_or_exit("data")
    try:
        if p.source == "synthetic":
            s = p.synthetic
            summary = synthetic.generate(RAW, s.n_patients, s.image_size, s.seed, s.workers)
        elif p.source == "rsna":
            r = p.rsna
            summary = fetch_rsna(
                RAW, r.archive, r.competition, r.keep_test_images, download_dir=DOWNLOADS
            )
        else:
            summary = import_folder(RAW, p.folder.path, p.folder.classes)
    except SourceError as e:
        sys.exit(f"download: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
