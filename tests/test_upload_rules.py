"""xray/data/upload.py's and xray/data/receiver.py's smaller rules, in-process: what list_source makes of each kind of archive member, how a member
that is shorter or longer than declared is stopped, the progress line, the transport's argv and how it waits for
its receiver, and each one-line refusal of the sender and the receiver, word for word. The whole upload, sender
and receiver in one process: test_upload_in_process.py; as separate processes: test_upload.py."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest

from xray.data import receiver, upload
from test_upload_in_process import FILES, _listed, _source, _stream, in_process_transport


@pytest.fixture
def transport(monkeypatch):
    return in_process_transport(monkeypatch)


def _zip(path, members: dict, modes: dict | None = None):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            z.writestr(info, data)
    return path


@pytest.mark.parametrize("mode, reason", [(stat.S_IFLNK | 0o777, "a link"), (stat.S_IFIFO | 0o644, "a special file"),
                                          (stat.S_IFCHR | 0o644, "a special file")])
def test_a_zip_member_that_is_not_a_regular_file_is_refused_by_name(tmp_path, mode, reason):
    archive = _zip(tmp_path / "k.zip", {"train/NORMAL/a.jpeg": b"a", "train/NORMAL/odd": b"x"},
                   {"train/NORMAL/odd": mode})
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(archive)
    assert str(caught.value) == (f"SRC={archive}: member 'train/NORMAL/odd' has {reason}; nothing was sent. Fix or "
                                 "re-create the archive")
    assert caught.value.code == 2


def test_zip_members_with_a_regular_or_no_recorded_type_are_files_and_folders_are_skipped(tmp_path):
    archive = _zip(tmp_path / "k.zip", {"train/": b"", "train/NORMAL/a.jpeg": b"aa", "train/NORMAL/b.jpeg": b"bbb",
                                        "outside/train/x.jpeg": b"x"},
                   {"train/NORMAL/b.jpeg": stat.S_IFREG | 0o644})
    splits = upload.list_source(archive)
    assert [(m.path, m.size, m.origin) for m in splits["train"]] == [("NORMAL/a.jpeg", 2, "train/NORMAL/a.jpeg"),
                                                                     ("NORMAL/b.jpeg", 3, "train/NORMAL/b.jpeg")]
    assert list(splits) == ["train"]
    with splits["train"][1].open() as f:
        assert f.read() == b"bbb"


def test_a_zip_member_with_a_bad_name_is_refused_before_anything_else(tmp_path):
    archive = _zip(tmp_path / "k.zip", {"train/NORMAL/a.jpeg": b"a", "../evil.jpeg": b"e"})
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(archive)
    assert str(caught.value) == (f"SRC={archive}: member '../evil.jpeg' has a '..' component (it would land outside "
                                 "the folder); nothing was sent. Fix or re-create the archive")


def _tar(path, members: list[tarfile.TarInfo], data: dict | None = None, mode="w"):
    with tarfile.open(path, mode) as tar:
        for info in members:
            body = (data or {}).get(info.name)
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


def _info(name, kind=tarfile.REGTYPE, **fields):
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize("kind, reason", [(tarfile.SYMTYPE, "a link"), (tarfile.LNKTYPE, "a link"),
                                          (tarfile.CHRTYPE, "a special file (device or fifo)"),
                                          (tarfile.FIFOTYPE, "a special file (device or fifo)")])
def test_a_tar_member_that_is_not_a_regular_file_is_refused_by_name(tmp_path, kind, reason):
    archive = _tar(tmp_path / "k.tar", [_info("train/NORMAL/a.jpeg"), _info("train/NORMAL/odd", kind, linkname="a.jpeg")],
                   {"train/NORMAL/a.jpeg": b"a"})
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(archive)
    assert str(caught.value) == (f"SRC={archive}: member 'train/NORMAL/odd' has {reason}; nothing was sent. Fix or "
                                 "re-create the archive")


def test_a_gzipped_tar_is_a_source_its_folders_skipped_and_a_bad_name_refused(tmp_path):
    archive = _tar(tmp_path / "k.tar.gz", [_info("data", tarfile.DIRTYPE), _info("data/train/NORMAL/a.jpeg"),
                                           _info("data/test/NORMAL/b.jpeg")],
                   {"data/train/NORMAL/a.jpeg": b"aa", "data/test/NORMAL/b.jpeg": b"b"}, mode="w:gz")
    splits = upload.list_source(archive)
    assert {s: [(m.path, m.size, m.origin) for m in ms] for s, ms in splits.items()} == {
        "train": [("NORMAL/a.jpeg", 2, "data/train/NORMAL/a.jpeg")], "test": [("NORMAL/b.jpeg", 1, "data/test/NORMAL/b.jpeg")]}
    assert upload.file_list(splits["train"]) == {"NORMAL/a.jpeg": [2, hashlib.sha256(b"aa").hexdigest()]}
    bad = _tar(tmp_path / "bad.tar", [_info("train/NORMAL/a.jpeg"), _info("/etc/passwd")], {"train/NORMAL/a.jpeg": b"a"})
    with pytest.raises(upload.UploadError, match=r"member '/etc/passwd' has an absolute path; nothing was sent"):
        upload.list_source(bad)
    folder_named_badly = _tar(tmp_path / "dir.tar", [_info("../up", tarfile.DIRTYPE)])
    with pytest.raises(upload.UploadError, match=r"member '../up' has a '..' component"):
        upload.list_source(folder_named_badly)


def test_a_file_that_is_neither_folder_nor_archive_is_one_line(tmp_path):
    (tmp_path / "films.7z").write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(tmp_path / "films.7z")
    assert (str(caught.value), caught.value.code) == (
        f"SRC={tmp_path / 'films.7z'} is not a folder, a .zip or a .tar archive", 2)
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source("s3://bucket/films")
    assert str(caught.value) == ("SRC=s3://bucket/films: only local folders and archives are uploaded; for a bucket, "
                                 "copy it into the volume from a pod of your own (e.g. gcloud storage rsync) or shard "
                                 "it where it is readable")
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(tmp_path / "none")
    assert str(caught.value) == f"SRC={tmp_path / 'none'} does not exist"


def test_the_layout_is_found_at_the_shallowest_train_folder_and_only_splits_are_taken(tmp_path):
    src = _source(tmp_path / "src", {"kaggle/train/NORMAL/a.jpeg": b"a", "kaggle/val/N/v.jpeg": b"v",
                                     "kaggle/extra/NORMAL/x.jpeg": b"x", "kaggle/train.jpeg": b"not a folder",
                                     "kaggle/test/top.jpeg": b"t", "kaggle/nested/train/NORMAL/n.jpeg": b"n"})
    splits = upload.list_source(src)
    assert {s: [m.path for m in ms] for s, ms in splits.items()} == {
        "train": ["NORMAL/a.jpeg"], "val": ["N/v.jpeg"], "test": ["top.jpeg"]}
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(_source(tmp_path / "flat", {"NORMAL/a.jpeg": b"a", "train": b"a file named train"}))
    assert str(caught.value) == ("no train/ folder found: expected the Kaggle chest_xray layout "
                                 "(train/{NORMAL,PNEUMONIA}/, test/..., optionally val/...)")


def _member(data: bytes, size: int) -> upload.Member:
    return upload.Member("NORMAL/a.jpeg", size, lambda: io.BytesIO(data), "train/NORMAL/a.jpeg")


def test_a_member_longer_or_shorter_than_declared_is_stopped_with_both_sizes(monkeypatch):
    monkeypatch.setattr(upload, "CHUNK", 4)
    assert b"".join(upload.member_chunks(_member(b"12345678", 8))) == b"12345678"
    reads = []
    longer = _member(b"x" * 40, 5)
    with pytest.raises(OSError) as caught:
        for chunk in upload.member_chunks(longer):
            reads.append(chunk)
    assert str(caught.value) == "more bytes than the 5 its header declares"
    assert sum(map(len, reads)) <= 5 + 4  # stopped within one chunk, never read whole
    with pytest.raises(OSError) as caught:
        list(upload.member_chunks(_member(b"abc", 5)))
    assert str(caught.value) == "3 bytes where its header declares 5"
    with pytest.raises(upload.UploadError) as caught:
        upload.file_list([_member(b"abc", 5)])
    assert str(caught.value) == ("cannot read train/NORMAL/a.jpeg from SRC (3 bytes where its header declares 5); "
                                 "nothing was sent")


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """The progress line's clock, moved by the test."""
    made = _Clock()
    monkeypatch.setattr(upload.time, "monotonic", made)
    return made


