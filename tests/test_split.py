"""The patient and split rules (data/split.py), in-process and fast: `make mutate` runs these against each mutant.
The same rules through `xray shards` are tested in test_convert.py."""

import dataclasses
import re

import pytest

from xray.data.split import DEFAULT_PATIENT_PATTERN, leaked_test_patients, patient_id, split_by_patient


@dataclasses.dataclass
class Film:
    patient_id: str
    label: int
    source_split: str = "train"


KAGGLE = re.compile(DEFAULT_PATIENT_PATTERN)


@pytest.mark.parametrize("name, patient", [
    ("IM-0117-0001.jpeg", "IM-0117"),
    ("NORMAL2-IM-0381-0002.jpeg", "NORMAL2-IM-0381"),  # not IM-0381, another patient
    ("person12_bacteria_3.jpeg", "person12"),
    ("person1_virus_7.jpeg", "person1"),  # not a prefix of person12
    ("scan-42.png", "scan-42"),  # no match: the file is its own patient, without its suffix
    ("xIM-0117-0001.jpeg", "xIM-0117-0001"),  # the pattern is anchored at the start of the name
])
def test_kaggle_names_and_unmatched_names(name, patient):
    assert patient_id(name, KAGGLE) == patient


def test_a_pattern_without_a_group_uses_its_whole_match():
    assert patient_id("P0042_scan3.dcm", re.compile(r"P\d+")) == "P0042"
    assert patient_id("P0042_scan3.dcm", re.compile(r"(P\d+)_scan")) == "P0042"


def _pool(patients_per_class=(10, 30), films_each=4):
    films = []
    for label, count in enumerate(patients_per_class):
        for p in range(count):
            films += [Film(f"c{label}-p{p}", label) for _ in range(films_each)]
    return films


def test_whole_patients_go_to_val_about_the_fraction_of_each_class():
    films = _pool()
    splits = split_by_patient(films, val_fraction=0.25, seed=7)
    assert sorted(map(id, splits["train"] + splits["val"])) == sorted(map(id, films))  # each film once
    train, val = ({f.patient_id for f in splits[s]} for s in ("train", "val"))
    assert not train & val
    for label, total in ((0, 40), (1, 120)):
        in_val = sum(1 for f in splits["val"] if f.label == label)
        # Whole patients until the target is reached: at least the fraction, at most one patient (4 films) more.
        assert total * 0.25 <= in_val < total * 0.25 + 4, (label, in_val)


def test_patients_go_to_val_until_the_target_is_reached_not_beyond():
    # Ten one-film patients per class and a fraction of 0.2: the target is 2 films, so exactly 2 patients each.
    films = [Film(f"c{label}-p{p}", label) for label in (0, 1) for p in range(10)]
    val = split_by_patient(films, val_fraction=0.2, seed=0)["val"]
    assert sorted(f.label for f in val) == [0, 0, 1, 1]


def test_no_val_fraction_means_no_val_split():
    splits = split_by_patient(_pool(), val_fraction=0.0, seed=0)
    assert splits["val"] == [] and len(splits["train"]) == 160


def test_the_seed_decides_which_patients_and_the_same_seed_gives_the_same_split():
    def val_patients(seed):
        return sorted({f.patient_id for f in split_by_patient(_pool(), 0.25, seed)["val"]})

    assert val_patients(3) == val_patients(3)
    assert val_patients(3) != val_patients(4)


def test_the_order_of_the_input_does_not_change_the_split():
    films = _pool()
    forward = {f.patient_id for f in split_by_patient(films, 0.25, 5)["val"]}
    backward = {f.patient_id for f in split_by_patient(list(reversed(films)), 0.25, 5)["val"]}
    assert forward == backward


def test_a_patient_belongs_to_the_class_most_of_their_films_have():
    # p0 has three pneumonia films and one normal: counted with pneumonia, so a pneumonia-only val takes p0.
    films = [Film("p0", 1), Film("p0", 1), Film("p0", 1), Film("p0", 0)] + [Film("n", 0) for _ in range(4)]
    splits = split_by_patient(films, val_fraction=0.5, seed=0)
    assert {f.patient_id for f in splits["val"]} == {"p0", "n"}  # one patient per class
    splits = split_by_patient(films, val_fraction=0.01, seed=0)
    assert sum(1 for f in splits["val"] if f.patient_id == "p0") in (0, 4)  # never split across train and val


def test_kaggle_val_joins_the_pool_and_test_stays_as_given():
    films = _pool() + [Film("kv", 0, "val"), Film("t1", 1, "test"), Film("c1-p0", 1, "test")]
    splits = split_by_patient(films, val_fraction=0.25, seed=1)
    assert [f.patient_id for f in splits["test"]] == ["t1", "c1-p0"]
    assert any(f.patient_id == "kv" for f in splits["train"] + splits["val"])
    assert all(f.source_split != "test" for f in splits["train"] + splits["val"])


def test_test_patients_found_in_train_or_val_are_reported_sorted():
    splits = {"train": [Film("b", 0), Film("a", 0)], "val": [Film("v", 1)],
              "test": [Film("v", 1, "test"), Film("a", 0, "test"), Film("a", 0, "test"), Film("t", 1, "test")]}
    assert leaked_test_patients(splits) == ["a", "v"]
    assert leaked_test_patients({"train": [Film("x", 0)], "val": [], "test": [Film("y", 0, "test")]}) == []
