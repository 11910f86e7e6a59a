"""The synthetic RSNA-format dataset: chest-radiograph-like DICOMs, labels and detailed classes.

Each patient is drawn from its own random stream (``SeedSequence(seed, spawn_key=(index,))``), so
the data depend only on the seed, the image size and the patient's index: not on the number of
workers, the chunking or the number of patients generated after it. The images are drawn with
numpy at a working resolution (at most ``render.WORK_SIZE``), resized to the requested size,
given film grain, JPEG-encoded with Pillow and wrapped in a Secondary Capture DICOM exactly as
the RSNA archive's files are.

What the task looks like:
- ``Lung Opacity`` (Target 1): one to four soft, patchy, irregular opacities inside the lung fields;
  each box is the tight bounding box of what was drawn.
- ``No Lung Opacity / Not Normal`` (Target 0): nodules and masses (small, sharp, homogeneous),
  tubes, lines and devices, an enlarged heart, blunted costophrenic angles, a raised hemidiaphragm.
- The view is a confounder as in RSNA (AP films are far more often positive) and AP films look
  different (magnified heart, shallower inspiration, lower contrast, more noise and devices).
- Global image statistics carry no signal beyond the view: like a CR reader's histogram analysis,
  the display curve maps each film's histogram onto that of the same chest drawn without its
  findings, so opacities change local contrast only (a logistic regression on mean, std and a
  16-bin histogram scores AUROC about 0.6, all of it from the view; see bench/synthetic.py).

Box sizes follow RSNA's (median about 217 x 298 px at 1024), capped by the width of one lung field,
since every box lies inside a lung.

The modules, in drawing order: ``cohort`` (who the patients are), ``anatomy`` (the normal chest),
``findings`` and ``devices`` (what is drawn on it), ``render`` (one radiograph) and ``files`` (the
DICOMs and CSVs on disk).
"""

from __future__ import annotations

from pneumo.synthetic.files import generate

__all__ = ["generate"]
