"""Split stage: data/raw -> one validated row per image -> data/split/{train,val,test}.csv."""

from __future__ import annotations

import logging
import sys

from pneumo.atomic import write_json
from pneumo.labels.errors import LabelError
from pneumo.labels.split import split_patients
from pneumo.labels.split_files import write_splits
from pneumo.labels.summary import summarize
from pneumo.labels.table import build_table
from pneumo.layout import RAW, SPLIT, SPLIT_SUMMARY
from pneumo.params import load_or_exit
from pneumo.split_schema import SPLITS


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="split: %(levelname)s %(message)s")
    p = load_or_exit("split")
    try:
        table, flags = build_table(RAW, max_age=p.max_age)
        splits = split_patients(
            table, val_fraction=p.val_fraction, test_fraction=p.test_fraction, seed=p.seed
        )
    except LabelError as e:
        # the message already names the file, line or key: a traceback would only bury it
        sys.exit(f"split: error: {e}")
    write_splits(splits, SPLIT)
    summary = summarize(splits, flags)
    write_json(SPLIT_SUMMARY, summary)
    for name in SPLITS:
        s = summary[name]
        logging.info(
            "%-5s %6s images, %5s positive (%.1f %%), %s groups",
            name,
            f"{s['n']:,}",
            f"{s['positive']:,}",
            100 * s["prevalence"],
            f"{s['groups']:,}",
        )
    logging.info("wrote %s and %s", SPLIT, SPLIT_SUMMARY)


if __name__ == "__main__":
    main()
