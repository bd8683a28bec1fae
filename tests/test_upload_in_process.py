"""xray upload's sender and receiver in one process: a named shortcut, so that `make mutate` reaches both sides.

The receiver normally runs as `python -m xray.data.receiver ...` (a local process, or in the uploader pod through
`kubectl exec`; test_upload.py and test_k8s_real_node.py run it that way). Here `subprocess` inside xray.data.upload
is replaced by ReceiverInProcess, which runs the same entry point (xray.data.receiver.main) with the same argv, stdin,
stdout, stderr and exit status in a thread of this process. Transport.run, the tar stream and every check are
the real ones.
"""

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile

import pytest

from xray.data import receiver, upload
from test_upload import _tree


class _Stdin:
    def __init__(self, buffer):
        self.buffer = buffer


class ReceiverInProcess:
    """`python -m xray.data.receiver ARGS` as a subprocess.Popen / subprocess.run look-alike (argv, pipes, exit status)."""

    def __init__(self, argv, stdin=None, stdout=None, stderr=None):
        assert argv[1:3] == ["-m", "xray.data.receiver"], argv  # local_exec(): [python, -m, xray.data.receiver, ARGS]
        self.args = argv[3:]
        self.returncode = None
        self._out, self._err = io.StringIO(), io.StringIO()
        reader, self.stdin = _pipe()
        self._thread = threading.Thread(target=self._main, args=(reader,))
        self._thread.start()

    def _main(self, reader):
        saved = sys.stdin
        sys.stdin = _Stdin(reader)
        try:
            with contextlib.redirect_stdout(self._out), contextlib.redirect_stderr(self._err):
                self.returncode = receiver.main(self.args)
        finally:
            sys.stdin = saved
            reader.close()

    def communicate(self):
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the receiver did not finish"
        return self._out.getvalue().encode(), self._err.getvalue().encode()

    @classmethod
    def run(cls, argv, capture_output=True):
        process = cls(argv)
        process.stdin.close()
        out, err = process.communicate()
        return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _pipe():
    read_fd, write_fd = os.pipe()
    return os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")


def in_process_transport(monkeypatch):
    """local_exec() with the receiver run in this process (ReceiverInProcess in place of subprocess)."""
    monkeypatch.setattr(upload.subprocess, "Popen", ReceiverInProcess)
    monkeypatch.setattr(upload.subprocess, "run", ReceiverInProcess.run)
    return upload.local_exec()


@pytest.fixture
def transport(monkeypatch):
    return in_process_transport(monkeypatch)


def _source(root, files):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


FILES = {"train/NORMAL/a.jpeg": b"a" * 10, "train/PNEUMONIA/b.jpeg": b"b" * 20, "test/NORMAL/c.jpeg": b"c" * 5}


def _index(files, split):
    return {name[len(split) + 1:]: [len(data), hashlib.sha256(data).hexdigest()] for name, data in files.items()
            if name.startswith(split + "/")}


def test_an_upload_lands_whole_with_the_receivers_index_and_a_rerun_sends_nothing_in_process(tmp_path, transport):
    src, dest, out = _source(tmp_path / "src", FILES), tmp_path / "volume", io.StringIO()
    report = upload.upload(src, str(dest) + "/", transport, out=out)
    assert report == {"sent": ["test", "train"], "skipped": [], "removed": [], "dest": str(dest), "files_sent": 3,
                      "files_removed": 0}
    assert _tree(dest) == FILES
    for split in ("train", "test"):
        assert json.loads((dest / split / receiver.INDEX_NAME).read_text()) == _index(FILES, split)
    assert "train: sending 2 of 2 files (0.0 MB)\n" in out.getvalue()
    again = upload.upload(src, str(dest), transport, out=(out := io.StringIO()))
    assert again["sent"] == [] and again["skipped"] == ["test", "train"] and again["files_sent"] == 0
    assert "train: up to date on the volume (2 files, 30 bytes), skipped\n" in out.getvalue()
    assert receiver.state(str(dest)) == {"train": _index(FILES, "train"), "test": _index(FILES, "test")}


