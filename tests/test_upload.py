"""xray upload on real files, through the command users run: a folder or a Kaggle-style zip onto a volume,
verified by the receiver, compared file by file on a re-run. The transport is local (`--local`, the receiver as
a local process); on a cluster the same receiver runs in the uploader pod (test_k8s_real_node)."""

import io
import json
import os
import shutil
import tarfile
import zipfile

import pytest

from conftest import run_xray
from xray.data import receiver, upload


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(".")}


def _zip_of(folder, archive, prefix="chest_xray/chest_xray/"):
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_a_zip_like_kaggles_lands_as_the_folder_and_a_rerun_sends_nothing(synth_dir, tmp_path):
    archive = _zip_of(synth_dir, tmp_path / "chest_xray.zip")
    with zipfile.ZipFile(archive, "a") as z:  # Kaggle's zip carries __MACOSX/
        z.writestr("__MACOSX/chest_xray/._train", b"resource fork")
    dest = tmp_path / "volume" / "incoming" / "chest_xray"
    first = run_xray("upload", archive, "--dest", dest, "--local")
    assert json.loads(first.stdout.splitlines()[-1])["sent"] == ["test", "train"]
    assert "train: sending" in first.stderr and "MB/s" in first.stderr
    assert _tree(dest) == _tree(synth_dir)
    index = json.loads((dest / "train" / receiver.INDEX_NAME).read_text())
    assert len(index) == len(list((synth_dir / "train").rglob("*.jpeg")))

    second = run_xray("upload", synth_dir, "--dest", dest, "--local")
    report = json.loads(second.stdout.splitlines()[-1])
    assert report["sent"] == [] and report["skipped"] == ["test", "train"] and report["files_sent"] == 0
    assert "train: up to date on the volume" in second.stderr


