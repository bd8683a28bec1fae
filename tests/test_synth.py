import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from xray.trainer.synth import synthesize


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpeg"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    synthesize(tmp_path / "a", 12, seed=3, image_size=48)
    synthesize(tmp_path / "b", 12, seed=3, image_size=48)
    synthesize(tmp_path / "c", 12, seed=4, image_size=48)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_names_balance_and_patient_split(synth_dir):
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            assert any((synth_dir / split / cls).glob("*.jpeg")), f"{split}/{cls} is empty"
    normal = list(synth_dir.glob("*/NORMAL/*.jpeg"))
    pneumonia = list(synth_dir.glob("*/PNEUMONIA/*.jpeg"))
    assert all(re.fullmatch(r"(NORMAL2-)?IM-\d{4}-\d{4}\.jpeg", p.name) for p in normal)
    assert all(re.fullmatch(r"person\d+_(bacteria|virus)_\d+\.jpeg", p.name) for p in pneumonia)
    ratio = len(pneumonia) / len(normal)
    assert 2.0 <= ratio <= 4.5, ratio  # about 3:1 like Kaggle's train split

    def patient(name):
        return re.match(r"((?:NORMAL2-)?IM-\d+|person\d+)", name).group(1)

    train_patients = {patient(p.name) for p in synth_dir.glob("train/*/*.jpeg")}
    test_patients = {patient(p.name) for p in synth_dir.glob("test/*/*.jpeg")}
    assert not train_patients & test_patients
    per_patient = {}
    for p in synth_dir.rglob("*.jpeg"):
        per_patient[patient(p.name)] = per_patient.get(patient(p.name), 0) + 1
    assert max(per_patient.values()) > 1, "some patients should have several images"


def test_images_are_grayscale_and_pneumonia_is_brighter_in_the_lungs(tmp_path):
    synth_dir = tmp_path / "easy"
    synthesize(synth_dir, 40, seed=1, image_size=64, difficulty=0.0)  # the plain signal, before difficulty

    def lung_mean(path):
        image = Image.open(path)
        assert image.mode == "L"
        pixels = np.asarray(image.resize((64, 64)), dtype=np.float32)
        return pixels[16:44, 8:56].mean()

    normal = np.mean([lung_mean(p) for p in synth_dir.glob("*/NORMAL/*.jpeg")])
    pneumonia = np.mean([lung_mean(p) for p in synth_dir.glob("*/PNEUMONIA/*.jpeg")])
    assert pneumonia > normal + 1.0


def test_too_few_patients_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="num_patients 3 is too few"):
        synthesize(tmp_path, 3)


def test_difficulty_is_deterministic_validated_and_changes_the_films(tmp_path):
    import numpy as np
    from PIL import Image

    synthesize(tmp_path / "easy", 12, seed=3, image_size=64, difficulty=0.0)
    synthesize(tmp_path / "hard", 12, seed=3, image_size=64, difficulty=1.0)
    synthesize(tmp_path / "hard2", 12, seed=3, image_size=64, difficulty=1.0)
    files = sorted(p.relative_to(tmp_path / "easy") for p in (tmp_path / "easy").rglob("*.jpeg"))
    assert files == sorted(p.relative_to(tmp_path / "hard") for p in (tmp_path / "hard").rglob("*.jpeg"))
    assert all((tmp_path / "hard" / f).read_bytes() == (tmp_path / "hard2" / f).read_bytes() for f in files)
    differ = [f for f in files if not np.array_equal(np.asarray(Image.open(tmp_path / "easy" / f)),
                                                     np.asarray(Image.open(tmp_path / "hard" / f)))]
    assert len(differ) == len(files)
    with pytest.raises(ValueError, match="difficulty 1.5 must be between 0"):
        synthesize(tmp_path / "x", 12, difficulty=1.5)