def test_a_rerun_sends_what_changed_and_removes_what_is_gone_in_process(tmp_path, transport):
    src, dest = _source(tmp_path / "src", FILES), tmp_path / "volume"
    upload.upload(src, str(dest), transport, out=io.StringIO())
    (src / "train/NORMAL/a.jpeg").rename(src / "train/PNEUMONIA/a.jpeg")  # relabelled: same bytes, other class
    (src / "train/PNEUMONIA/b.jpeg").write_bytes(b"B" * 20)  # edited in place, same size
    (src / "val/NORMAL").mkdir(parents=True)
    (src / "val/NORMAL/v.jpeg").write_bytes(b"v")
    for path in (src / "test").rglob("*"):
        if path.is_file():
            path.unlink()
    (src / "test/NORMAL").rmdir()
    (src / "test").rmdir()
    out = io.StringIO()
    report = upload.upload(src, str(dest), transport, out=out)
    assert report["removed"] == ["test"] and report["sent"] == ["train", "val"]
    assert report["files_sent"] == 3 and report["files_removed"] == 1  # a.jpeg (moved), b.jpeg, v.jpeg; old a gone
    assert _tree(dest) == {"train/PNEUMONIA/a.jpeg": b"a" * 10, "train/PNEUMONIA/b.jpeg": b"B" * 20,
                           "val/NORMAL/v.jpeg": b"v"}
    assert f"test: not in SRC any more; removed {dest}/test (1 files)\n" in out.getvalue()
    assert "train: sending 2 of 2 files (0.0 MB), removing 1\n" in out.getvalue()


def test_a_file_that_changes_while_it_is_sent_stops_the_stream_and_changes_nothing_in_process(tmp_path, transport,
                                                                                              monkeypatch):
    src, dest = _source(tmp_path / "src", FILES), tmp_path / "volume"
    upload.upload(src, str(dest), transport, out=io.StringIO())
    before = _tree(dest)
    (src / "train/NORMAL/a.jpeg").write_bytes(b"x" * 10)
    real_list = upload.file_list

    def list_then_change(members, progress=None):  # the file changes after it was hashed, before it is sent
        listed = real_list(members, progress)
        if "NORMAL/a.jpeg" in listed:
            (src / "train/NORMAL/a.jpeg").write_bytes(b"y" * 10)
        return listed

    monkeypatch.setattr(upload, "file_list", list_then_change)
    with pytest.raises(upload.UploadError) as caught:
        upload.upload(src, str(dest), transport, out=io.StringIO())
    assert str(caught.value) == (f"train: reading train/NORMAL/a.jpeg failed (it changed while it was being "
                                 f"uploaded); the stream was stopped and {dest}/train on the volume is unchanged")
    assert _tree(dest) == before and json.loads((dest / "train" / receiver.INDEX_NAME).read_text()) == _index(
        FILES, "train")


def _stream(files: dict, listed: dict | None, extra=()) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
        if listed is not None:
            body = json.dumps(listed).encode()
            info = tarfile.TarInfo(receiver.LIST_NAME)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    buffer.seek(0)
    return buffer


def _listed(files):
    return {name: [len(data), hashlib.sha256(data).hexdigest()] for name, data in files.items()}


def test_the_receiver_swaps_in_only_a_verified_split(tmp_path):
    dest = str(tmp_path / "volume")
    files = {"NORMAL/a.jpeg": b"aa", "PNEUMONIA/b.jpeg": b"bbb"}
    assert receiver.receive(dest, "train", _stream(files, _listed(files))) == {"split": "train", "files": 2,
                                                                             "received": 2}
    assert _tree(tmp_path / "volume" / "train") == files
    assert sorted(p.name for p in (tmp_path / "volume").iterdir()) == ["train"]  # no staging or old copy left
    cases = {
        "the stream ended before its file list: interrupted": _stream(files, None),
        "1 file(s) failed verification: NORMAL/c.jpeg did not arrive": _stream(files, {
            **_listed(files), "NORMAL/c.jpeg": [1, "0" * 64]}),
        "1 file(s) failed verification: NORMAL/a.jpeg is 2 bytes, expected 3": _stream(files, {
            **_listed(files), "NORMAL/a.jpeg": [3, "0" * 64]}),
        "1 file(s) failed verification: NORMAL/a.jpeg arrived with another sha256": _stream(files, {
            **_listed(files), "NORMAL/a.jpeg": [2, "0" * 64]}),
    }
    for message, stream in cases.items():
        with pytest.raises(upload.UploadError) as caught:
            receiver.receive(dest, "train", stream)
        assert str(caught.value) == message
        assert _tree(tmp_path / "volume" / "train") == files and sorted(
            p.name for p in (tmp_path / "volume").iterdir()) == ["train"]
    # A file kept from the previous copy (not sent) must match the index the receiver wrote for it.
    kept_wrong = {**_listed(files), "NORMAL/a.jpeg": [2, "1" * 64]}
    with pytest.raises(upload.UploadError, match="NORMAL/a.jpeg was not sent and the volume's copy differs"):
        receiver.receive(dest, "train", _stream({}, kept_wrong))
    # Only the changed file is sent; the rest is kept by hard link; a file not listed is dropped.
    changed = {"NORMAL/a.jpeg": b"aa", "PNEUMONIA/b.jpeg": b"BBB"}
    listed = _listed(changed)
    del listed["NORMAL/a.jpeg"]
    assert receiver.receive(dest, "train", _stream({"PNEUMONIA/b.jpeg": b"BBB"}, listed))["received"] == 1
    assert _tree(tmp_path / "volume" / "train") == {"PNEUMONIA/b.jpeg": b"BBB"}
    assert json.loads((tmp_path / "volume" / "train" / receiver.INDEX_NAME).read_text()) == listed