def test_a_bad_member_mid_archive_marks_nothing_and_keeps_the_earlier_copy(synth_dir, tmp_path):
    """The reproduction: a zip whose third member has a bad CRC. Before, the first run died with a traceback,
    the second said 'already on the volume, skipped' with 2 files on disk, and the good copy was deleted."""
    dest = tmp_path / "volume"
    run_xray("upload", synth_dir, "--dest", dest, "--local")
    before = _tree(dest)
    archive = _zip_of(synth_dir, tmp_path / "bad.zip")
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        third = [i for i in z.infolist() if "/train/" in i.filename][2]
        offset = third.header_offset + 30 + len(third.filename.encode()) + len(third.extra)
    raw[offset + 5] ^= 0xFF  # a flipped byte in the third train member: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    for attempt in (1, 2):
        result = run_xray("upload", archive, "--dest", dest, "--local", check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert third.filename in result.stderr and "nothing was sent" in result.stderr
        assert "up to date" not in result.stderr and "skipped" not in result.stderr
        assert _tree(dest) == before, f"attempt {attempt} changed the volume"


def test_a_stream_that_fails_midway_waits_for_the_receiver_and_changes_nothing(synth_dir, tmp_path):
    """The sender's read fails after some members were sent: the receiver is waited for, exits non-zero, and
    the volume keeps its previous copy (no partial folder, index unchanged)."""
    dest = tmp_path / "volume"
    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    upload.upload(src, str(dest), upload.local_exec(), out=io.StringIO())
    before, index_before = _tree(dest), (dest / "train" / receiver.INDEX_NAME).read_text()
    for path in sorted((src / "train").rglob("*.jpeg"))[:5]:
        path.write_bytes(path.read_bytes() + b"\0")  # five changed films to send
    victim = sorted((src / "train").rglob("*.jpeg"))[3]
    real_chunks = upload.member_chunks

    def failing(member):
        if member.origin == victim.relative_to(src).as_posix() and failing.listed:
            yield b"\xff\xd8"
            raise OSError("Input/output error")
        yield from real_chunks(member)

    real_list = upload.file_list

    def list_then_fail(*args, **kwargs):
        listed = real_list(*args, **kwargs)
        list_then_fail.calls += 1
        failing.listed = list_then_fail.calls == 2  # test/ and train/ hashed: reads fail from now on, in the stream
        return listed

    list_then_fail.calls = 0
    failing.listed = False
    upload.member_chunks, upload.file_list = failing, list_then_fail
    try:
        with pytest.raises(upload.UploadError, match="Input/output error.*unchanged") as info:
            upload.upload(src, str(dest), upload.local_exec(), out=io.StringIO())
    finally:
        upload.member_chunks, upload.file_list = real_chunks, real_list
    assert info.value.code == 1 and victim.name in str(info.value)
    assert _tree(dest) == before and (dest / "train" / receiver.INDEX_NAME).read_text() == index_before
    assert not [p for p in dest.iterdir() if p.name.startswith((".partial-", ".old-"))]


def test_a_rerun_sends_moved_and_edited_films_and_removes_what_is_gone(synth_dir, tmp_path):
    """Before, the marker was 'N files M bytes': a film moved between classes or edited at the same size was
    'skipped', and a deleted val/ stayed on the volume."""
    src, dest = tmp_path / "src", tmp_path / "volume"
    shutil.copytree(synth_dir, src)
    (src / "val" / "NORMAL").mkdir(parents=True)
    shutil.copy(next((src / "train" / "NORMAL").glob("*.jpeg")), src / "val" / "NORMAL" / "IM-7777-0001.jpeg")
    run_xray("upload", src, "--dest", dest, "--local")
    assert (dest / "val").is_dir()
    moved = sorted((src / "train" / "NORMAL").glob("*.jpeg"))[0]
    moved.rename(src / "train" / "PNEUMONIA" / moved.name)  # relabelled: same bytes, other class
    edited = sorted((src / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    data = bytearray(edited.read_bytes())
    data[-3] ^= 0x01  # edited in place at the same size
    edited.write_bytes(bytes(data))
    shutil.rmtree(src / "val")
    result = run_xray("upload", src, "--dest", dest, "--local")
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["removed"] == ["val"] and "val: not in SRC any more; removed" in result.stderr
    assert report["sent"] == ["test", "train"] and report["files_sent"] == 2 and report["files_removed"] == 1
    assert _tree(dest) == _tree(src) and not (dest / "val").exists()
    assert not (dest / "train" / "NORMAL" / moved.name).exists()


@pytest.mark.parametrize("name, kind", [
    ("chest_xray/train/NORMAL/../../../../etc/evil.jpeg", "'..'"),
    ("/chest_xray/train/NORMAL/abs.jpeg", "an absolute path"),
    ("chest_xray/train/NORMAL/link.jpeg", "a link"),
    ("chest_xray/train/NORMAL/dev.jpeg", "a special file"),
])
def test_archive_members_are_checked_before_anything_is_sent(synth_dir, tmp_path, name, kind):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(synth_dir / "train", "chest_xray/train")
        tar.add(synth_dir / "test", "chest_xray/test")
        info = tarfile.TarInfo(name)
        if kind == "a link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "a special file":
            info.type = tarfile.CHRTYPE
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\xff\xd8\xff\xe0"))
    dest = tmp_path / "volume"
    result = run_xray("upload", archive, "--dest", dest, "--local", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert name in line and kind in line and "nothing was sent" in line
    assert not dest.exists()


def _peak_rss_mib(*args):
    """Peak RSS of `xray ARGS` in its own process (MiB), and its result."""
    import subprocess
    import sys

    code = ("import resource, sys; from xray.cli import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.strip().splitlines()[-1]) / 1024, result


def test_zip_members_are_streamed_in_chunks_not_read_whole(tmp_path):
    """A 300 KB zip whose member inflates to 300 MiB: before, each member was read whole (656 MB peak RSS). The
    command's peak memory over the same command on a tiny zip stays far below the member's size."""
    archives = {}
    for name, size in (("tiny", 3), ("big", 300 * 2**20)):
        archives[name] = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(archives[name], "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", b"\xff\xd8\xff" + b"\0" * size)
            z.writestr("chest_xray/test/NORMAL/IM-0002-0001.jpeg", b"\xff\xd8\xff")
    assert archives["big"].stat().st_size < 1_000_000
    baseline, _ = _peak_rss_mib("upload", archives["tiny"], "--dest", tmp_path / "v1", "--local")
    peak, _ = _peak_rss_mib("upload", archives["big"], "--dest", tmp_path / "v2", "--local")
    assert peak - baseline < 64, f"{peak:.0f} MiB peak for a 300 MiB member, {baseline:.0f} MiB for a tiny one"
    assert (tmp_path / "v2" / "train" / "NORMAL" / "IM-0001-0001.jpeg").stat().st_size == 300 * 2**20 + 3


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_run(synth_dir, tmp_path):
    dest = tmp_path / "volume"
    run_xray("upload", synth_dir, "--dest", dest, "--local")
    before = _tree(dest)
    os.rename(dest / "train", dest / ".old-train")  # the old copy moved aside, the new one never renamed in
    result = run_xray("upload", synth_dir, "--dest", dest, "--local")
    assert json.loads(result.stdout.splitlines()[-1])["skipped"] == ["test", "train"]
    assert _tree(dest) == before and not (dest / ".old-train").exists()


def test_a_folder_without_the_layout_is_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpeg").write_bytes(b"x")
    result = run_xray("upload", tmp_path / "images", "--dest", tmp_path / "d", "--local", check=False)
    assert result.returncode == 2 and "no train/ folder found" in result.stderr and "Traceback" not in result.stderr
