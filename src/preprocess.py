"""Stage preprocess: data/raw + data/split -> data/processed (arrays, index, stats, rejects)."""

from __future__ import annotations

import sys

from pneumo.layout import PROCESSED, RAW, SPLIT
from pneumo.params import kwargs_for, load_or_exit
from pneumo.preprocessing import PreprocessError, build_cache, print_summary


def main() -> None:
    p = load_or_exit("preprocess")
    try:
        summary = build_cache(RAW, SPLIT, PROCESSED, **kwargs_for(build_cache, p))
    except PreprocessError as e:
        sys.exit(f"preprocess: {e}")
    print_summary(summary, PROCESSED)


if __name__ == "__main__":
    main()
