"""Names in the RSNA Pneumonia Detection Challenge archive: the data/raw/ layout of every source."""

from __future__ import annotations

import re

TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
# one row per box (a NaN box for negatives); the class CSV is row-aligned with it
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_INFO_COLUMNS = ("patientId", "class")

# The detailed classes (stage_2_detailed_class_info.csv), with short JSON keys: a dotted path with
# "No Lung Opacity / Not Normal" in it would be unreadable.
CLASS_KEYS = {
    "Normal": "normal",
    "Lung Opacity": "lung_opacity",
    "No Lung Opacity / Not Normal": "not_normal",
}


def class_key(name: str) -> str:
    """A short, stable metrics key for a class ("No Lung Opacity / Not Normal" -> not_normal)."""
    if name in CLASS_KEYS:
        return CLASS_KEYS[name]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unnamed"