@pytest.mark.parametrize("name, kind, message", [
    ("../evil.jpeg", tarfile.REGTYPE, "member '../evil.jpeg' has a '..' component (it would land outside the folder)"),
    ("/etc/evil", tarfile.REGTYPE, "member '/etc/evil' has an absolute path"),
    ("NORMAL/link", tarfile.SYMTYPE, "member 'NORMAL/link' has a type other than a regular file"),
])
def test_the_receiver_refuses_a_member_it_must_not_write(tmp_path, name, kind, message):
    info = tarfile.TarInfo(name)
    info.type = kind
    with pytest.raises(upload.UploadError) as caught:
        receiver.receive(str(tmp_path), "train", _stream({}, {}, extra=[info]))
    assert str(caught.value) == message and not (tmp_path / "train").exists()


def test_the_receivers_command_line(tmp_path, capsys, monkeypatch):
    assert receiver.main(["state", str(tmp_path)]) == 0 and json.loads(capsys.readouterr().out) == {}
    assert receiver.main(["bogus"]) == 2
    assert capsys.readouterr().err == ("usage: python -m xray.data.receiver state DEST | receive DEST SPLIT | "
                                       "remove DEST SPLIT | file DEST NAME\n")
    assert receiver.main(["remove", str(tmp_path), "nope"]) == 1
    assert capsys.readouterr().err == "receiver: unknown split 'nope'\n"
    files = {"a.jpeg": b"a"}
    monkeypatch.setattr(sys, "stdin", _Stdin(_stream(files, _listed(files))))
    assert receiver.main(["receive", str(tmp_path), "val"]) == 0
    assert json.loads(capsys.readouterr().out) == {"split": "val", "files": 1, "received": 1}
    assert receiver.main(["remove", str(tmp_path), "val"]) == 0 and not (tmp_path / "val").exists()


def test_a_kill_between_the_two_renames_is_repaired(tmp_path):
    root = tmp_path / "volume"
    (root / ".old-train").mkdir(parents=True)
    (root / ".old-train" / "a.jpeg").write_bytes(b"old")
    assert receiver.state(str(root)) == {"train": None}  # the old copy is back (it had no index: sent again)
    assert (root / "train" / "a.jpeg").read_bytes() == b"old" and not (root / ".old-train").exists()
    (root / ".old-train").mkdir()
    (root / "train" / receiver.INDEX_NAME).write_text("{}")  # the new copy made it: the old one goes
    receiver.state(str(root))
    assert not (root / ".old-train").exists() and (root / "train" / "a.jpeg").exists()


@pytest.mark.parametrize("name, problem", [
    ("", "an empty name or control characters in it"), ("a\nb", "an empty name or control characters in it"),
    ("/abs", "an absolute path"), ("\\abs", "an absolute path"), ("C:x", "an absolute path"),
    ("a/../b", "a '..' component (it would land outside the folder)"),
    ("a\\..\\b", "a '..' component (it would land outside the folder)"),
    ("train/NORMAL/a..b.jpeg", None), ("c", None)])
def test_member_names_follow_tarfiles_data_filter(name, problem):
    assert upload.name_problem(name) == problem


def test_the_source_is_found_under_any_prefix_and_junk_is_left_out(tmp_path):
    archive = tmp_path / "k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in FILES.items():
            z.writestr(f"chest_xray/chest_xray/{name}", data)
        z.writestr("chest_xray/__MACOSX/chest_xray/train/NORMAL/._a.jpeg", b"fork")
        z.writestr("chest_xray/chest_xray/train/NORMAL/.DS_Store", b"junk")
        z.writestr("chest_xray/chest_xray/README.txt", b"not a split")
    splits = upload.list_source(archive)
    assert {s: sorted(m.path for m in ms) for s, ms in splits.items()} == {
        "train": ["NORMAL/a.jpeg", "PNEUMONIA/b.jpeg"], "test": ["NORMAL/c.jpeg"]}
    member = splits["train"][0]
    assert member.origin == "chest_xray/chest_xray/train/NORMAL/a.jpeg" and member.size == 10
    assert upload.file_list(splits["test"]) == {"NORMAL/c.jpeg": [5, hashlib.sha256(b"c" * 5).hexdigest()]}
    for bad, message in ((tmp_path / "nothing", "does not exist"), ("gs://bucket/x", "only local folders"),
                         (_source(tmp_path / "flat", {"a.jpeg": b"a"}), "no train/ folder found")):
        with pytest.raises(upload.UploadError, match=message) as caught:
            upload.list_source(bad)
        assert caught.value.code == 2
