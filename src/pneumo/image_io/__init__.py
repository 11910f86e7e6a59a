"""Robust image reading: DICOM (any transfer syntax pydicom decodes), PNG and JPEG.

Modules: ``read`` (the entry point and its file checks), ``dicom`` (DICOM pixels to gray),
``pillow`` (PNG / JPEG), ``grayscale`` (the shared uint8 mapping), ``header`` (view, sex and
age without the pixels) and ``errors``.

``read_image`` turns a file into a 2-D ``uint8`` array or raises ``ImageReadError`` with a one-line
reason; it never raises anything else and never decodes an image whose header declares more than
``MAX_PIXELS`` pixels. The grayscale rules, in order:

- 8-bit unsigned MONOCHROME pixels with no modality rescale and no VOI are returned as stored
  (RSNA's files), so the cache holds exactly what the scanner's JPEG decodes to.
- Otherwise the Modality LUT (rescale slope/intercept or LUT sequence) is applied, then the VOI LUT
  or the first window (centre/width), and the VOI output range is mapped onto 0..255.
- Without a VOI, the 0.5th..99.5th percentile range of the (rescaled) values is stretched onto
  0..255: bit depths above 8 rarely use their full range, and the plain min/max of an X-ray is
  usually set by a few burned-in labels or collimator edges, which would wash out the lungs.
- MONOCHROME1 is inverted last (``255 - x``); colour (RGB, YBR, palette) becomes luminance
  (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), which ``read_image_with_notes`` reports in its notes.
"""