def test_the_progress_line_shows_files_megabytes_and_rate_at_most_once_a_second_and_at_the_end(clock):
    out = io.StringIO()
    progress = upload._Progress(4_000_000, out, "sent")
    clock.now += 0.5
    progress.add(1_000_000)
    assert out.getvalue() == ""  # under a second since the start: no line yet
    clock.now += 0.5
    progress.add(1_000_000)
    assert out.getvalue() == "\r  sent 2 files, 2.0/4.0 MB (2.0 MB/s)"
    clock.now += 0.25
    progress.add(1_000_000)
    assert out.getvalue().count("\r") == 1  # a quarter second after the last line
    clock.now += 0.25
    progress.add(1_000_000)  # the last file: a line whatever the time
    assert out.getvalue().endswith("\r  sent 4 files, 4.0/4.0 MB (2.7 MB/s)")
    progress.end()
    assert out.getvalue().endswith("\n")
    quiet = io.StringIO()
    upload._Progress(0, quiet, "sent").end()  # nothing sent: no empty line
    assert quiet.getvalue() == ""


def test_the_transports_run_the_receiver_module_in_the_pod_or_here():
    assert upload.kubectl_exec("team-a", "xray-uploader").prefix == ["kubectl", "exec", "-i", "-n", "team-a",
                                                                     "xray-uploader", "--"]
    assert upload.kubectl_exec("team-a", "xray-uploader").python == "python"
    here = upload.local_exec()
    assert (here.prefix, here.python) == ([], sys.executable)
    result = upload.Transport(["env", "XRAY_SEEN=1"], sys.executable).run(["bogus"])
    assert result.returncode == 2 and result.args == ["env", "XRAY_SEEN=1", sys.executable, "-m", "xray.data.receiver", "bogus"]
    assert result.stderr.decode().startswith("usage: python -m xray.data.receiver")


