"""Faults that know TCP against the kernel's own curl and nc (issue 22), each rule's
effect shown in the capture and its firing in the ladder: two SYN-ACKs dropped, then the
handshake completes; a black hole past 100 kB makes `curl --max-time 3` time out (exit
28); a RST after 100 kB or in ESTABLISHED makes curl fail (56); the close's final ACK
dropped makes its FIN go twice; a zero window holds an upload back; the segment carrying
byte 100,000 corrupted goes twice."""

from __future__ import annotations

import time

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


def traced(netns, start_ustack, tmp_path, services: str, rule: str):
    """ustack serving `services` with `rule`, its ladder on and a capture of the TUN."""
    pcap = tmp_path / "rules.pcap"
    server = start_ustack(netns, services, args=["--trace", "--pcap", str(pcap),
                                                 "--rule", rule])
    return server, pcap


def stopped(server, pcap) -> tuple[str, list]:
    """The server stopped: its log (with the ladder) and the capture's segments."""
    status, _ = server.stop()
    log = server.stderr()
    assert status == 0, log
    with pcap.open("rb") as f:
        events, _ = capture_events(f, "10.77.0.2")
    return log, events


def test_a_black_hole_makes_curl_time_out(netns, start_ustack, tmp_path):
    require_tools("curl")
    server, pcap = traced(netns, start_ustack, tmp_path, "http:80", "blackhole after=100000")
    got = netns.run(["curl", "-sS", "--max-time", "3", "-o", "/dev/null",
                     "http://10.77.0.2/bytes/1000000"], timeout=15)
    assert got.returncode == 28, (got.returncode, got.stderr.decode())  # a timeout
    log, events = stopped(server, pcap)
    assert log.count("fault: dropped (blackhole after=100000)") == 1, log
    assert "fault: dropped (black hole)" in log  # what followed it
    # No RST and no FIN reached curl: from its side the connection just went quiet.
    assert not any(e.outbound and e.flags & 0x05 for e in events)
    # `after` counts both directions' bytes: the request's and the answer's up to 100 kB.
    sent = sum(e.length for e in events if e.outbound)
    assert 95_000 <= sent <= 100_000, sent


def test_a_reset_injected_after_100_kb_makes_curl_fail(netns, start_ustack, tmp_path):
    require_tools("curl")
    server, pcap = traced(netns, start_ustack, tmp_path, "http:80",
                          "reset after=100000 dir=tx")
    got = netns.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                     "http://10.77.0.2/bytes/1000000"], timeout=20)
    assert got.returncode == 56, (got.returncode, got.stderr.decode())  # reset by peer
    log, events = stopped(server, pcap)
    assert "rule_fired=1" in log
    assert log.count("fault: reset injected (reset after=100000 dir=tx)") == 1, log
    resets = [e for e in events if e.outbound and e.flags & 0x04]
    isn = next(e.seq for e in events if e.outbound and e.flags & 0x02)
    # Behind the wire segment in which the request's and the answer's bytes passed 100 kB.
    assert resets and 100_000 - 500 < (resets[0].seq - isn) % 2**32 <= 101_500, resets


def test_a_reset_in_established_makes_curl_fail(netns, start_ustack, tmp_path):
    require_tools("curl")
    server, pcap = traced(netns, start_ustack, tmp_path, "http:80",
                          "reset state=ESTABLISHED dir=tx port=80")
    got = netns.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                     "http://10.77.0.2/bytes/1000000"], timeout=20)
    assert got.returncode == 56, (got.returncode, got.stderr.decode())
    log, events = stopped(server, pcap)
    assert log.count("fault: reset injected (reset state=ESTABLISHED port=80 dir=tx)") == 1
    first_rst = next(i for i, e in enumerate(events) if e.flags & 0x04)
    assert events[first_rst].outbound  # ustack's side sent (as the rule made it) the RST
    # It followed the first segment ustack sent in ESTABLISHED (after its SYN-ACK).
    assert [bool(e.flags & 0x02) for e in events[:first_rst] if e.outbound] == [True, False]


def test_the_final_acks_dropped_the_connection_still_completes(netns, start_ustack,
                                                              tmp_path):
    require_tools("curl")
    pcap = tmp_path / "rules.pcap"
    server = start_ustack(netns, "http:80", args=[
        "--trace", "--pcap", str(pcap), "--rule", "drop final=handshake dir=rx",
        "--rule", "drop final=close"])
    got = netns.run(["curl", "-sS", "--fail", "--max-time", "10",
                     "http://10.77.0.2/bytes/100000"], timeout=20)
    assert got.returncode == 0 and sha256(got.stdout) == pattern_sha256(100_000)
    # The close's FIN goes again once its final ACK was lost (after the sender's RTO,
    # 0.2 s or more): wait for it in the capture (flushed every 0.1 s), 10 s at most.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with pcap.open("rb") as f:
            if sum(1 for e in capture_events(f, "10.77.0.2")[0] if e.flags & 0x01) >= 3:
                break
        time.sleep(0.1)
    log, events = stopped(server, pcap)
    assert log.count("fault: dropped (drop final=handshake dir=rx)") == 1, log
    assert log.count("fault: dropped (drop final=close)") == 1, log
    fins = [(e.outbound, e.seq) for e in events if e.flags & 0x01]
    assert len(fins) == 3 and len(set(fins)) == 2, fins  # one of the two FINs went twice


def test_a_zero_window_holds_the_kernels_upload_back(netns, start_ustack, tmp_path):

    from .support import random_file

    require_tools("nc")
    server, pcap = traced(netns, start_ustack, tmp_path, "echo:7",
                          "zerowindow ms=1000 after=100000")
    want = random_file(tmp_path / "up.bin", 1_000_000)
    start = time.monotonic()
    with (tmp_path / "up.bin").open("rb") as stdin:
        echo = netns.run(["nc", "-N", "10.77.0.2", "7"], stdin=stdin, timeout=30)
    took = time.monotonic() - start
    assert echo.returncode == 0 and sha256(echo.stdout) == want, echo.stderr.decode()
    assert took >= 1.0, took  # the kernel waited out the zero window, probing it
    log, events = stopped(server, pcap)
    assert log.count("fault: window zeroed for 1000 ms (zerowindow after=100000 ms=1000)") == 1
    zero = [e for e in events if e.outbound and e.wnd == 0]
    assert len(zero) >= 2, zero  # the first, and the answers to the kernel's probes
    reopened = next(e for e in events if e.outbound and e.wnd and e.time > zero[0].time)
    assert reopened.time - zero[0].time >= 0.95, (zero, reopened)


def test_the_segment_carrying_a_byte_is_corrupted_and_sent_again(netns, start_ustack,
                                                                 tmp_path):
    require_tools("curl")
    server, pcap = traced(netns, start_ustack, tmp_path, "http:80",
                          "corrupt offset=100000 dir=tx")
    got = netns.run(["curl", "-sS", "--fail", "--max-time", "10",
                     "http://10.77.0.2/bytes/300000"], timeout=20)
    assert got.returncode == 0 and sha256(got.stdout) == pattern_sha256(300_000)
    log, events = stopped(server, pcap)
    assert log.count("fault: corrupted (corrupt offset=100000 dir=tx)") == 1, log
    isn = next(e.seq for e in events if e.outbound and e.flags & 0x02)
    carrying = [e for e in events if e.outbound
                and 0 <= (isn + 1 + 100_000 - e.seq) % 2**32 < e.length]
    # The corrupted copy (the kernel dropped it: a bad checksum) and the one sent again.
    assert len(carrying) >= 2, carrying
