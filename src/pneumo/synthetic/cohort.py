"""Who the synthetic patients are: id, view, target, class, sex and age with RSNA's mix."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from pneumo import exactmath as em

CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")

# RSNA's figures (RSNA.md): view mix and positive rate per view, sex mix, boxes per positive.
P_AP = 0.46
P_POS = {"AP": 0.383, "PA": 0.093}
P_MALE = {1: 0.585, 0: 0.566}  # gives M 57 % overall, 23.1 % / 21.7 % positive for M / F
P_NOT_NORMAL = {"AP": 0.70, "PA": 0.50}  # of negatives: 57 % overall, as RSNA's 11,821 / 20,672
BOX_COUNTS = (1, 2, 3, 4)
BOX_COUNT_P = np.array([2614, 3266, 119, 13]) / 6012
# Age quantile function through RSNA's median 49 and quartiles 34 / 59 (range 1 to 100).
AGE_Q = (0.0, 0.02, 0.08, 0.25, 0.5, 0.75, 0.92, 0.99, 1.0)
AGE_V = (1.0, 6.0, 18.0, 34.0, 49.0, 59.0, 71.0, 85.0, 100.0)
# RSNA has five impossible ages in 26,684; we place one every IMPOSSIBLE_EVERY patients (always at
# the same indices, so a dataset of a few hundred already has one for validation to flag).
IMPOSSIBLE_EVERY = 750
IMPOSSIBLE_OFFSET = 11
IMPOSSIBLE_AGES = (148, 150, 151, 153, 155)


@dataclass(frozen=True)
class Patient:
    """What the labels and the DICOM header say about one synthetic patient."""

    index: int
    patient_id: str
    view: str  # "PA" / "AP"
    sex: str  # "M" / "F"
    age: int
    cls: str  # one of CLASSES
    target: int
    n_boxes: int  # 0 for negatives


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of patient ``index``: the same whatever worker or chunk draws it."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sample_patient(rng: np.random.Generator, index: int) -> Patient:
    """Draw id, view, target, class, sex and age with RSNA's mix and confounders."""
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < P_AP else "PA"
    target = int(rng.random() < P_POS[view])
    sex = "M" if rng.random() < P_MALE[target] else "F"
    age = int(round(float(em.interp(rng.random(), AGE_Q, AGE_V))))
    if index % IMPOSSIBLE_EVERY == IMPOSSIBLE_OFFSET:
        age = int(rng.choice(IMPOSSIBLE_AGES))
    if target:
        cls = CLASSES[2]
        n_boxes = int(rng.choice(BOX_COUNTS, p=BOX_COUNT_P))
    else:
        cls = CLASSES[1] if rng.random() < P_NOT_NORMAL[view] else CLASSES[0]
        n_boxes = 0
    return Patient(index, patient_id, view, sex, age, cls, target, n_boxes)
