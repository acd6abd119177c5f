"""Faults that know TCP against the kernel's own curl (issue 22): two SYN-ACKs dropped,
then the handshake completes; the capture lacks them and the ladder shows each firing.
A connection black-holed past 100 kB makes `curl --max-time 3` time out (exit 28)."""

from __future__ import annotations

import pytest

from ustack.ladder import capture_events

from .support import pattern_sha256, require_tools, sha256

pytestmark = pytest.mark.netns


def test_two_syn_acks_dropped_then_curl_gets_through(netns, start_ustack, tmp_path):
    require_tools("curl")
    pcap = tmp_path / "rules.pcap"
    server = start_ustack(netns, "http:80", args=[
        "--trace", "--pcap", str(pcap), "--rule", "drop flags=SA count=2 port=80"])
    got = netns.run(["curl", "-sS", "--fail", "--max-time", "15",
                     "http://10.77.0.2/bytes/100000"], timeout=25)
    assert got.returncode == 0, got.stderr.decode()
    assert sha256(got.stdout) == pattern_sha256(100_000)
    status, _ = server.stop()
    log = server.stderr()
    assert status == 0, log
    assert "rule drop flags=SA port=80 count=2" in log  # the start-up line, to replay it
    assert log.count("fault: dropped (drop flags=SA port=80 count=2)") == 2, log
    assert "rule_fired=2" in log, log
    with pcap.open("rb") as f:
        events, _ = capture_events(f, "10.77.0.2")
    syn_acks = [e for e in events if e.outbound and e.flags & 0x12 == 0x12]
    assert len(syn_acks) == 1, syn_acks  # the two dropped never reached the kernel
    faults = (tmp_path / "rules.pcap.faults").read_text()
    assert faults.count("dropped (drop flags=SA port=80 count=2)") == 2, faults


def test_a_black_hole_makes_curl_time_out(netns, start_ustack):
    require_tools("curl")
    server = start_ustack(netns, "http:80", args=["--rule", "blackhole after=100000"])
    got = netns.run(["curl", "-sS", "--max-time", "3", "-o", "/dev/null",
                     "http://10.77.0.2/bytes/1000000"], timeout=15)
    assert got.returncode == 28, (got.returncode, got.stderr.decode())  # a timeout
    server.stop()
    assert "rule_fired=" in server.stderr()


def test_a_reset_injected_after_100_kb_makes_curl_fail(netns, start_ustack):
    require_tools("curl")
    server = start_ustack(netns, "http:80", args=["--rule", "reset after=100000 dir=tx"])
    got = netns.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                     "http://10.77.0.2/bytes/1000000"], timeout=20)
    assert got.returncode == 56, (got.returncode, got.stderr.decode())  # reset by peer
    server.stop()
    assert "rule_fired=1" in server.stderr()


def test_a_zero_window_holds_the_kernels_upload_back(netns, start_ustack, tmp_path):
    import time

    from .support import random_file

    require_tools("nc")
    server = start_ustack(netns, "echo:7", args=["--rule",
                                                 "zerowindow ms=1000 after=100000"])
    want = random_file(tmp_path / "up.bin", 1_000_000)
    start = time.monotonic()
    with (tmp_path / "up.bin").open("rb") as stdin:
        echo = netns.run(["nc", "-N", "10.77.0.2", "7"], stdin=stdin, timeout=30)
    took = time.monotonic() - start
    assert echo.returncode == 0 and sha256(echo.stdout) == want, echo.stderr.decode()
    assert took >= 1.0, took  # the kernel waited out the zero window, probing it
    server.stop()
    assert "rule_fired=1" in server.stderr()
