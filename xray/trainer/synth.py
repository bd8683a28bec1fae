"""Synthetic chest X-ray-like images in the Kaggle "chest_xray" folder layout.

    xray synth --out /tmp/synth --num-patients 40 --seed 1

NOT medical data. Each image is a drawn caricature of a frontal chest film: a body outline, two dark
lung fields, ribs, spine and heart shadow, film grain. Pneumonia adds patchy opacities inside the
lung fields (one dense lobar patch for "bacteria", several faint scattered ones for "virus"). The
signal is there for a CNN to learn, so the demo and the tests exercise the whole pipeline without the
real data set, which cannot be downloaded here.

Layout and names follow Kaggle's set so that ``xray shards`` reads both the same way:

    OUT/train/NORMAL/IM-0003-0001.jpeg          OUT/train/PNEUMONIA/person7_bacteria_12.jpeg
    OUT/train/NORMAL/NORMAL2-IM-0011-0002.jpeg  OUT/train/PNEUMONIA/person9_virus_15.jpeg
    OUT/test/...

About 3 pneumonia patients to 1 normal (Kaggle's train split is 3875:1341 images), 1-3 images per
patient, and no patient in both train and test. The same seed gives the same bytes.

``difficulty`` (0 to 1) makes the task harder in two ways. OCCULT_RATE x difficulty of the pneumonia
films show no opacity at all (radiographically occult pneumonia: the label says pneumonia, the film
does not), which caps the AUC any model can reach. Above VISUAL_START the films themselves get harder
too: fainter and fewer opacities (some nearly invisible), benign densities on some normal films, wider
exposure, more noise, patients shifted and rotated, side markers and burned-in text. 0 is the easy
caricature.

Calibration, measured with the demo preset (from scratch at 64 px, 2 workers, 240 patients, a validation
fifth of the training patients): the default 0.5 (15% of pneumonia films occult, no visual degradation)
gave test AUC 0.884 [95% CI 0.799, 0.948] (seed 1) and 0.860 [0.769, 0.935] (seed 3) with 15 epochs and
patience 10, inside the 0.85-0.97 the demo is meant to land in: high enough to show it learns, low enough
for the tuner, the export gate and the 1-vs-2-worker comparison to see differences. On the way: 20% occult
gave 0.880 and 0.946 (10 epochs, patience 4; seeds 1, 2), 0.572 when a run stopped at epoch 7 before taking
off, and 0.866 / 0.824 with 15 epochs (seeds 1, 3). Visual degradation is what the from-scratch demo model
cannot cope with: under the earlier scale (visual difficulty = difficulty, 10 epochs) test AUC was 0.1 ->
0.689 (a 44-image validation split) and 0.998 (an 88-image one), 0.15 -> 0.462, 0.3 -> 0.636, 0.6 ->
0.473, and the 20%-occult set with visual 0.1 gave 0.919 once and did not learn (0.5-0.66) three times.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from xray.data.schema import CLASS_NAMES
from xray.data.errors import SettingError

PNEUMONIA_FRACTION = 0.75
TEST_FRACTION = 0.15
MAX_IMAGES_PER_PATIENT = 3
DEFAULT_DIFFICULTY = 0.5
MARKER_RATE = 1.0  # the share of films with a side marker and burned-in text is the visual difficulty itself
# OCCULT_RATE * difficulty of the pneumonia films show no opacity at all; the film's own degradations (exposure,
# noise, positioning, fainter opacities, markers) start above VISUAL_START and reach VISUAL_MAX at 1. Visual
# difficulty above ~0.1 often stops the demo's from-scratch model from learning within 10 epochs (measured,
# see above), while occult cases cap the reachable AUC without slowing the learning.
OCCULT_RATE = 0.3
VISUAL_START = 0.5
VISUAL_MAX = 0.6


def visual_difficulty(difficulty: float) -> float:
    return max(0.0, difficulty - VISUAL_START) / (1 - VISUAL_START) * VISUAL_MAX


@dataclasses.dataclass(frozen=True)
class Patient:
    number: int
    label: int  # 0 NORMAL, 1 PNEUMONIA
    kind: str  # "normal", "bacteria" or "virus"
    split: str  # "train" or "test"
    num_images: int
    legacy_normal: bool  # Kaggle has both IM-xxxx and NORMAL2-IM-xxxx normal names


@dataclasses.dataclass(frozen=True)
class SynthSummary:
    out: str
    counts: dict  # {split: {class_name: images}}
    patients: dict  # {split: {class_name: patients}}

    @property
    def num_images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())


def plan_patients(num_patients: int, rng: np.random.Generator) -> list[Patient]:
    """Decides class, split and image count of every patient (no pixels yet)."""
    if num_patients < 8:
        raise SettingError("num_patients", num_patients, " is too few: need at least 8 so that train and test both get "
                           "patients of both classes")
    num_pneumonia = round(num_patients * PNEUMONIA_FRACTION)
    labels = np.array([1] * num_pneumonia + [0] * (num_patients - num_pneumonia))
    rng.shuffle(labels)
    patients = []
    for label in (0, 1):
        numbers = np.flatnonzero(labels == label)
        num_test = max(1, math.ceil(len(numbers) * TEST_FRACTION))
        test_numbers = set(rng.choice(numbers, size=num_test, replace=False).tolist())
        for number in numbers.tolist():
            kind = "normal" if label == 0 else ("bacteria" if rng.random() < 0.65 else "virus")
            patients.append(
                Patient(
                    number=number + 1,
                    label=label,
                    kind=kind,
                    split="test" if number in test_numbers else "train",
                    num_images=int(rng.integers(1, MAX_IMAGES_PER_PATIENT + 1)),
                    legacy_normal=bool(rng.random() < 0.3),
                )
            )
    return sorted(patients, key=lambda p: p.number)


def _ellipse(yy, xx, cy, cx, ry, rx, softness=0.08):
    """1 inside the ellipse, 0 outside, with a soft edge."""
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - r) / softness, 0.0, 1.0)


def _blob_field(yy, xx, rng, centers, scale, texture):
    field = np.zeros_like(yy)
    for cy, cx in centers:
        field += np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * scale**2)))
    return np.clip(field, 0, 1) * texture


def _markers(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A side marker (L or R) and a line of burned-in text, as on real films; the same for both classes."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    width, height = image.size
    box = max(4, width // 16)
    x = int(rng.uniform(0.03, 0.15) * width) if rng.random() < 0.5 else int(rng.uniform(0.8, 0.9) * width)
    y = int(rng.uniform(0.03, 0.12) * height)
    draw.rectangle([x, y, x + box, y + box], fill=int(rng.uniform(200, 255)))
    draw.text((x + box // 4, y), "L" if rng.random() < 0.5 else "R", fill=0)
    text = f"{int(rng.integers(1, 99)):02d}/{int(rng.integers(1, 12)):02d} AP PORTABLE"[: int(rng.integers(4, 18))]
    draw.text((int(rng.uniform(0.05, 0.5) * width), int(rng.uniform(0.88, 0.95) * height)), text,
              fill=int(rng.uniform(180, 255)))
    return image


def render_chest(height: int, width: int, pneumonia_kind: str, rng: np.random.Generator,
                 difficulty: float = 0.0) -> np.ndarray:
    """One grayscale image as uint8 [height, width]; see the module docstring for ``difficulty``."""
    d = visual_difficulty(difficulty)  # how far the film itself departs from the clean caricature
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    # Patient positioning: the whole chest shifted.
    yy, xx = yy + rng.normal(0, 0.08 * d), xx + rng.normal(0, 0.08 * d)
    jitter = lambda s: rng.normal(0, s)  # noqa: E731

    image = np.full((height, width), 0.04)
    body = _ellipse(yy, xx, 0.1 + jitter(0.03), jitter(0.03), 1.05, 0.9 + jitter(0.03), 0.15)
    image += 0.5 * body

    lung_ry, lung_rx = 0.55 + jitter(0.03), 0.27 + jitter(0.02)
    lungs = np.zeros_like(image)
    for side in (-1, 1):
        lungs = np.maximum(
            lungs, _ellipse(yy, xx, -0.05 + jitter(0.02), side * (0.36 + jitter(0.02)), lung_ry, lung_rx, 0.2)
        )
    image -= 0.32 * lungs

    # Ribs: curved bright bands over the lung fields.
    ribs = np.zeros_like(image)
    phase = rng.uniform(0, 1)
    for k in range(9):
        y0 = -0.7 + (k + phase) * 0.16
        centre_line = y0 + 0.25 * xx**2
        ribs += np.exp(-(((yy - centre_line) / 0.025) ** 2))
    image += 0.1 * np.clip(ribs, 0, 1) * lungs

    spine = np.exp(-((xx - jitter(0.01)) / 0.08) ** 2) * body
    image += 0.25 * spine
    heart = _ellipse(yy, xx, 0.3 + jitter(0.02), 0.12 + jitter(0.02), 0.25, 0.22, 0.3)
    image += 0.18 * heart

    texture = 0.6 + 0.4 * rng.random((height, width))
    # Opacities fade with difficulty, and some cases are nearly invisible (as mild or early pneumonia is).
    strength = (1 - 0.7 * d) * (0.25 if rng.random() < 0.35 * d else 1.0)
    if pneumonia_kind != "normal" and rng.random() < OCCULT_RATE * difficulty:
        strength = 0.0  # radiographically occult: the label says pneumonia, the film shows nothing
    if pneumonia_kind == "bacteria":
        side = rng.choice((-1, 1))
        count = max(1, round(3 * (1 - 0.5 * d)))
        centres = [(rng.uniform(-0.1, 0.35), side * rng.uniform(0.25, 0.45)) for _ in range(count)]
        image += 0.45 * strength * _blob_field(yy, xx, rng, centres, 0.1, texture) * lungs
    elif pneumonia_kind == "virus":
        count = max(2, round(8 * (1 - 0.5 * d)))
        centres = [(rng.uniform(-0.45, 0.4), rng.choice((-1, 1)) * rng.uniform(0.2, 0.5)) for _ in range(count)]
        image += 0.3 * strength * _blob_field(yy, xx, rng, centres, 0.07, texture) * lungs
    elif rng.random() < 0.4 * d:
        # Benign densities on a normal film (vessels, a nipple shadow): faint, small, anywhere in the lungs.
        centres = [(rng.uniform(-0.4, 0.4), rng.choice((-1, 1)) * rng.uniform(0.2, 0.5)) for _ in range(2)]
        image += 0.12 * _blob_field(yy, xx, rng, centres, 0.06, texture) * lungs

    spread = 0.15 + 0.25 * d
    image *= rng.uniform(1 - spread, 1 + spread)  # exposure
    image += rng.normal(0, 0.03 + 0.05 * d, image.shape)  # film grain
    pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
    film = Image.fromarray(pixels, mode="L").filter(ImageFilter.GaussianBlur(radius=max(height, width) / 256))
    if d > 0:
        film = film.rotate(rng.normal(0, 6 * d), resample=Image.BILINEAR, fillcolor=int(0.04 * 255))
    if rng.random() < d * MARKER_RATE:
        film = _markers(film, rng)
    return np.asarray(film)


def image_names(patient: Patient, first_index: int) -> list[str]:
    """Kaggle-style file names; ``first_index`` numbers pneumonia images globally as Kaggle does."""
    if patient.label == 0:
        prefix = "NORMAL2-IM" if patient.legacy_normal else "IM"
        return [f"{prefix}-{patient.number:04d}-{k + 1:04d}.jpeg" for k in range(patient.num_images)]
    return [f"person{patient.number}_{patient.kind}_{first_index + k}.jpeg" for k in range(patient.num_images)]


def synthesize(out: str | Path, num_patients: int, seed: int = 0, image_size: int = 256, progress=None,
               difficulty: float = DEFAULT_DIFFICULTY) -> SynthSummary:
    """Writes the data set; ``progress(n)`` is called after each image."""
    if image_size < 32:
        raise SettingError("image_size", image_size, " is too small: use at least 32 pixels")
    if not 0 <= difficulty <= 1:
        raise SettingError("difficulty", difficulty, " must be between 0 (easy) and 1 (hardest)")
    out = Path(out)
    rng = np.random.default_rng(seed)
    patients = plan_patients(num_patients, rng)
    counts = {s: {c: 0 for c in CLASS_NAMES} for s in ("train", "test")}
    patient_counts = {s: {c: 0 for c in CLASS_NAMES} for s in ("train", "test")}
    for split in counts:
        for name in CLASS_NAMES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    next_index = 1
    for patient in patients:
        class_name = CLASS_NAMES[patient.label]
        patient_counts[patient.split][class_name] += 1
        # One generator per patient, derived from the seed: the output does not depend on order.
        patient_rng = np.random.default_rng([seed, patient.number])
        for name in image_names(patient, next_index):
            height = int(image_size * patient_rng.uniform(0.9, 1.15))
            pixels = render_chest(height, image_size, patient.kind if patient.label else "normal", patient_rng,
                                  difficulty)
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
            (out / patient.split / class_name / name).write_bytes(buffer.getvalue())
            counts[patient.split][class_name] += 1
            if progress:
                progress(1)
        if patient.label:
            next_index += patient.num_images
    return SynthSummary(out=str(out), counts=counts, patients=patient_counts)
