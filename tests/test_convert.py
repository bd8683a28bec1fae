import hashlib
import os
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_xray
from xray.data import convert as records
from xray.data import manifest as manifests
from xray.data import schema
from xray.data.convert import ShardOptions, SourceLayoutError, convert


def _read_all(out):
    rows = {}
    for path in sorted(tf.io.gfile.glob(f"{out}/*.tfrecord")):
        split = Path(path).name.split("-")[0]
        for raw in tf.data.TFRecordDataset(path):
            parsed = schema.parse_example(raw)
            rows[parsed["source_path"].numpy().decode()] = (split, parsed)
    return rows


def _jpeg(value=128, size=(40, 36), mode="L"):
    buffer = io.BytesIO()
    pixels = np.full((size[1], size[0]) if mode == "L" else (size[1], size[0], 4 if mode == "CMYK" else 3), value, np.uint8)
    pixels[::3] = 255 - value  # not a flat image, and different per value
    Image.fromarray(pixels, mode=mode).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _make_tree(root, files):
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)


def test_round_trip_every_image_once_with_label_and_pixels(synth_dir, tmp_path):
    out = tmp_path / "shards"
    manifest = convert(synth_dir, str(out), ShardOptions(num_shards=3, val_fraction=0.2), show_progress=False).to_dict()
    sources = sorted(p.relative_to(synth_dir).as_posix() for p in synth_dir.rglob("*.jpeg"))
    rows = _read_all(out)
    assert sorted(rows) == sources  # each valid image in exactly one record
    for relative, (split, parsed) in rows.items():
        source_split, cls, _ = relative.split("/")
        assert parsed["label"].numpy() == schema.CLASS_NAMES.index(cls)
        assert (split == "test") == (source_split == "test")
        # No --image-size: the record holds the original bytes; TF's and PIL's JPEG decoders differ by
        # rounding (IDCT method) only.
        assert parsed["image_bytes"].numpy() == (synth_dir / relative).read_bytes()
        original = np.asarray(Image.open(synth_dir / relative)).astype(int)
        decoded = tf.io.decode_jpeg(parsed["image_bytes"], channels=1).numpy()[..., 0].astype(int)
        assert np.abs(decoded - original).mean() < 1.0
        assert (parsed["original_height"].numpy(), parsed["original_width"].numpy()) == original.shape
    total = sum(sum(c.values()) for c in manifest["counts"].values())
    assert total == len(sources) == manifest["num_images_found"]
    assert manifest["num_skipped"] == 0


def test_image_size_reencodes_to_small_grayscale_jpeg(shards_dir):
    rows = _read_all(shards_dir)
    _, parsed = next(iter(rows.values()))
    image = tf.io.decode_jpeg(parsed["image_bytes"]).numpy()
    assert image.shape == (32, 32, 1)
    assert parsed["original_width"].numpy() == 64  # the source size is kept