def test_a_stream_the_receiver_stops_reading_ends_quietly_and_a_local_failure_is_raised_after_the_wait(tmp_path):
    transport = upload.Transport(["sh", "-c", 'head -c 10 >/dev/null; echo "receiver: refused" >&2; exit 1', "sh"],
                                 "unused")

    def endless(pipe):
        while True:
            pipe.write(b"x" * 65536)

    result = transport.run(["receive"], stream=endless)  # the receiver exits: BrokenPipeError, not an exception
    assert result.returncode == 1 and result.stderr == b"receiver: refused\n"
    waited = upload.Transport(["sh", "-c", f"cat >/dev/null; touch {tmp_path}/finished", "sh"], "unused")

    def failing(pipe):
        pipe.write(b"part")
        raise OSError("the archive broke")

    with pytest.raises(OSError, match="the archive broke"):
        waited.run(["receive"], stream=failing)
    assert (tmp_path / "finished").exists()  # the receiver saw the stream end and finished before the raise


def test_the_receivers_last_line_is_the_reason_or_its_exit_status():
    failed = subprocess.CompletedProcess([], 1, b"", b"Traceback ...\nreceiver: disk full\n\n")
    assert upload.receiver_error(failed) == "receiver: disk full"
    assert upload.receiver_error(subprocess.CompletedProcess([], 137, b"", b"")) == "exit status 137"


class _Fails:
    """A transport whose receiver fails the command named ``which`` with ``stderr``."""

    def __init__(self, real, which, stderr=b"receiver: Permission denied\n"):
        self.real, self.which, self.stderr = real, which, stderr

    def run(self, args, stream=None):
        if args[0] == self.which:
            if stream:
                stream(io.BytesIO())
            return subprocess.CompletedProcess(args, 1, b"", self.stderr)
        return self.real.run(args, stream)


def test_each_receiver_refusal_is_one_line_that_says_what_stays(tmp_path, transport):
    src, dest = _source(tmp_path / "src", FILES), tmp_path / "volume"
    with pytest.raises(upload.UploadError) as caught:
        upload.upload(src, str(dest), _Fails(transport, "state"), out=io.StringIO())
    assert str(caught.value) == f"cannot read {dest} where it is mounted: receiver: Permission denied"
    with pytest.raises(upload.UploadError) as caught:
        upload.upload(src, str(dest), _Fails(transport, "receive"), out=io.StringIO())
    assert str(caught.value) == (f"test: the receiving side refused the upload (receiver: Permission denied); "
                                 f"{dest}/test is unchanged. Re-run the same command")
    upload.upload(src, str(dest), transport, out=io.StringIO())
    (src / "test/NORMAL/c.jpeg").unlink()
    with pytest.raises(upload.UploadError) as caught:
        upload.upload(src, str(dest), _Fails(transport, "remove"), out=io.StringIO())
    assert str(caught.value) == f"test: cannot remove it from {dest}: receiver: Permission denied"
    assert (dest / "test/NORMAL/c.jpeg").exists()


