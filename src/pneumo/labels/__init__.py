"""RSNA-format labels -> one validated row per image -> stratified, group-aware data split.

Modules, in the split stage's order: ``raw_csv`` (the two label CSVs, validated), ``table``
(one row per image: dedupe, images, headers, age flags), ``images`` and ``headers`` (its file
and DICOM-header parts), ``split`` (the stratified group split), ``summary`` (metrics/split.json)
and ``split_files`` (data/split/<split>.csv); ``errors`` holds ``LabelError``.

The raw layout is the Kaggle archive's (see the data contract): a labels CSV with one row per box,
a detailed-class CSV row-aligned with it, and one image file per patientId. Every check here raises
``LabelError`` with a message that names the file, the line or the patient and the reason.
"""
