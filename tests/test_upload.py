"""xray upload on real files: a folder or a Kaggle-style zip into the volume layout, resumed split by split.
The transport here is local (`--local`); on a cluster the same receiving command runs in the uploader pod."""

import json
import zipfile

from conftest import run_xray


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(".done-")}


def test_a_zip_like_kaggles_lands_as_the_folder_and_a_rerun_skips_what_is_done(synth_dir, tmp_path):
    archive = tmp_path / "chest_xray.zip"
    with zipfile.ZipFile(archive, "w") as z:  # Kaggle's zip nests chest_xray/chest_xray/ and carries __MACOSX/
        for path in synth_dir.rglob("*"):
            if path.is_file():
                z.write(path, f"chest_xray/chest_xray/{path.relative_to(synth_dir).as_posix()}")
        z.writestr("__MACOSX/chest_xray/._train", b"resource fork")
    dest = tmp_path / "volume" / "incoming" / "chest_xray"
    first = run_xray("upload", archive, "--dest", dest, "--local")
    assert json.loads(first.stdout.splitlines()[-1])["sent"] == ["test", "train"]
    assert "train: sending" in first.stderr and "MB/s" in first.stderr
    assert _tree(dest) == _tree(synth_dir)
    assert (dest / ".done-train").read_text().startswith(f"{len(list((synth_dir / 'train').rglob('*.jpeg')))} files")

    # An interrupted upload of test/: its partial folder is there, its marker is not. Only test/ is resent.
    (dest / ".done-test").unlink()
    (dest / ".partial-test").mkdir()
    (dest / ".partial-test" / "half.jpeg").write_bytes(b"\xff\xd8")
    second = run_xray("upload", synth_dir, "--dest", dest, "--local")
    report = json.loads(second.stdout.splitlines()[-1])
    assert report["sent"] == ["test"] and report["skipped"] == ["train"]
    assert "train: already on the volume" in second.stderr
    assert _tree(dest) == _tree(synth_dir) and not (dest / ".partial-test").exists()


def test_a_folder_without_the_layout_is_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpeg").write_bytes(b"x")
    result = run_xray("upload", tmp_path / "images", "--dest", tmp_path / "d", "--local", check=False)
    assert result.returncode == 2 and "no train/ folder found" in result.stderr and "Traceback" not in result.stderr
