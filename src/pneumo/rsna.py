"""Names in the RSNA Pneumonia Detection Challenge archive: the data/raw/ layout of every source."""

from __future__ import annotations

TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
# one row per box (a NaN box for negatives); the class CSV is row-aligned with it
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_INFO_COLUMNS = ("patientId", "class")