def test_manifest_counts_shards_and_hashes_match_files(shards_dir):
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    for split in schema.SPLITS:
        listed = manifest["shards"][split]
        assert listed, split
        for shard in listed:
            data = (shards_dir / shard["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
            assert sum(1 for _ in tf.data.TFRecordDataset(str(shards_dir / shard["file"]))) == shard["records"]
        assert sum(s["records"] for s in listed) == sum(manifest["counts"][split].values())
    assert manifest["options"]["image_size"] == 32
    assert not list(shards_dir.glob(".*tmp*")), "temporary files left behind"


def test_validation_is_patient_disjoint_and_stratified(tmp_path):
    files = {}
    # 30 patients with 4 images each per class, 3:1 like Kaggle; val carved from train only.
    for patient in range(40):
        cls, name = ("NORMAL", f"IM-{patient:04d}-{{k:04d}}.jpeg") if patient < 10 else ("PNEUMONIA", f"person{patient}_bacteria_{{k}}.jpeg")
        for k in range(4):
            files[f"train/{cls}/{name.format(k=patient * 10 + k)}"] = _jpeg(value=(patient * 4 + k) % 250)
    files["test/NORMAL/IM-9999-0001.jpeg"] = _jpeg(value=251)
    files["test/PNEUMONIA/person999_virus_1.jpeg"] = _jpeg(value=252)
    _make_tree(tmp_path / "src", files)
    manifest = convert(tmp_path / "src", str(tmp_path / "out"), ShardOptions(num_shards=2, val_fraction=0.25, seed=7), show_progress=False).to_dict()
    rows = _read_all(tmp_path / "out")
    patients = {}
    for split, parsed in rows.values():
        patients.setdefault(parsed["patient_id"].numpy().decode(), set()).add(split)
    assert all(len(splits) == 1 for splits in patients.values()), "a patient is in two splits"
    assert len(patients) == 42  # ids parsed from the names, 4 images each
    counts = manifest["counts"]
    for cls, total in (("NORMAL", 40), ("PNEUMONIA", 120)):
        fraction = counts["val"][cls] / total
        assert 0.2 <= fraction <= 0.35, (cls, fraction)  # stratified: each class ~25%
    assert manifest["num_patients"]["val"] == (counts["val"]["NORMAL"] + counts["val"]["PNEUMONIA"]) // 4


@pytest.mark.parametrize("image_size", [None, 32], ids=["as-is", "resized"])
def test_bad_files_are_skipped_with_reasons_and_the_rest_is_written(tmp_path, monkeypatch, image_size):
    # Resized, a JPEG is checked by TensorFlow's decode alone; PIL names the problem when that fails.
    good = _jpeg(value=10)
    truncated = _jpeg(value=20)[:200]
    truncated_near_end = _jpeg(value=25)[:-30]
    png = io.BytesIO()
    Image.fromarray(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)).save(png, format="PNG")
    files = {
        "train/NORMAL/IM-0001-0001.jpeg": good,
        "train/NORMAL/IM-0002-0001.jpeg": _jpeg(value=30),
        "train/NORMAL/IM-0003-0001.png": png.getvalue(),
        "train/NORMAL/IM-0004-0001.jpeg": good,  # duplicate bytes
        "train/NORMAL/empty.jpeg": b"",
        "train/NORMAL/notes.jpeg": b"this is not an image",
        "train/PNEUMONIA/person1_virus_1.jpeg": truncated,
        "train/PNEUMONIA/person7_virus_7.jpeg": truncated_near_end,
        "train/PNEUMONIA/person2_virus_2.jpeg": _jpeg(value=40),
        "train/PNEUMONIA/person3_virus_3.jpeg": _jpeg(value=50),
        "train/PNEUMONIA/person4_virus_4.jpeg": _jpeg(value=60, mode="CMYK"),
        "train/PNEUMONIA/person5_virus_5.jpeg": _jpeg(value=70),
        "test/NORMAL/IM-0100-0001.jpeg": _jpeg(value=80),
        "test/PNEUMONIA/person100_virus_9.jpeg": _jpeg(value=90),
    }
    _make_tree(tmp_path / "src", files)
    unreadable = tmp_path / "src/train/PNEUMONIA/person6_virus_6.jpeg"
    unreadable.write_bytes(_jpeg(value=100))
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == unreadable:
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    options = ShardOptions(num_shards=2, val_fraction=0.3, image_size=image_size)
    manifest = convert(tmp_path / "src", str(tmp_path / "out"), options, show_progress=False).to_dict()
    reasons = {item["path"].split("/")[-1]: item["reason"] for item in manifest["skipped"]}
    assert reasons["person7_virus_7.jpeg"].startswith("truncated image")
    assert reasons["empty.jpeg"] == "empty file"
    assert reasons["notes.jpeg"].startswith("not a readable image")
    assert reasons["person1_virus_1.jpeg"].startswith("truncated image")
    assert reasons["person4_virus_4.jpeg"].startswith("unsupported image mode CMYK")
    assert reasons["IM-0004-0001.jpeg"] == "duplicate of train/NORMAL/IM-0001-0001.jpeg (same bytes)"
    assert reasons["person6_virus_6.jpeg"].startswith("unreadable file")
    assert manifest["num_skipped"] == 7
    written = sorted(_read_all(tmp_path / "out"))
    assert len(written) == len(files) + 1 - 7
    assert "train/NORMAL/IM-0003-0001.png" in written or "val/NORMAL/IM-0003-0001.png" in written


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: (root / "train").mkdir(parents=True), "has no train/NORMAL"),
    (lambda root: [(root / s / c).mkdir(parents=True) for s in ("train", "test") for c in ("NORMAL", "PNEUMONIA")], "no files"),
])
def test_bad_source_directory_is_a_clear_error(tmp_path, make, message):
    src = tmp_path / "src"
    make(src)
    with pytest.raises(SourceLayoutError, match=message) as info:
        convert(src, str(tmp_path / "out"), show_progress=False)
    assert "SRC/train/NORMAL" in str(info.value)  # says which layout is expected


