"""Stage preprocess: data/raw + data/split -> data/processed (arrays, index, stats, rejects)."""

from __future__ import annotations

import sys
from pathlib import Path

from pneumo.params import load_or_exit
from pneumo.preprocessing import PreprocessError, build_cache, print_summary

RAW, SPLIT, OUT = Path("data/raw"), Path("data/split"), Path("data/processed")


def main() -> None:
    p = load_or_exit("preprocess")
    try:
        summary = build_cache(
            RAW,
            SPLIT,
            OUT,
            image_size=p.image_size,
            resize_mode=p.resize_mode,
            max_rejected_fraction=p.max_rejected_fraction,
            workers=p.workers,
            chunk_size=p.chunk_size,
            file_timeout_s=p.file_timeout_s,
        )
    except PreprocessError as e:
        sys.exit(f"preprocess: {e}")
    print_summary(summary, OUT)


if __name__ == "__main__":
    main()
