"""The synthetic dataset on disk in the RSNA archive layout: JPEG DICOMs and the label CSVs,
drawn in chunks over worker processes."""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumo.atomic import atomic_dir, atomic_path
from pneumo.rsna import CLASS_INFO_COLUMNS, CLASS_INFO_CSV, LABEL_COLUMNS, LABELS_CSV, TRAIN_IMAGES
from pneumo.synthetic.cohort import Patient, patient_rng
from pneumo.synthetic.render import synthesize
from pneumo.workers import n_workers, process_pool

log = logging.getLogger(__name__)

JPEG_QUALITY = 92
PIXEL_SPACINGS = (0.139, 0.143, 0.143, 0.143, 0.143, 0.168, 0.171, 0.194)  # mm at 1024 px


def to_dicom(image: np.ndarray, patient: Patient, pixel_spacing: float) -> Dataset:
    """A Secondary Capture dataset with JPEG Baseline pixel data, as in the RSNA archive."""
    buf = io.BytesIO()
    Image.fromarray(image, "L").save(buf, "JPEG", quality=JPEG_QUALITY)
    pid = patient.patient_id
    uids = [generate_uid(entropy_srcs=[pid, part]) for part in ("study", "series", "sop")]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uids[2]
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uids[2]
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {patient.view}"
    ds.PatientName = pid
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = patient.sex
    # RSNA's ages are bare numbers, invalid for VR AS: set without pydicom's validation (which
    # would warn and log once per file)
    ds[0x00101010] = DataElement(0x00101010, "AS", str(patient.age), validation_mode=config.IGNORE)
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = patient.view
    ds.StudyInstanceUID = uids[0]
    ds.SeriesInstanceUID = uids[1]
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def write_dicom(ds: Dataset, path: Path) -> None:
    """Save a dataset in the DICOM file format (with preamble and file meta)."""
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_patients(seed: int, start: int, stop: int, size: int, out_dir: str) -> list[dict]:
    """Draw and write patients [start, stop); return their label rows (worker entry point)."""
    rows = []
    for index in range(start, stop):
        patient, rendered = synthesize(seed, index, size)
        rng = patient_rng(seed ^ 0x5EED, index)  # header-only draws, independent of drawing
        spacing = float(rng.choice(PIXEL_SPACINGS)) * 1024 / size
        path = Path(out_dir) / f"{patient.patient_id}.dcm"
        write_dicom(to_dicom(rendered.image, patient, spacing), path)
        rows.append(
            {
                "patientId": patient.patient_id,
                "target": patient.target,
                "class": patient.cls,
                "view": patient.view,
                "sex": patient.sex,
                "age": patient.age,
                "boxes": rendered.boxes.tolist(),
            }
        )
    return rows


def _draw_all(seed: int, n: int, size: int, out_dir: Path, workers: int) -> list[dict]:
    """Draw and write every patient, in chunks over ``workers`` processes; rows in index order."""
    workers = min(n_workers(workers), n)
    step = max(1, min(32, math.ceil(n / (4 * workers))))
    chunks = [(s, min(s + step, n)) for s in range(0, n, step)]
    rows: list[dict] = []
    every = max(n // 10, 1)

    def collect(part: list[dict]) -> None:
        before = len(rows)
        rows.extend(part)
        if len(rows) // every > before // every or len(rows) == n:
            log.info("synthetic: %d / %d patients", len(rows), n)

    if workers <= 1:
        for s, e in chunks:
            collect(write_patients(seed, s, e, size, str(out_dir)))
        return rows
    # spawn, not fork: the parent may hold torch/OpenMP threads that a fork would copy badly
    # (callers' scripts therefore need the usual `if __name__ == "__main__":` guard)
    ctx = multiprocessing.get_context("spawn")
    with process_pool(workers, ctx) as pool:
        futures = [pool.submit(write_patients, seed, s, e, size, str(out_dir)) for s, e in chunks]
        for fut in futures:
            collect(fut.result())
    return rows


def _fmt(v: float) -> str:
    return f"{float(v):.1f}"  # the Kaggle CSV writes 264.0


def write_labels(rows: list[dict], out_dir: Path) -> None:
    """Write the labels and detailed-class CSVs (one row per box, row-aligned) via temp names."""
    labels, classes = out_dir / LABELS_CSV, out_dir / CLASS_INFO_CSV
    with (
        atomic_path(labels) as labels_tmp,
        atomic_path(classes) as classes_tmp,
        open(labels_tmp, "w", newline="") as fl,
        open(classes_tmp, "w", newline="") as fc,
    ):
        wl, wc = csv.writer(fl, lineterminator="\n"), csv.writer(fc, lineterminator="\n")
        wl.writerow(LABEL_COLUMNS)
        wc.writerow(CLASS_INFO_COLUMNS)
        for r in rows:
            for box in r["boxes"] or [None]:
                coords = [_fmt(v) for v in box] if box else ["", "", "", ""]
                wl.writerow([r["patientId"], *coords, r["target"]])
                wc.writerow([r["patientId"], r["class"]])


def generate(out_dir: Path, n_patients: int, image_size: int, seed: int, workers: int) -> dict:
    """Write ``n_patients`` synthetic patients in the RSNA archive layout into ``out_dir``.

    ``out_dir`` is built in a sibling temporary folder and swapped in when complete (replacing a
    previous one). ``workers`` = 0 uses every core. Returns a summary of what was written.
    """
    # params.py ranges the stage's value, but a library caller's 0 would end in a division by
    # zero and a negative count in an empty dataset reported as written
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        images = tmp / TRAIN_IMAGES
        images.mkdir()
        rows = _draw_all(seed, n_patients, image_size, images, workers)
        write_labels(rows, tmp)
    seconds = time.perf_counter() - t0
    return {
        "n_patients": n_patients,
        "n_positive": sum(r["target"] for r in rows),
        "n_boxes": sum(len(r["boxes"]) for r in rows),
        "classes": dict(Counter(r["class"] for r in rows)),
        "views": dict(Counter(r["view"] for r in rows)),
        "image_size": image_size,
        "seed": seed,
        "seconds": round(seconds, 2),
        "images_per_s": round(n_patients / seconds, 1),
    }