def test_crash_mid_conversion_leaves_no_shard_under_a_final_name(synth_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = records.encode_example

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(records, "encode_example", failing)  # xray.data.convert's own name for it
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(synth_dir, str(out), ShardOptions(num_shards=2), show_progress=False)
    assert not list(out.glob("*.tfrecord")) and not (out / "manifest.json").exists()


def test_class_weights_are_balanced_from_manifest_counts():
    manifest = manifests.Manifest(uri="d", counts={"train": {"NORMAL": 100, "PNEUMONIA": 300}}, shards={}, options={})
    weights = manifest.class_weights()
    assert weights == pytest.approx({0: 2.0, 1: 400 / 600})


def test_the_manifest_records_the_resize_and_training_refuses_other_shards(shards_dir, tmp_path):
    import json
    import shutil

    from conftest import run_xray

    manifest = json.loads((shards_dir / "manifest.json").read_text())
    assert manifest["options"]["resize"] == records.pixels.RESIZE_METHOD == "tf-jpeg-dct-scale+bilinear-antialias"
    assert manifests.Manifest.from_dict("d", manifest).check_for_model(32) == []
    (warning,) = manifests.Manifest.from_dict("d", manifest).check_for_model(64)
    assert "32 px images and the model reads 64 px: they are upsampled" in warning
    # Shards written before the resize was shared with the server (no "resize" in the manifest): refused.
    old = tmp_path / "old"
    shutil.copytree(shards_dir, old)
    del manifest["options"]["resize"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = run_xray("train", "--data", old, "--workdir", tmp_path / "run", "--preset", "tiny", check=False, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the serving signature resizes with {records.pixels.RESIZE_METHOD}" in result.stderr
    assert "Write the shards again (xray shards) at image_size=32 into a new folder" in result.stderr
    # Shards of the previous method (antialiased resize of a fully decoded JPEG): refused the same way.
    manifest["options"]["resize"] = "tf-bilinear-antialias"
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(manifests.StaleShardsError, match="resized with tf-bilinear-antialias"):
        manifests.Manifest.from_dict(str(old), manifest).check_for_model(32)


def test_file_names_that_are_not_utf8_are_recorded_escaped_not_a_crash(synth_dir, tmp_path):
    import json
    import os
    import shutil

    from conftest import run_xray

    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    first = next((src / "train" / "NORMAL").iterdir())
    # A name written by another system in Latin-1: b"\xe9" is not UTF-8.
    os.rename(os.fsencode(first), os.path.join(os.fsencode(src / "train" / "NORMAL"), b"IM-9999-0001-caf\xe9.jpeg"))
    result = run_xray("shards", "--src", src, "--out", tmp_path / "out", "--num-shards", 2)
    assert "1 file name(s) were not valid UTF-8" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (renamed,) = manifest["renamed"]
    assert renamed["path"].endswith("IM-9999-0001-caf\\xe9.jpeg")
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == len(list(synth_dir.rglob("*.jpeg")))


def test_a_rerun_removes_the_old_manifest_before_the_old_shards(shards_dir, tmp_path, monkeypatch):
    import shutil

    import tensorflow as tf

    out = tmp_path / "out"
    shutil.copytree(shards_dir, out)
    removed = []
    real_remove = tf.io.gfile.remove
    monkeypatch.setattr(tf.io.gfile, "remove", lambda path: (removed.append(Path(path).name), real_remove(path)))
    source = json.loads((shards_dir / "manifest.json").read_text())["source"]
    records.convert(source, str(out), records.ShardOptions(num_shards=2, image_size=32), show_progress=False)
    assert removed[0] == "manifest.json" and all(name.endswith(".tfrecord") for name in removed[1:])


def test_parallel_conversion_writes_the_same_shards_as_one_thread(synth_dir, tmp_path):
    """xray shards decodes on all cores; the result must not depend on it (order, duplicates, payloads)."""
    (tmp_path / "src").mkdir()
    for split in ("train", "test"):
        shutil.copytree(synth_dir / split, tmp_path / "src" / split)
    first = sorted((tmp_path / "src" / "train" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copy(first, first.with_name("IM-9999-0001.jpeg"))  # a duplicate: the first of the two is kept
    (tmp_path / "src" / "train" / "NORMAL" / "IM-9998-0001.jpeg").write_bytes(b"\xff\xd8\xff broken")
    manifests = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        manifests[workers] = records.convert(tmp_path / "src", str(out), records.ShardOptions(
            num_shards=2, image_size=32, workers=workers), show_progress=False).to_dict()
    assert manifests[1]["skipped"] == manifests[2]["skipped"] and len(manifests[1]["skipped"]) == 2
    assert "duplicate of" in " ".join(s["reason"] for s in manifests[1]["skipped"])
    one, two = sorted((tmp_path / "out1").glob("*.tfrecord")), sorted((tmp_path / "out2").glob("*.tfrecord"))
    assert [p.name for p in one] == [p.name for p in two] and one
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes()


def test_a_source_uri_is_listed_and_read_through_tensorflow_s_filesystems(synth_dir, tmp_path):
    """xray shards --src gs://bucket/chest_xray lists and reads through tf.io.gfile, the code that file:// takes here
    (no bucket can be reached from this machine; docs/kubernetes.md says why no emulator stands in): the same shards,
    byte for byte, as from the local path. A scheme no filesystem serves is one line, exit 2."""
    manifests = {}
    for name, src in (("local", synth_dir), ("uri", f"file://{synth_dir}")):
        result = run_xray("shards", "--src", src, "--out", tmp_path / name, "--num-shards", 2, "--image-size", 32, "--json")
        manifests[name] = json.loads(result.stdout)
    assert manifests["uri"]["source"] == f"file://{synth_dir}" and manifests["uri"]["counts"] == manifests["local"]["counts"]
    one, two = sorted((tmp_path / "local").glob("*.tfrecord")), sorted((tmp_path / "uri").glob("*.tfrecord"))
    assert [p.name for p in one] == [p.name for p in two] and one
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
    refused = run_xray("shards", "--src", "nosuch://bucket/x", "--out", tmp_path / "n", check=False)
    assert refused.returncode == 2 and "nosuch:// is not supported; use a local path or gs://" in refused.stderr
    assert "Traceback" not in refused.stderr


# --- one writer per folder; readers read the manifest's list -------------------------------------------------


def test_a_rerun_deletes_only_the_shards_its_manifest_listed(synth_dir, tmp_path):
    """Before, xray shards deleted every *-*-of-*.tfrecord in --out, its own or not."""
    out = tmp_path / "out"
    convert(synth_dir, str(out), ShardOptions(num_shards=3, image_size=32), show_progress=False)
    assert (out / "train-00002-of-00003.tfrecord").exists()
    foreign = [out / "xrays-00000-of-00001.tfrecord", out / "train-00000-of-00099.tfrecord"]
    for path in foreign:
        path.write_bytes(b"someone else's")
    convert(synth_dir, str(out), ShardOptions(num_shards=2, image_size=32), show_progress=False)
    assert not (out / "train-00002-of-00003.tfrecord").exists()  # listed by the previous manifest: replaced
    assert all(path.read_bytes() == b"someone else's" for path in foreign)
    manifest = manifests.read(str(out))
    assert [Path(p).name for p in manifest.shard_paths("train")] == ["train-00000-of-00002.tfrecord",
                                                                     "train-00001-of-00002.tfrecord"]


def test_a_second_conversion_into_the_same_folder_is_one_line(synth_dir, tmp_path):
    """Two processes: this one holds --out (as a running xray shards does), the command is refused at once."""
    from conftest import run_xray
    from xray.data.lock import FolderLock

    out = tmp_path / "out"
    with FolderLock(str(out), f"a shard conversion into {out}"):  # what a running xray shards writes
        result = run_xray("shards", "--src", synth_dir, "--out", out, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{out} is in use by a shard conversion into {out} (pid {os.getpid()}" in line
    run_xray("shards", "--src", synth_dir, "--out", out, "--num-shards", 2)  # released: it runs
    assert (out / "manifest.json").exists()


def test_a_second_training_into_a_running_workdir_is_one_line(shards_dir, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, run_xray, wait_for

    workdir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "xray", "train", "--data", str(shards_dir), "--workdir", str(workdir),
                              "--preset", "tiny", "train.epochs=200", "train.early_stopping_patience=200"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the first training to hold its workdir",
                 lambda: (workdir / ".xray.lock").exists() and f'"pid": {first.pid}' in (workdir / ".xray.lock").read_text())
        second = run_xray("train", "--data", shards_dir, "--workdir", workdir, "--preset", "tiny", check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by a training run in {workdir} (pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_training_reads_the_manifest_list_and_names_a_missing_or_changed_shard(shards_dir, tmp_path):
    from conftest import run_xray
    from xray.data import reader

    data = tmp_path / "data"
    shutil.copytree(shards_dir, data)
    (data / "train-00007-of-00008.tfrecord").write_bytes(b"not a record")  # a stray file a glob would read
    manifest = manifests.read(str(data))
    read = sum(len(labels) for _, labels in reader.dataset(manifest, "train", 8, False, image_size=32))
    assert read == manifest.count("train")

    def train():
        return run_xray("train", "--data", data, "--workdir", tmp_path / "run", "--preset", "tiny", check=False,
                        timeout=300)

    shard = data / manifest.shards["train"][1].file
    original = shard.read_bytes()
    shard.write_bytes(original + b"\0")
    result = train()
    assert result.returncode == 2 and f"{shard} is {len(original) + 1} bytes but manifest.json recorded {len(original)}" in result.stderr
    shard.unlink()
    result = train()
    assert result.returncode == 2 and f"{shard} is listed in manifest.json but missing" in result.stderr
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only the hash tells
    shard.write_bytes(bytes(flipped))
    result = run_xray("train", "--data", data, "--workdir", tmp_path / "run", "--preset", "tiny", "--verify-shards",
                      check=False, timeout=300)
    assert result.returncode == 2 and f"{shard} does not have the sha256 manifest.json recorded" in result.stderr
    assert "Traceback" not in result.stderr


def test_kaggle_file_names_map_to_their_patient(tmp_path):
    """Kaggle's three naming schemes: IM-0117-0001.jpeg, NORMAL2-IM-0381-0001.jpeg, person12_bacteria_3.jpeg.
    Each image of one patient must map to that patient (else a patient leaks across train and val)."""
    from xray.data.convert import DEFAULT_PATIENT_PATTERN, find_source_images

    names = {"train/NORMAL": ["IM-0117-0001.jpeg", "IM-0117-0002.jpeg", "NORMAL2-IM-0381-0001.jpeg",
                              "NORMAL2-IM-0381-0002.jpeg", "NORMAL2-IM-0117-0001.jpeg"],
             "train/PNEUMONIA": ["person12_bacteria_3.jpeg", "person12_virus_44.jpeg", "person1_bacteria_1.jpeg"],
             "test/NORMAL": ["IM-0001-0001.jpeg"], "test/PNEUMONIA": ["person100_virus_1.jpeg"]}
    for folder, files in names.items():
        (tmp_path / folder).mkdir(parents=True)
        for name in files:
            (tmp_path / folder / name).write_bytes(b"x")
    patients = {Path(i.relative).name: i.patient_id for i in find_source_images(tmp_path, DEFAULT_PATIENT_PATTERN)}
    assert patients["IM-0117-0001.jpeg"] == patients["IM-0117-0002.jpeg"] == "IM-0117"
    assert patients["NORMAL2-IM-0381-0001.jpeg"] == patients["NORMAL2-IM-0381-0002.jpeg"] == "NORMAL2-IM-0381"
    assert patients["NORMAL2-IM-0117-0001.jpeg"] == "NORMAL2-IM-0117"  # another patient than IM-0117
    assert patients["person12_bacteria_3.jpeg"] == patients["person12_virus_44.jpeg"] == "person12"
    assert patients["person1_bacteria_1.jpeg"] == "person1"  # not a prefix match of person12


def test_kaggle_val_is_merged_into_the_train_pool_and_shared_test_patients_are_warned_about(synth_dir, tmp_path):
    """Kaggle's val/ (16 images) joins the train pool; our val split is carved from it. A patient id found in
    both train/ and test/ is listed in the manifest and warned about on the terminal."""
    from conftest import run_xray

    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    first_test = sorted((src / "test" / "NORMAL").glob("*.jpeg"))[0]
    (src / "val" / "NORMAL").mkdir(parents=True)
    (src / "val" / "NORMAL" / "IM-4242-0001.jpeg").write_bytes(_jpeg(value=77))
    data = bytearray(first_test.read_bytes())
    data[-3] ^= 0x01  # other bytes (not a duplicate), the same patient id as a test image
    (src / "train" / "NORMAL" / (first_test.stem.rsplit("-", 1)[0] + "-0099.jpeg")).write_bytes(bytes(data))
    result = run_xray("shards", "--src", src, "--out", tmp_path / "out", "--num-shards", 2)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rows = _read_all(tmp_path / "out")
    (split, _), = [v for k, v in rows.items() if k == "val/NORMAL/IM-4242-0001.jpeg"]
    assert split in ("train", "val")  # from Kaggle's val/ into our train pool, never test
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == len(rows)
    shared = first_test.stem.rsplit("-", 1)[0]
    assert manifest["test_patients_also_in_train"] == [shared]
    assert "1 patient id(s) of test/ also appear in train/" in result.stdout


def test_tiff_films_are_read_and_counted_as_tiff_in_the_manifest(synth_dir, tmp_path):
    """TIFF (8 and 16 bit) becomes a PNG for TensorFlow, but the manifest's inputs name what the file was."""
    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    film = np.linspace(0, 4095, 64 * 48).reshape(48, 64)
    Image.fromarray(film.astype(np.uint16)).save(src / "test" / "NORMAL" / "IM-0900-0001.tif")
    Image.fromarray((film / 16).astype(np.uint8)).save(src / "test" / "PNEUMONIA" / "person90_virus_1.tiff")
    manifest = convert(src, str(tmp_path / "out"), ShardOptions(num_shards=1), show_progress=False).to_dict()
    jpegs = len(list(synth_dir.rglob("*.jpeg")))
    assert manifest["inputs"] == {"JPEG": jpegs, "TIFF": 1, "TIFF16": 1} and manifest["num_skipped"] == 0
    rows = _read_all(tmp_path / "out")
    assert rows["test/NORMAL/IM-0900-0001.tif"][1]["image_bytes"].numpy()[24] == 16  # stored as a 16-bit PNG
