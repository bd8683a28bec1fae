"""The one pixel rule (xray.data.pixels, xray.data.formats) for every depth and format, bounded memory, and DICOM: each
input goes through `xray shards` + the training reader and through the exported serving signature (or the
clients' conversion + the signature's own preprocessing) and must reach the model as the same tensor."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from xray.clients.predict import read_image
from conftest import run_xray
from xray.data import convert, formats, pixels, reader
from xray.data import manifest as manifests
from xray.serving import contract


def _film(size=(1600, 2000), seed=0):
    """A film-like 8-bit image (body, lungs, ribs, grain), rows x columns."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]] / np.array(size).reshape(2, 1, 1)
    body = 200 * np.exp(-((x - 0.5) ** 2) / 0.08)
    lungs = -90 * (np.exp(-((x - 0.32) ** 2 + (y - 0.45) ** 2) / 0.02) + np.exp(-((x - 0.68) ** 2 + (y - 0.45) ** 2) / 0.02))
    ribs = 18 * (np.sin(y * 90) > 0.6)
    return np.clip(body + lungs + ribs + rng.normal(0, 22, size) + 30, 0, 255)


def _png(pixels_array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels_array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tree(root: Path, films: dict[str, bytes]) -> Path:
    """A Kaggle-layout folder: the given test films plus a few small train/ JPEGs of each class."""
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    for k in range(4):
        for cls, prefix in (("NORMAL", f"IM-{k:04d}-0001"), ("PNEUMONIA", f"person{k}_virus_{k}")):
            buffer = io.BytesIO()
            Image.fromarray(_film((64, 64), seed=k + (cls == "NORMAL") * 10).astype(np.uint8)).save(buffer, format="JPEG")
            (root / "train" / cls / f"{prefix}.jpeg").write_bytes(buffer.getvalue())
    for relative, data in films.items():
        (root / relative).write_bytes(data)
    return root


def _through_shards(tmp_path, films: dict[str, bytes], image_size: int | None) -> dict[str, np.ndarray]:
    """{source path: model input} for the test split, via xray shards (the command) and xray.data.reader."""
    src = _tree(tmp_path / "src", films)
    args = ["shards", "--src", src, "--out", tmp_path / "shards", "--num-shards", 1, "--val-fraction", 0]
    run_xray(*args, *(["--image-size", image_size] if image_size else []))
    manifest = manifests.read(str(tmp_path / "shards"))
    size = image_size or 224
    out = {}
    for images, _, paths in reader.dataset(manifest, "test", 4, False, image_size=size, with_paths=True):
        for image, path in zip(images.numpy(), paths.numpy()):
            out[path.decode()] = image
    return out


@pytest.mark.parametrize("image_size", [224, None], ids=["pre-resized", "as-is"])
def test_a_12_bit_film_in_a_16_bit_png_is_the_same_tensor_through_shards_and_through_the_server(tmp_path, image_size):
    """The reproduction: shards stretched a 16-bit PNG min-max while the serving signature divided by 257, so a
    12-bit film had mean pixel 126.5 in the shard and 7.5 through the serving path."""
    film12 = np.rint(_film() / 255 * 4095).astype(np.uint16)  # a 12-bit film: values 0..4095 in a 16-bit PNG
    png16 = _png(film12)
    assert png16[24] == 16  # PNG bit depth
    trained = _through_shards(tmp_path, {"test/PNEUMONIA/person99_virus_1.png": png16}, image_size)
    trained = trained["test/PNEUMONIA/person99_virus_1.png"]
    served = pixels.preprocess_image(tf.constant(png16), 224).numpy()
    difference = float(np.mean(np.abs(served - trained)))
    assert difference <= 0.01, f"mean |diff| {difference:.4f} on [-1, 1]"
    served_mean = (served.mean() + 1) * 127.5
    assert abs(served_mean - (trained.mean() + 1) * 127.5) < 1 and served_mean > 60  # not near-black


def test_the_exported_signature_answers_a_16_bit_film_as_training_read_it(model_base, tmp_path):
    """Through the SavedModel a server loads: serving_default on the PNG bytes vs predict_tensor on the tensor
    the training reader makes from the same film's shard."""
    card = json.loads((model_base / "1" / contract.MODEL_CARD).read_text())
    size = card["image_size"]
    film12 = np.rint(_film(seed=3) / 255 * 4095).astype(np.uint16)
    png16 = _png(film12)
    trained = _through_shards(tmp_path, {"test/NORMAL/IM-0999-0001.png": png16}, size)["test/NORMAL/IM-0999-0001.png"]
    loaded = tf.saved_model.load(str(model_base / "1"))
    from_bytes = loaded.signatures[contract.SIGNATURE_BYTES](image_bytes=tf.constant([png16]))
    from_tensor = loaded.signatures[contract.SIGNATURE_TENSOR](image=tf.constant(trained[None]))
    np.testing.assert_allclose(from_bytes[contract.OUTPUT_PROBABILITY].numpy(),
                               from_tensor[contract.OUTPUT_PROBABILITY].numpy(), atol=0.02)
    assert "inputs" in card and card["inputs"]["max_pixels"] == formats.MAX_PIXELS


def test_8_bit_rgb_and_gray_of_one_film_are_one_tensor():
    gray = _film((300, 400)).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    from_gray = pixels.preprocess_image(tf.constant(_png(gray)), 64).numpy()
    from_rgb = pixels.preprocess_image(tf.constant(_png(rgb)), 64).numpy()
    assert float(np.mean(np.abs(from_gray - from_rgb))) < 0.01


def test_bmp_and_gif_of_a_film_are_the_tensor_of_its_png_through_shards_and_through_the_server(tmp_path):
    """docs/reference.md: BMP and GIF are accepted as they are (TensorFlow decodes them); a gray film in either is
    the same tensor as its PNG, in the serving preprocessing and through `xray shards` + the reader."""
    gray = _film((300, 400)).astype(np.uint8)
    encoded = {}
    for kind in ("PNG", "BMP", "GIF"):
        buffer = io.BytesIO()
        Image.fromarray(gray).save(buffer, format=kind)
        encoded[kind] = buffer.getvalue()
    served = {kind: pixels.preprocess_image(tf.constant(data), 64).numpy() for kind, data in encoded.items()}
    for kind in ("BMP", "GIF"):  # within a tenth of one gray level (2/255): BMP and GIF decode as RGB, then to gray
        np.testing.assert_allclose(served[kind], served["PNG"], atol=0.1 * 2 / 255, rtol=0, err_msg=kind)
    films = {f"test/NORMAL/IM-000{i}-0001.{kind.lower()}": encoded[kind] for i, kind in enumerate(encoded)}
    read = _through_shards(tmp_path, films, 64)
    for i, kind in ((1, "bmp"), (2, "gif")):
        # The pixel rule's bound (mean |diff| <= 0.01); measured 0.0017: the stored 8-bit image is re-encoded after
        # the resize, so inputs 0.0002 apart can land a few gray levels apart at a few pixels.
        difference = np.abs(read[f"test/NORMAL/IM-000{i}-0001.{kind}"] - read["test/NORMAL/IM-0000-0001.png"])
        assert difference.mean() <= 0.01, (kind, difference.mean())
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["inputs"]["BMP"] == 1 and manifest["inputs"]["GIF"] == 1 and manifest["num_skipped"] == 0


# --- bounded memory ----------------------------------------------------------------------------------------


def _bomb_png(side=16000) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_an_over_size_image_is_invalid_argument_in_the_serving_graph_before_any_decode(model_base):
    """The reproduction: a 249 KB 16000x16000 PNG was decoded by the serving preprocessing (+271 MB per image)."""
    import psutil

    bomb = _bomb_png()
    assert len(bomb) < 400_000
    loaded = tf.saved_model.load(str(model_base / "1"))
    signature = loaded.signatures[contract.SIGNATURE_BYTES]
    before = psutil.Process().memory_info().rss
    with pytest.raises(tf.errors.InvalidArgumentError, match="16000x16000 pixels"):
        signature(image_bytes=tf.constant([bomb, bomb, bomb, bomb]))
    grown = (psutil.Process().memory_info().rss - before) / 2**20
    assert grown < 100, f"RSS grew {grown:.0f} MiB refusing four 256-megapixel images"


def test_xray_predict_answers_a_dicom_and_reports_an_over_size_image_on_its_own_line(model_base, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(_film((200, 240)).astype(np.uint8)))
    (tmp_path / "bomb.png").write_bytes(_bomb_png())
    shutil.copy(_pydicom_data("RG1_J2KR.dcm"), tmp_path / "chest.dcm")
    result = run_xray("predict", "--model", model_base / "1", good, tmp_path / "bomb.png", tmp_path, check=False)
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "probability" in rows["good.png"] and "probability" in rows["chest.dcm"]  # a DICOM, found in a folder
    assert "16000x16000 pixels" in rows["bomb.png"]["error"]


def _shards_peak_rss_mib(src: Path, out: Path) -> tuple[float, dict]:
    code = ("import resource, sys; from xray.cli import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, "shards", "--src", str(src), "--out", str(out),
                             "--num-shards", "1", "--image-size", "64", "--workers", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.strip().splitlines()[-1]) / 1024, json.loads((out / "manifest.json").read_text())


def test_shards_skip_decompression_bombs_with_their_size_and_peak_memory_stays_flat(tmp_path):
    """Measured: peak RSS of `xray shards` on a folder with a 256-megapixel PNG and an 81-megapixel 16-bit PNG
    (1.47 GB in check_image before) against the same folder without them."""
    plain = _tree(tmp_path / "plain", {})
    bombs = _tree(tmp_path / "bombs", {})
    (bombs / "test" / "NORMAL" / "IM-0900-0001.png").write_bytes(_bomb_png())
    (bombs / "test" / "PNEUMONIA" / "person90_virus_1.png").write_bytes(_png(np.zeros((9000, 9000), np.uint16)))
    baseline, _ = _shards_peak_rss_mib(plain, tmp_path / "out-plain")
    peak, manifest = _shards_peak_rss_mib(bombs, tmp_path / "out-bombs")
    reasons = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert "16000x16000 pixels" in reasons["test/NORMAL/IM-0900-0001.png"]
    assert "9000x9000 pixels" in reasons["test/PNEUMONIA/person90_virus_1.png"]
    print(f"xray shards peak RSS: {baseline:.0f} MiB without the bombs, {peak:.0f} MiB with them")
    assert peak - baseline < 100, f"{peak:.0f} MiB with the bombs, {baseline:.0f} MiB without"


def test_the_shards_threads_follow_the_cgroup_cpu_limit(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # a pod limited to 1.5 CPUs
    assert convert.available_cpus(str(v2)) == min(2, len(__import__("os").sched_getaffinity(0)))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert convert.available_cpus(str(v2)) == len(__import__("os").sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert convert.available_cpus(str(v1)) == 1


# --- DICOM ---------------------------------------------------------------------------------------------------


def _dicom(pixels16: np.ndarray, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None,
           rle=False, bits=12) -> bytes:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
    ds.Rows, ds.Columns = pixels16.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels16.astype(np.uint16).tobytes()
    if rle:
        ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _same(a: np.ndarray, b: np.ndarray, tolerance=0.01):
    difference = float(np.mean(np.abs(a - b)))
    assert difference <= tolerance, f"mean |diff| {difference:.4f} on [-1, 1]"


def test_dicom_of_each_photometric_kind_reaches_the_model_as_its_picture(tmp_path):
    film = _film((600, 500), seed=5)
    film12 = np.rint(film / 255 * 4095).astype(np.uint16)
    expected = pixels.preprocess_image(tf.constant(_png(film.astype(np.uint8))), 224).numpy()
    variants = {
        "mono2": _dicom(film12),
        "mono1": _dicom(4095 - film12, photometric="MONOCHROME1"),  # inverted storage: bright bone after the rule
        "rescaled": _dicom(film12, slope=2.0, intercept=-1024.0),
        "windowed": _dicom(film12, window=(2047.5, 4096.0)),  # a window that spans the stored range
        "rle": _dicom(film12, rle=True),
    }
    for name, data in variants.items():
        sent = formats.to_decodable(data)[0]  # what the clients send
        assert sent[:8] == b"\x89PNG\r\n\x1a\n" and sent[24] == 16, name
        _same(pixels.preprocess_image(tf.constant(sent), 224).numpy(), expected, tolerance=0.02)
    narrow = formats.dicom_pixels(_dicom(film12, window=(2048, 1024)))  # a narrow window clips both ends
    assert narrow.min() == 0 and (narrow == narrow.max()).mean() > 0.01


def test_dicoms_through_shards_and_through_the_clients_are_the_same_tensor(tmp_path):
    film12 = np.rint(_film((700, 600), seed=7) / 255 * 4095).astype(np.uint16)
    films = {"test/PNEUMONIA/person77_virus_1.dcm": _dicom(film12, photometric="MONOCHROME1"),
             "test/NORMAL/IM-0777-0001.dcm": _dicom(film12, rle=True)}
    trained = _through_shards(tmp_path, films, 224)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["inputs"]["DICOM"] == 2 and manifest["num_skipped"] == 0
    for relative in films:
        path = tmp_path / "src" / relative
        _same(pixels.preprocess_image(tf.constant(read_image(str(path))), 224).numpy(), trained[relative])


def _pydicom_data(name: str) -> Path:
    import data_store  # the pydicom-data package

    return Path(data_store.__file__).parent / "data" / name


def test_the_real_chest_radiograph_is_the_same_tensor_uncompressed_j2k_shards_and_served(tmp_path):
    """pydicom-data's RG1 chest film (CR, MONOCHROME1, 15 bits, 1955x1841): uncompressed and JPEG 2000 lossless,
    through xray shards + reader and through the clients' conversion + the serving preprocessing."""
    films = {"test/NORMAL/IM-0888-0001.dcm": _pydicom_data("RG1_UNCR.dcm").read_bytes(),
             "test/PNEUMONIA/person88_virus_1.dcm": _pydicom_data("RG1_J2KR.dcm").read_bytes()}
    trained = _through_shards(tmp_path, films, 224)
    served = {relative: pixels.preprocess_image(tf.constant(read_image(str(tmp_path / "src" / relative))), 224).numpy()
              for relative in films}
    for relative in films:
        _same(served[relative], trained[relative])
    a, b = served.values()
    np.testing.assert_allclose(a, b, atol=1e-6)  # lossless J2K: the very same pixels
    lungs = (a[80:150, 40:90, 0].mean() + 1) * 127.5
    spine = (a[80:150, 105:120, 0].mean() + 1) * 127.5
    assert spine > lungs + 20, f"bone ({spine:.0f}) should be brighter than the lungs ({lungs:.0f}): MONOCHROME1 inverted"


def test_a_dicom_that_is_not_a_radiograph_is_skipped_with_its_reason(tmp_path):
    film12 = np.zeros((32, 32), np.uint16)
    colour = _dicom(film12).replace(b"MONOCHROME2", b"RGB        "[:11])
    with pytest.raises(formats.ImageRefused):
        formats.to_decodable(colour)
    big = _dicom(np.zeros((8, 8), np.uint16))
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(big))
    ds.Rows, ds.Columns = 7000, 7000  # the header says 49 megapixels: refused before the pixel data is read
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(formats.ImageRefused, match="7000x7000 pixels"):
        formats.to_decodable(buffer.getvalue())
    with pytest.raises(ValueError, match="not a JPEG/PNG/BMP/GIF/TIFF/DICOM"):
        path = tmp_path / "notes.dcm"
        path.write_bytes(b"hello")
        read_image(str(path))
    shutil.rmtree(tmp_path, ignore_errors=True)
