"""Data sources -> data/raw/ in the Kaggle archive layout.

- ``rsna``: the Kaggle competition archive, downloaded with the official client or taken from a
  local copy of the zip or of its unpacked folder; extracted safely, keeping only what the
  pipeline reads.
- ``folder``: a tree with one sub-folder per class (the Kermany / keremberke layout), turned into
  the same layout with a labels CSV without boxes and a ``groupId`` column (the patient, when the
  file names carry one).
- ``synthetic`` lives in :mod:`pneumo.synthetic`.

Modules: ``rsna_source`` (local copy or download), ``kaggle_download`` (the Kaggle client and its
credentials), ``archive`` (safe extraction and folder copy, with the zip-bomb limits), ``folder``
and ``layout`` (``SourceError``, the layout check and the symbolic-link rule).

Every source builds data/raw/ in a sibling temporary folder and swaps it in only when complete.
"""