def test_what_an_upload_prints_and_reports(tmp_path, transport):
    files = {"train/NORMAL/a.jpeg": b"a" * 1_500_000, "train/NORMAL/b.jpeg": b"b" * 600_000}
    src, dest = _source(tmp_path / "src", files), tmp_path / "volume"
    out = io.StringIO()
    report = upload.upload(src, str(dest), transport, out=out)
    lines = out.getvalue().replace("\r", "\n").splitlines()
    assert lines[0] == ""  # the progress line starts with a carriage return
    assert lines[1].startswith("  train: checking 2 files, 2.1/2.1 MB (")
    assert "train: sending 2 of 2 files (2.1 MB)" in lines
    assert any(line.startswith("  sent 2 files, 2.1/2.1 MB (") for line in lines)
    assert report == {"sent": ["train"], "skipped": [], "removed": [], "dest": str(dest), "files_sent": 2,
                      "files_removed": 0}


def test_the_receiver_refuses_an_unknown_split_and_a_broken_stream(tmp_path):
    for call in (lambda: receiver.receive(str(tmp_path), "extra", io.BytesIO()),
                 lambda: receiver.remove(str(tmp_path), "extra")):
        with pytest.raises(upload.UploadError) as caught:
            call()
        assert str(caught.value) == "unknown split 'extra'"
    whole = _stream({"a.jpeg": b"a" * 5000}, {"a.jpeg": [5000, hashlib.sha256(b"a" * 5000).hexdigest()]}).getvalue()
    with pytest.raises(upload.UploadError) as caught:
        receiver.receive(str(tmp_path), "train", io.BytesIO(whole[:1500]))
    assert str(caught.value).startswith("the stream ended early (") and str(caught.value).endswith("): interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder left, nothing swapped in


def test_the_receiver_sends_again_what_an_unreadable_index_cannot_vouch_for(tmp_path):
    root = tmp_path / "volume"
    files = {"NORMAL/a.jpeg": b"aa"}
    receiver.receive(str(root), "train", _stream(files, _listed(files)))
    (root / "train" / receiver.INDEX_NAME).write_text("{not json")
    assert receiver.state(str(root)) == {"train": None}
    with pytest.raises(upload.UploadError, match="NORMAL/a.jpeg did not arrive"):  # nothing kept without an index
        receiver.receive(str(root), "train", _stream({}, _listed(files)))
    assert receiver.receive(str(root), "train", _stream(files, _listed(files)))["received"] == 1
    assert json.loads((root / "train" / receiver.INDEX_NAME).read_text()) == _listed(files)


def test_the_kept_copy_is_made_of_hard_links_without_the_old_index(tmp_path):
    root = tmp_path / "volume"
    files = {"NORMAL/a.jpeg": b"aa", "PNEUMONIA/b.jpeg": b"bbb"}
    receiver.receive(str(root), "train", _stream(files, _listed(files)))
    inode = (root / "train/NORMAL/a.jpeg").stat().st_ino
    receiver.link_tree(root / "train", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file()) \
        == ["NORMAL/a.jpeg", "PNEUMONIA/b.jpeg"]
    assert (tmp_path / "copy/NORMAL/a.jpeg").stat().st_ino == inode
    changed = {"PNEUMONIA/b.jpeg": b"BBB"}
    receiver.receive(str(root), "train", _stream(changed, {**_listed(files), **_listed(changed)}))
    assert (root / "train/NORMAL/a.jpeg").stat().st_ino == inode  # kept, not copied
    assert (tmp_path / "copy/PNEUMONIA/b.jpeg").read_bytes() == b"bbb"  # a replaced file never changes its old links


def test_remove_repairs_an_interrupted_swap_first_and_takes_the_split_away(tmp_path):
    root = tmp_path / "volume"
    (root / ".old-val").mkdir(parents=True)
    (root / ".old-val" / "v.jpeg").write_bytes(b"v")
    receiver.remove(str(root), "val")
    assert sorted(p.name for p in root.iterdir()) == []
    receiver.remove(str(root), "test")  # nothing there: nothing to do
    assert receiver.main(["receive", str(root)]) == 2 and receiver.main(["state"]) == 2 and receiver.main([]) == 2


@pytest.mark.parametrize("name, problem", [("train/NORMAL/a b.jpeg", None), ("C:", "an absolute path"),
                                           ("a\0b", "an empty name or control characters in it"),
                                           ("a\x1fb", "an empty name or control characters in it")])
def test_spaces_are_fine_in_a_member_name_and_a_bare_drive_is_absolute(name, problem):
    assert upload.name_problem(name) == problem


def test_a_receiver_message_that_is_not_utf8_still_comes_back_as_a_line():
    failed = subprocess.CompletedProcess([], 1, b"", b"receiver: \xff\xfe cannot write\n")
    assert upload.receiver_error(failed) == "receiver: \ufffd\ufffd cannot write"


def test_a_new_copy_without_its_index_is_not_trusted_and_the_old_one_comes_back(tmp_path):
    """A split folder without the receiver's index (made by hand, or by an older version) never wins over the old
    copy an interrupted swap left: the old copy comes back."""
    root = tmp_path / "volume"
    (root / ".old-train").mkdir(parents=True)
    (root / ".old-train" / "a.jpeg").write_bytes(b"old")
    (root / "train").mkdir()
    (root / "train" / "half.jpeg").write_bytes(b"new, unverified")
    assert receiver.state(str(root)) == {"train": None}
    assert sorted(p.name for p in (root / "train").iterdir()) == ["a.jpeg"] and not (root / ".old-train").exists()


def test_the_receiver_makes_a_nested_destination_and_nested_folders(tmp_path):
    dest = tmp_path / "volume" / "team" / "incoming"
    assert receiver.state(str(dest)) == {} and dest.is_dir()
    files = {"NORMAL/2024/a.jpeg": b"aa", "PNEUMONIA/b.jpeg": b"b"}
    nested = tmp_path / "other" / "deep"
    assert receiver.receive(str(nested), "test", _stream(files, _listed(files)))["received"] == 2
    assert (nested / "test" / "NORMAL" / "2024" / "a.jpeg").read_bytes() == b"aa"


def test_a_staging_folder_a_killed_receiver_left_is_cleared_first(tmp_path):
    root = tmp_path / "volume"
    files = {"NORMAL/a.jpeg": b"aa"}
    receiver.receive(str(root), "train", _stream(files, _listed(files)))
    (root / ".partial-train" / "NORMAL").mkdir(parents=True)
    (root / ".partial-train" / "NORMAL" / "a.jpeg").write_bytes(b"half")  # where the kept copy's link must go
    assert receiver.receive(str(root), "train", _stream({}, _listed(files)))["received"] == 0
    assert (root / "train" / "NORMAL" / "a.jpeg").read_bytes() == b"aa" and not (root / ".partial-train").exists()


def test_the_receiver_reads_each_member_in_chunks(tmp_path, monkeypatch):
    sizes = []
    real = tarfile.TarFile.extractfile

    def recording(self, member):
        source = real(self, member)
        read = source.read

        def chunked(size=-1):
            sizes.append(size)
            return read(size)

        source.read = chunked
        return source

    monkeypatch.setattr(tarfile.TarFile, "extractfile", recording)
    monkeypatch.setattr(receiver, "CHUNK", 1000)
    files = {"NORMAL/a.jpeg": b"a" * 2500}
    receiver.receive(str(tmp_path), "train", _stream(files, _listed(files)))
    assert sizes[:4] == [1000, 1000, 1000, 1000]  # the member (3 reads and the empty one), then the list


def test_verification_names_the_first_three_problems_and_counts_all(tmp_path):
    listed = {f"NORMAL/{i}.jpeg": [1, "0" * 64] for i in range(4)}
    with pytest.raises(upload.UploadError) as caught:
        receiver.receive(str(tmp_path), "train", _stream({}, listed))
    assert str(caught.value) == ("4 file(s) failed verification: NORMAL/0.jpeg did not arrive; NORMAL/1.jpeg did not "
                                 "arrive; NORMAL/2.jpeg did not arrive")


def test_the_receivers_command_line_needs_its_exact_arguments(tmp_path, capsys):
    for argv in (["bogus", str(tmp_path), "train"], ["remove", str(tmp_path)], ["state", str(tmp_path), "x"],
                 ["receive", str(tmp_path), "train", "x"]):
        assert receiver.main(argv) == 2, argv
        assert capsys.readouterr().err.startswith("usage: python -m xray.data.receiver"), argv


def test_appledouble_files_and_paths_outside_the_root_are_left_out_and_the_shallowest_root_wins(tmp_path):
    src = _source(tmp_path / "src", {"AAA/notes.jpeg": b"outside", "b/train/NORMAL/1.jpeg": b"1",
                                     "b/train/NORMAL/._1.jpeg": b"fork", "b/train/top.jpeg": b"t",
                                     "a/x/train/NORMAL/2.jpeg": b"2"})
    assert {s: [m.origin for m in ms] for s, ms in upload.list_source(src).items()} == {
        "train": ["b/train/NORMAL/1.jpeg", "b/train/top.jpeg"]}  # ("b",) is shallower than ("a", "x")


def test_a_tar_with_a_bad_name_is_refused_naming_the_archive(tmp_path):
    bad = _tar(tmp_path / "bad.tar", [_info("train/NORMAL/a.jpeg"), _info("/etc/passwd")], {"train/NORMAL/a.jpeg": b"a"})
    with pytest.raises(upload.UploadError) as caught:
        upload.list_source(bad)
    assert str(caught.value) == (f"SRC={bad}: member '/etc/passwd' has an absolute path; nothing was sent. Fix or "
                                 "re-create the archive")


class _Recording(io.BytesIO):
    def __init__(self, data, sizes):
        super().__init__(data)
        self.sizes = sizes

    def read(self, size=-1):
        self.sizes.append(size)
        return super().read(size)


def test_the_sender_reads_members_in_chunks(monkeypatch):
    monkeypatch.setattr(upload, "CHUNK", 4)
    sizes = []
    member = upload.Member("a.jpeg", 10, lambda: _Recording(b"x" * 10, sizes), "train/a.jpeg")
    assert b"".join(upload.member_chunks(member)) == b"x" * 10 and sizes == [4, 4, 4, 4]


def test_the_transport_hands_back_the_receivers_argv_output_and_status():
    transport = upload.Transport(["sh", "-c", 'cat >/dev/null; echo "{\\"files\\": 1}"; echo warn >&2; exit 3', "sh"],
                                 "py")
    result = transport.run(["receive", "/v", "train"], stream=lambda pipe: pipe.write(b"tar bytes"))
    assert result.args == ["sh", "-c", 'cat >/dev/null; echo "{\\"files\\": 1}"; echo warn >&2; exit 3', "sh", "py", "-m",
                           "xray.data.receiver", "receive", "/v", "train"]
    assert (result.returncode, result.stdout, result.stderr) == (3, b'{"files": 1}\n', b"warn\n")


def test_megabytes_and_rate_are_decimal_and_a_fast_finish_is_not_rounded_up_to_a_second(clock):
    out = io.StringIO()
    progress = upload._Progress(1_150_001, out, "sent")
    clock.now += 0.5
    progress.add(1_150_001)  # the whole total in half a second
    assert out.getvalue() == "\r  sent 1 files, 1.2/1.2 MB (2.3 MB/s)"
    slower = io.StringIO()
    progress = upload._Progress(2_300_002, slower, "sent")
    clock.now += 1.0
    progress.add(1_150_001)  # a second in: the rate is decimal megabytes per second too
    assert slower.getvalue() == "\r  sent 1 files, 1.2/2.3 MB (1.2 MB/s)"


def test_the_sending_line_counts_decimal_megabytes_and_dest_keeps_its_name(tmp_path, transport):
    src = _source(tmp_path / "src", {"train/NORMAL/a.jpeg": b"a" * 1_150_001})
    out = io.StringIO()
    report = upload.upload(src, str(tmp_path / "volumeX") + "//", transport, out=out)
    assert "train: sending 1 of 1 files (1.2 MB)\n" in out.getvalue()
    assert report["dest"] == str(tmp_path / "volumeX") and (tmp_path / "volumeX" / "train" / "NORMAL" / "a.jpeg").exists()


def test_a_failure_of_the_stream_itself_is_not_blamed_on_a_source_file(tmp_path, transport):
    src, dest = _source(tmp_path / "src", FILES), tmp_path / "volume"

    class BrokenPipe:
        def run(self, args, stream=None):
            if stream is None:
                return transport.run(args)

            class Pipe:
                def write(self, data):
                    raise OSError(5, "Input/output error")

            stream(Pipe())

    with pytest.raises(upload.UploadError) as caught:
        upload.upload(src, str(dest), BrokenPipe(), out=io.StringIO())
    assert str(caught.value) == (f"test: sending failed ([Errno 5] Input/output error); the stream was stopped and "
                                 f"{dest}/test on the volume is unchanged")


def _verified(data: bytes, chunk=4, expected=None):
    member = upload.Member("a.jpeg", len(data), lambda: io.BytesIO(data), "train/a.jpeg")
    return upload._Verified(member, expected or hashlib.sha256(data).hexdigest())


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(upload, "CHUNK", 4)


def test_the_verified_reader_returns_exactly_what_is_asked_across_chunks(small_chunks):
    reader = _verified(b"0123456789")
    assert reader.read(2) == b"01" and reader.read(0) == b"" and reader.read(7) == b"2345678"
    assert reader.read(5) == b"9" and reader.read(5) == b"" and reader.read() == b""
    whole = _verified(b"0123456789")
    assert whole.read() == b"0123456789" and whole.read() == b"" and whole.read(3) == b""
    assert _verified(b"0123456789").read(-1) == b"0123456789"
    assert _verified(b"").read(3) == b""


def test_the_verified_reader_checks_the_hash_once_all_of_it_was_taken_not_before(small_chunks):
    reader = _verified(b"01234")  # one byte past a chunk: the check must wait for it
    assert reader.read(4) == b"0123" and reader.read(1) == b"4"
    changed = _verified(b"0123456789", expected=hashlib.sha256(b"0123456780").hexdigest())
    assert changed.read(8) == b"01234567"
    with pytest.raises(upload._Changed) as caught:
        changed.read(2)
    assert str(caught.value) == "it changed while it was being uploaded" and caught.value.origin == "train/a.jpeg"


def test_files_directly_in_train_are_found(tmp_path):
    src = _source(tmp_path / "src", {"train/a.jpeg": b"a", "test/b.jpeg": b"b"})
    assert {s: [m.path for m in ms] for s, ms in upload.list_source(src).items()} == {"train": ["a.jpeg"],
                                                                                     "test": ["b.jpeg"]}


def _bytes_read(pid: int) -> int:
    """rchar of /proc/PID/io: bytes the process has read (0 before it starts)."""
    try:
        fields = dict(line.split(": ") for line in open(f"/proc/{pid}/io").read().splitlines())
    except FileNotFoundError:
        return 0
    return int(fields["rchar"])


def test_receiver_file_writes_one_file_whole_and_a_kill_mid_stream_leaves_the_previous_one(tmp_path):
    """`python -m xray.data.receiver file DEST NAME` (what make weights-cluster runs in the uploader pod through
    kubectl exec -i), as a process: stdin lands as DEST/NAME and the sha256 printed is the bytes'; a second copy
    killed half-way (SIGKILL, the stream open) leaves the first file as it was and no partial file behind."""
    dest = tmp_path / "weights"
    first = bytes(range(256)) * 8192  # 2 MiB: more than one read block
    ran = subprocess.run([sys.executable, "-m", "xray.data.receiver", "file", str(dest), "w.h5"], input=first,
                         capture_output=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.decode().strip() == hashlib.sha256(first).hexdigest()
    assert (dest / "w.h5").read_bytes() == first
    process = subprocess.Popen([sys.executable, "-m", "xray.data.receiver", "file", str(dest), "w.h5"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(b"\0" * (3 << 20))
    process.stdin.flush()
    # The write returned, so the receiver has read all but a pipe's buffer (64 KiB) of it; its own count says so.
    deadline = time.monotonic() + 30
    while _bytes_read(process.pid) < (2 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _bytes_read(process.pid) >= (2 << 20), "the receiver never read its input"
    process.kill()
    process.communicate()
    assert (dest / "w.h5").read_bytes() == first
    second = b"\x89HDF" * 1000
    again = subprocess.run([sys.executable, "-m", "xray.data.receiver", "file", str(dest), "w.h5"], input=second,
                           capture_output=True)
    assert again.returncode == 0 and (dest / "w.h5").read_bytes() == second
    assert sorted(p.name for p in dest.iterdir()) == ["w.h5"]  # the killed copy's partial file went with it
    refused = subprocess.run([sys.executable, "-m", "xray.data.receiver", "file", str(dest), "../w.h5"], input=b"x",
                             capture_output=True)
    assert refused.returncode == 1 and refused.stderr.decode().startswith("receiver: file name '../w.h5' is refused")
