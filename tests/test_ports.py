"""Port reservations (trainer/ports.py): numbers no other process can be given between our pick and the
server's bind. Several processes, because the claim is about several processes."""

import socket
import subprocess
import sys

import pytest

from conftest import REPO
from xray.trainer import ports

HOLDER = """
import sys
from xray.trainer.ports import Reservation
with Reservation(int(sys.argv[1]), first=int(sys.argv[2])) as numbers:
    print(" ".join(map(str, numbers)), flush=True)
    sys.stdin.read()  # held until the test closes our stdin (or kills us)
"""


def _holder(count: int, first: int, tmp_path) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(count), str(first)], cwd=REPO, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={"XRAY_PORT_LOCKS": str(tmp_path / "locks"), "PATH": "/usr/bin:/bin"})
    line = process.stdout.readline()  # the signal: printed once the reservation is held
    assert line, f"the holder exited ({process.wait()})"
    return process, [int(v) for v in line.split()]


@pytest.fixture
def first(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_PORT_LOCKS", str(tmp_path / "locks"))
    low, _ = ports.ephemeral_range()
    return low - 200  # where every reservation in a test starts, so that they meet


def test_numbers_come_from_below_the_ephemeral_range_so_the_kernel_never_hands_them_out(first):
    low, high = ports.ephemeral_range()
    with ports.Reservation(3) as numbers:
        assert len(set(numbers)) == 3 and all(ports.LOWEST <= n < low for n in numbers), (numbers, low)
    # What bind(0) is given comes from the ephemeral range: never a reservable number.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert low <= sock.getsockname()[1] <= high


def test_two_processes_starting_at_the_same_number_get_different_ports(first, tmp_path):
    one, held = _holder(5, first, tmp_path)
    two, other = _holder(5, first, tmp_path)
    try:
        assert not set(held) & set(other), (held, other)
        assert held == list(range(first, first + 5))  # nothing else was reserved there
    finally:
        for process in (one, two):
            process.stdin.close()
            process.wait(timeout=30)


def test_a_killed_holder_leaks_nothing(first, tmp_path):
    process, held = _holder(2, first, tmp_path)
    process.kill()
    process.wait()
    again, taken = _holder(2, first, tmp_path)
    again.stdin.close()
    again.wait(timeout=30)
    assert taken == held


def test_a_number_another_program_listens_on_is_skipped(first):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", first))
        listener.listen()
        with ports.Reservation(1, first=first) as (number,):
            assert number != first


def test_within_one_process_a_reservation_excludes_another_until_released(first):
    held = ports.Reservation(2, first=first)
    with ports.Reservation(2, first=first) as other:
        assert not set(held.ports) & set(other)
    held.release()
    with ports.Reservation(2, first=first) as again:
        assert again == held.ports
