"""xray/clients/predict.py in-process: which files `xray predict` finds, what it sends for each, how it batches, how
one bad image in a batch gets its own error line while the others get answers, and how results are written.
A named shortcut: the client here is a recording one, not a server; `xray predict` against the TF Serving
stand-in is test_serving.py. In-process and fast, so `make mutate` runs it; LocalModel, which runs TensorFlow, is
test_local_model.py (TensorFlow's thread pools do not survive mutmut's fork)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from xray.clients import ServingError
from xray.clients.predict import (tf_error_line, collect_files, format_jsonl, format_table, predict_files,
                             read_image, save_overlay)
from xray.serving import contract


def png(path, size=(8, 8), value=128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_folders_are_searched_for_images_globs_expanded_and_nothing_repeats(tmp_path):
    for name in ["b/2.PNG", "b/1.jpeg", "b/deep/3.dcm", "b/notes.txt", "b/x.tiff", "a.png", "c.gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = collect_files([str(tmp_path / "c.gif"), str(tmp_path / "b"), str(tmp_path / "*.png"),
                           str(tmp_path / "b" / "1.jpeg"), str(tmp_path / "missing.png"), str(tmp_path / "*.none"),
                           str(tmp_path / "MISSING-X.png")])
    # A plain name is kept even when it does not exist (its own error line later); a pattern matching nothing is not.
    assert [p.replace(str(tmp_path) + "/", "") for p in found] == [
        "c.gif", "b/1.jpeg", "b/2.PNG", "b/deep/3.dcm", "b/x.tiff", "a.png", "missing.png", "MISSING-X.png"]
    assert collect_files([str(tmp_path / "**" / "*.dcm")]) == [str(tmp_path / "b" / "deep" / "3.dcm")]


def test_what_is_sent_for_each_kind_of_file_and_why_one_is_refused(tmp_path):
    data = png(tmp_path / "film.png")
    assert read_image(str(tmp_path / "film.png")) == data
    jpeg = b"\xff\xd8\xff\xe0 rest"
    (tmp_path / "film.jpg").write_bytes(jpeg)
    assert read_image(str(tmp_path / "film.jpg")) == jpeg  # sent as it is: the server decodes it
    Image.new("L", (6, 4), 9).save(tmp_path / "film.tif")
    converted = read_image(str(tmp_path / "film.tif"))
    assert converted.startswith(b"\x89PNG") and Image.open(io.BytesIO(converted)).size == (6, 4)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_bytes(b"not an image")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 not really")
    (tmp_path / "bad.TIFF").write_bytes(b"II*\x00 not really")
    for name, message in [("missing.png", "cannot read: No such file or directory"), ("empty.png", "empty file"),
                          ("notes.png", "not a JPEG/PNG/BMP/GIF/TIFF/DICOM image"), (".", "cannot read: Is a directory")]:
        with pytest.raises(ValueError) as caught:
            read_image(str(tmp_path / name))
        assert str(caught.value) == message
    # A TIFF is converted as xray shards converts it, and a broken one is refused with the converter's reason.
    from xray.data import formats

    with pytest.raises(formats.ImageRefused) as reason:
        formats.to_decodable(b"II*\x00 not really")
    for name in ["bad.tif", "bad.TIFF"]:
        with pytest.raises(ValueError) as caught:
            read_image(str(tmp_path / name))
        assert str(caught.value) == str(reason.value) and str(reason.value) == "not a readable image (cannot identify image file)"


def test_the_useful_line_of_a_tensorflow_error_is_kept():
    message = ("Graph execution error:\n\nDetected at node DecodePng defined at (most recent call last):\n"
               "  File \"x.py\", line 3, in f\n\n"
               "{{function_node __inference_serve_123}} Invalid PNG data, size 12\n"
               "\t [[{{node DecodePng}}]] [Op:__inference_serve_123]")
    assert tf_error_line(message) == "Invalid PNG data, size 12"
    assert tf_error_line("Input is empty. [[{{node DecodeJpeg}}]]") == "Input is empty."
    # Whatever comes last, the frames, node locations and preamble are never taken for the message.
    for tail in ['  File "serve.py", line 3, in f', "Detected at node DecodePng", "Graph execution error:",
                 "Graph execution error", "defined at (most recent call last):"]:
        assert tf_error_line(f"Invalid JPEG data\n{tail}") == "Invalid JPEG data", tail
    assert tf_error_line("  Some op failed:  \n") == "Some op failed:"  # nothing useful: the first line, stripped
    assert tf_error_line("") == ""


class Recording:
    """A client that answers each image by its bytes: b"bad..." fails to decode (alone or in any batch),
    b"down" makes the server unavailable; records the batch sizes it was sent."""

    def __init__(self, fatal="UNAVAILABLE"):
        self.batches, self.fatal = [], fatal

    def predict(self, images):
        self.batches.append(len(images))
        if any(b"down" in image for image in images):
            raise ServingError(self.fatal, "server went away")
        if any(b"bad" in image for image in images):
            raise ServingError("INVALID_ARGUMENT", "Invalid JPEG data or crop window")
        return [{"probability": len(image) / 100, "label": "NORMAL"} for image in images]


def films(tmp_path, contents):
    paths = []
    for i, content in enumerate(contents):
        path = tmp_path / f"{i:02d}.jpg"
        path.write_bytes(b"\xff\xd8\xff" + content if content else b"")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("batch_size, batches", [(1, [1] * 5), (2, [2, 2, 1]), (5, [5]), (16, [5])])
def test_files_go_in_batches_of_batch_size_and_come_back_in_order(tmp_path, batch_size, batches):
    paths = films(tmp_path, [b"a", b"bb", b"ccc", b"dddd", b"eeeee"])
    client = Recording()
    rows = list(predict_files(client, paths, batch_size=batch_size))
    assert client.batches == batches
    assert [row["path"] for row in rows] == paths
    assert [row["probability"] for row in rows] == [0.04, 0.05, 0.06, 0.07, 0.08]


def test_the_default_batch_is_16(tmp_path):
    client = Recording()
    assert len(list(predict_files(client, films(tmp_path, [b"a"] * 17)))) == 17
    assert client.batches == [16, 1]


@pytest.mark.parametrize("batch_size", [0, -1, contract.MAX_BATCH + 1])
def test_a_batch_size_out_of_bounds_is_refused_before_anything_is_sent(tmp_path, batch_size):
    client = Recording()
    with pytest.raises(ServingError) as caught:
        list(predict_files(client, films(tmp_path, [b"a"]), batch_size=batch_size))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == f"batch_size {batch_size} must be between 1 and {contract.MAX_BATCH}"
    assert client.batches == []
    assert len(list(predict_files(client, films(tmp_path, [b"a"]), batch_size=contract.MAX_BATCH))) == 1


def test_an_unreadable_file_gets_its_line_in_place_and_the_files_before_it_are_sent_first(tmp_path):
    paths = films(tmp_path, [b"a", b"b", None, b"c"])
    client = Recording()
    rows = list(predict_files(client, paths, batch_size=16))
    assert [row["path"] for row in rows] == paths
    assert rows[2] == {"path": paths[2], "error": "empty file"}
    assert client.batches == [2, 1]
    alone = Recording()
    assert list(predict_files(alone, paths[2:3])) == [{"path": paths[2], "error": "empty file"}]
    assert alone.batches == []  # nothing pending: nothing sent


def test_a_bad_image_in_a_batch_fails_alone_and_its_neighbours_are_answered(tmp_path):
    paths = films(tmp_path, [b"a", b"bad1", b"c", b"bad2", b"e"])
    client = Recording()
    rows = list(predict_files(client, paths, batch_size=4))
    assert client.batches == [4, 1, 1, 1, 1, 1]  # the batch, then each of its files alone; the last batch is clean
    assert [row.get("error") for row in rows] == [None, "Invalid JPEG data or crop window", None,
                                                  "Invalid JPEG data or crop window", None]
    assert [row["path"] for row in rows] == paths
    assert rows[4] == {"path": paths[4], "probability": 0.04, "label": "NORMAL"}
    single = Recording()
    assert list(predict_files(single, paths[1:2])) == [{"path": paths[1], "error": "Invalid JPEG data or crop window"}]
    assert single.batches == [1]


@pytest.mark.parametrize("fatal", ["UNAVAILABLE", "NOT_FOUND"])
def test_a_server_problem_stops_the_run_even_inside_a_batch_being_resent(tmp_path, fatal):
    with pytest.raises(ServingError) as caught:
        list(predict_files(Recording(fatal), films(tmp_path, [b"a", b"down"]), batch_size=2))
    assert caught.value.code == fatal
    with pytest.raises(ServingError) as caught:  # bad image first: the batch is resent file by file, then the server fails
        list(predict_files(Recording(fatal), films(tmp_path, [b"bad", b"down"]), batch_size=2))
    assert caught.value.code == fatal


def test_an_invalid_argument_that_is_not_about_an_image_stops_the_run(tmp_path):
    class WrongSignature(Recording):
        def predict(self, images):
            self.batches.append(len(images))
            raise ServingError("INVALID_ARGUMENT", "Serving signature name: \"x\" not found in signature def")

    client = WrongSignature()
    with pytest.raises(ServingError):
        list(predict_files(client, films(tmp_path, [b"a", b"b"]), batch_size=2))
    assert client.batches == [2]


def test_the_table_lines_up_paths_probabilities_and_errors():
    rows = [{"path": "a.png", "probability": 0.123456, "label": "NORMAL"},
            {"path": "films/long-name.jpeg", "error": "empty file"}]
    assert format_table(rows).splitlines() == [
        "path                  probability  label",
        "a.png                      0.1235  NORMAL",
        "films/long-name.jpeg            -  error: empty file"]
    assert format_table([{"path": "a", "probability": 1.0, "label": "P"}]).splitlines() == [
        "path  probability  label", "a          1.0000  P"]
    assert json.loads(format_jsonl(rows[1])) == rows[1]


def test_the_overlay_is_the_film_in_gray_with_the_heat_in_red(tmp_path):
    film = png(tmp_path / "film.png", size=(64, 32), value=100)
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[:4, :4] = 1.0
    save_overlay(film, heat, str(tmp_path / "overlay.png"))
    overlay = Image.open(tmp_path / "overlay.png")
    assert overlay.format == "PNG" and overlay.size == (256, 256) and overlay.mode == "RGB"
    hot, cold = overlay.getpixel((10, 10)), overlay.getpixel((240, 240))
    assert hot[0] > hot[2] + 40  # jet's top is red
    assert cold[2] > cold[0] + 40  # and its bottom blue
    assert abs(cold[1] - (0.6 * 100)) < 20  # 60% of the gray film shows through
    big = np.full((300, 300), 2.0, dtype=np.float32)  # past 1: the same red as 1.0
    save_overlay(film, big, str(tmp_path / "big.png"))
    assert Image.open(tmp_path / "big.png").size == (300, 300)
    assert Image.open(tmp_path / "big.png").getpixel((5, 5)) == overlay.getpixel((10, 10))


def test_the_overlay_shows_a_colour_film_in_gray_and_jet_at_full_strength(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(buffer, format="PNG")
    save_overlay(buffer.getvalue(), np.full((8, 8), 0.5, dtype=np.float32), str(tmp_path / "overlay"))
    overlay = Image.open(tmp_path / "overlay")
    assert overlay.format == "PNG"  # whatever the file's name says
    red, green, blue = overlay.getpixel((100, 100))
    gray = 0.299 * 255  # pure red in gray (ITU-R 601-2 luma, Pillow's "L")
    assert abs(red - (0.6 * gray + 0.4 * 0.49 * 255)) < 3 and abs(green - (0.6 * gray + 0.4 * 255)) < 3


def test_the_overlay_is_resized_without_ringing(tmp_path):
    """Bilinear both ways: a sharp edge in the film stays inside its two levels (a cubic filter overshoots it)."""
    film = Image.new("L", (64, 64), 50)
    film.paste(200, (32, 0, 64, 64))
    buffer = io.BytesIO()
    film.save(buffer, format="PNG")
    heat = np.zeros((16, 16), dtype=np.float32)  # jet(0) adds no green: green is 0.6 x the film
    save_overlay(buffer.getvalue(), heat, str(tmp_path / "overlay.png"))
    greens = [Image.open(tmp_path / "overlay.png").getpixel((x, 128))[1] for x in range(256)]
    assert min(greens) >= int(0.6 * 50) - 1 and max(greens) <= int(0.6 * 200) + 1
    heat[:, 8:] = 1.0
    save_overlay(buffer.getvalue(), heat, str(tmp_path / "edge.png"))
    reds = [Image.open(tmp_path / "edge.png").getpixel((x, 128))[0] for x in range(256)]
    assert reds == sorted(reds)  # rising across the edge, no dip before it or bump after it
