"""Who is which patient, and which patient goes to which split: the rules that keep validation honest.

Kaggle's chest_xray has several films per patient. A patient whose films land in both train and val makes the
validation score a memory test, so validation is carved from the train pool by whole patients, stratified by
class. The test folder is taken as given; a patient id it shares with the pool is reported, not moved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from xray.data.schema import CLASS_NAMES

# Kaggle names: IM-0117-0001.jpeg, NORMAL2-IM-0381-0001.jpeg, person12_bacteria_3.jpeg.
DEFAULT_PATIENT_PATTERN = r"^((?:NORMAL2-)?IM-\d+|person\d+)"


class Film(Protocol):
    patient_id: str
    label: int
    source_split: str  # train / val / test, as found on disk


F = TypeVar("F", bound=Film)


def patient_id(name: str, pattern: re.Pattern[str]) -> str:
    """The pattern's first group where it has one, else its whole match; a name it does not match is its own
    patient (the file name without its suffix)."""
    match = pattern.search(name)
    if match is None:
        return Path(name).stem
    return match.group(1) if match.groups() else match.group(0)


def split_by_patient(films: list[F], val_fraction: float, seed: int) -> dict[str, list[F]]:
    """Kaggle's test folder as given; train and val from the rest (Kaggle's own val/ included), whole patients
    to val, class by class, until val holds about val_fraction of that class's films."""
    splits: dict[str, list[F]] = {"train": [], "val": [], "test": [f for f in films if f.source_split == "test"]}
    by_patient: dict[str, list[F]] = {}
    for film in films:
        if film.source_split != "test":
            by_patient.setdefault(film.patient_id, []).append(film)
    rng = np.random.default_rng(seed)
    for label in range(len(CLASS_NAMES)):
        # A patient belongs to the class most of their films have.
        patients = sorted(p for p, own in by_patient.items() if round(np.mean([f.label for f in own])) == label)
        rng.shuffle(patients)
        target = val_fraction * sum(len(by_patient[p]) for p in patients)
        taken = 0
        for patient in patients:
            goes_to_val = taken < target
            if goes_to_val:
                taken += len(by_patient[patient])
            splits["val" if goes_to_val else "train"].extend(by_patient[patient])
    return splits


def leaked_test_patients(splits: dict[str, list[F]]) -> list[str]:
    """Patient ids of the test split that also appear in train or val (sorted): a leak the manifest reports."""
    pool = {f.patient_id for f in splits["train"] + splits["val"]}
    return sorted({f.patient_id for f in splits["test"]} & pool)
