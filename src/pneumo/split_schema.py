"""The split CSVs' schema (data/split/<split>.csv): the split names and the columns, in order."""

from __future__ import annotations

SPLITS = ("train", "val", "test")
# what the split stage writes (pneumo.labels.split_files), in this order
SPLIT_COLUMNS = (
    "patientId",
    "groupId",
    "image",
    "target",
    "class",
    "view",
    "sex",
    "age",
    "age_flag",
    "boxes",
)
# what the preprocess stage needs: every column but age_flag, which it does not read
PREPROCESS_COLUMNS = tuple(c for c in SPLIT_COLUMNS if c != "age_flag")
