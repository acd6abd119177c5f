"""TCP against the kernel in a private namespace (issue 4, integration acceptance).

- 50 MB each way through echo, SHA-256 verified, with the kernel's window scaling, SACK
  and timestamps on, and again with all three off; the SYN-ACK is checked in a capture;
- a zero-window stall (a kernel client that stops reading) resumes without loss;
- a kernel peer that vanishes (link down) makes ustack give up with TimeoutError;
- tcpdump finds no malformed packets and no bad checksums from ustack;
- 10,000 garbage packets and 1,000 spoofed half-open SYNs leave ustack answering a fresh
  ``nc`` within 2 s with bounded memory.

Every packet stays inside the namespaces made by the fixtures; the helper script
``tcp_peers.py`` runs inside them.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import (
    HERE,
    USTACK_ADDR,
    Netns,
    UstackServer,
    pattern_sha256,
    readline,
    require_tools,
    stop_process,
)

pytestmark = pytest.mark.netns

PEERS = HERE / "tcp_peers.py"
SIZE_50MB = 50_000_000
# The SYN-ACK options tcpdump prints when all three are negotiated, and when none is.
FULL_OPTIONS = ("mss 1460", "sackOK", "TS val", "wscale")
TCP_SYSCTLS = ("net.ipv4.tcp_window_scaling", "net.ipv4.tcp_sack", "net.ipv4.tcp_timestamps")


# --------------------------------------------------------------------------- helpers


def peers_json(ns: Netns, *args: str, timeout: float) -> dict:
    """Run tcp_peers.py inside ``ns``; its exit status must be 0, with no traceback."""
    done = ns.run([sys.executable, str(PEERS), *map(str, args)], timeout=timeout)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"tcp_peers {' '.join(map(str, args))}: {err}"
    assert "Traceback" not in err, err
    return json.loads(done.stdout.decode().splitlines()[-1])


class Capture:
    """``tcpdump -i ustack0 -w FILE`` inside a namespace, ready when constructed."""

    def __init__(self, ns: Netns, path: Path, *expr: str, count: int | None = None,
                 snaplen: int = 2048) -> None:
        require_tools("tcpdump")
        self.ns = ns
        self.path = path
        self.log = path.with_suffix(".stderr")
        self._log_file = self.log.open("wb")
        # -Z root: do not drop privileges (the capture file lives in a root-only tmp dir);
        # --immediate-mode and -U: take and write each packet at once (else a SIGTERM can
        # lose what waits in the ring buffer); -B 64 MB and a snap length of 2048 (whole
        # packets at MTU 1500, so that checksums can be verified; the ring's slots are
        # sized by it, so -s 0 would leave room for only 256 packets): nothing dropped.
        cmd = ["tcpdump", "-Z", "root", "--immediate-mode", "-B", "65536", "-U", "-n",
               "-s", str(snaplen), "-i", "ustack0", "-w", str(path)]
        if count is not None:
            cmd += ["-c", str(count)]
        self.proc = ns.popen([*cmd, *expr], stdout=subprocess.DEVNULL,
                             stderr=self._log_file)
        deadline = time.monotonic() + 10
        while "listening on" not in self.stderr():
            assert self.proc.poll() is None, f"tcpdump exited: {self.stderr()}"
            assert time.monotonic() < deadline, f"tcpdump not ready: {self.stderr()}"
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self, wait: float = 0.0) -> str:
        """Let tcpdump end by itself within ``wait`` seconds (-c), else stop it; return
        its stderr (with the "N packets dropped by kernel" summary)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)
        stop_process(self.proc)
        self._log_file.close()
        return self.stderr()

    def read(self, *flags: str) -> list[str]:
        """The capture as tcpdump prints it, one string per packet."""
        done = self.ns.run(["tcpdump", "-nn", *flags, "-r", str(self.path)], timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        packets: list[str] = []
        for line in done.stdout.decode(errors="replace").splitlines():
            if line[:1].isspace() and packets:
                packets[-1] += "\n" + line
            elif line.strip():
                packets.append(line)
        return packets


def from_ustack(packet: str) -> bool:
    return re.search(rf"\b{re.escape(USTACK_ADDR)}\.\d+ > ", packet) is not None


def tcp_options(packet: str) -> str:
    m = re.search(r"options \[([^\]]*)\]", packet)
    return m.group(1) if m else ""


def counters(server: UstackServer) -> dict[str, int]:
    """The counters of ``ustack: stopped; name=value, ...`` (the last stderr line)."""
    lines = [ln for ln in server.stderr().splitlines() if ln.startswith("ustack: stopped;")]
    assert lines, f"no counters line; stderr:\n{server.stderr()}"
    pairs = lines[-1].split(";", 1)[1].split(",")
    return {k.strip(): int(v) for k, v in (p.split("=", 1) for p in pairs if "=" in p)}


def stop_for_counters(server: UstackServer) -> dict[str, int]:
    status, took = server.stop()
    assert status == 0, f"exit {status} after SIGTERM ({took:.1f} s): {server.stderr()}"
    return counters(server)


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def set_sysctls(ns: Netns, values: dict[str, int]) -> None:
    done = ns.run(["sysctl", "-w", *(f"{k}={v}" for k, v in values.items())], timeout=10)
    assert done.returncode == 0, done.stderr.decode()
    for key, value in values.items():
        got = ns.run(["sysctl", "-n", key], timeout=10).stdout.decode().strip()
        assert got == str(value), (key, got)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("options", ["on", "off"])
def test_echo_50mb_each_way(make_netns, start_ustack, tmp_path, options):
    """50 MB up and 50 MB back on one connection, with the kernel's WS/SACK/TS on (its
    defaults) or all off; ustack's SYN-ACK offers exactly what the kernel's SYN did."""
    ns = make_netns()
    host_before = {k: Path("/proc/sys", *k.split(".")).read_text() for k in TCP_SYSCTLS}
    if options == "off":
        set_sysctls(ns, dict.fromkeys(TCP_SYSCTLS, 0))
    start_ustack(ns, "echo:7")
    cap = Capture(ns, tmp_path / "syn.pcap", "tcp[tcpflags] & tcp-syn != 0", count=2)
    got = peers_json(ns, "echo", "--size", SIZE_50MB, "--timeout", "60", timeout=90)
    assert got["send_error"] is None and got["recv_error"] is None, got
    assert got["sender_done"], got
    assert got["received_len"] == SIZE_50MB, got
    assert got["received_sha256"] == got["sent_sha256"], got

    cap.finish(wait=5)
    packets = cap.read("-v")
    syn = [p for p in packets if "Flags [S]," in p and not from_ustack(p)]
    synack = [p for p in packets if "Flags [S.]," in p and from_ustack(p)]
    assert len(syn) == 1 and len(synack) == 1, packets
    if options == "on":
        for opt in FULL_OPTIONS:
            assert opt in tcp_options(syn[0]), syn[0]
            assert opt in tcp_options(synack[0]), f"SYN-ACK lacks {opt}: {synack[0]}"
    else:
        assert tcp_options(syn[0]) == "mss 1460", syn[0]  # the sysctls took effect
        assert tcp_options(synack[0]) == "mss 1460", synack[0]
    # The namespace's sysctls are its own: the host's are untouched.
    assert {k: Path("/proc/sys", *k.split(".")).read_text() for k in TCP_SYSCTLS} == (
        host_before
    )


def test_zero_window_stall_resumes(netns, start_ustack, tmp_path):
    """A kernel client stops reading a 30 MB body for 2 s: its window closes, ustack
    probes it and resumes when it reads again; the body arrives whole."""
    n = 30_000_000
    server = start_ustack(netns, "http:80")
    # The kernel's first zero-window advertisement (window field 0, not a RST).
    zero = Capture(netns, tmp_path / "zero.pcap", "src host 10.77.0.1 and tcp[14:2] = 0 "
                   "and tcp[tcpflags] & tcp-rst = 0", count=1, snaplen=96)
    got = peers_json(netns, "stall", "--size", n, "--pause", "2", "--timeout", "30",
                     timeout=60)
    assert got["status_line"] == "HTTP/1.1 200 OK", got
    assert got["error"] is None, got
    assert got["read_before_pause"] < n // 2, got
    assert got["body_len"] == n, got
    assert got["body_sha256"] == pattern_sha256(n), got
    zero.finish(wait=1)
    assert len(zero.read()) == 1, "the kernel never advertised a zero window"
    stats = stop_for_counters(server)
    assert stats.get("tcp_window_probes", 0) > 0, stats


def test_vanished_peer_times_out(netns):
    """ustack's client (asyncio API, max_retries=4) loses its link with 1 MB in flight:
    it gives up with TimeoutError in bounded time, and the script ends cleanly."""
    listener = netns.popen(
        [sys.executable, str(PEERS), "listen", "--port", "5007", "--timeout", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert readline(listener, 10) == b"listening\n"
    start = time.monotonic()
    got = peers_json(netns, "vanish", "--port", "5007", "--retries", "4", "--timeout", "35",
                     timeout=90)
    total = time.monotonic() - start
    assert got["echo"] == "hello", got
    assert got["link_down_status"] == 0, got
    assert got["read_error"] == "TimeoutError", got
    assert got["drain_error"] in (None, "TimeoutError"), got
    assert got["info_after"]["retransmits"] == 4, got  # exactly the configured limit
    # Four retransmissions from an RTO of at least 200 ms, doubling: at least 3 s; and it
    # must not go on for long.
    assert 3.0 <= got["seconds"] <= 30.0, got
    assert got["info_after"]["state"] == "CLOSED", got
    assert total < 60, total


def test_capture_has_no_bad_packets(netns, start_ustack, tmp_path):
    """tcpdump -vv verifies every checksum of ustack's packets in a 2 MB echo and a 1 MB
    HTTP download: all correct, nothing malformed or truncated. Without offloads, so that
    every checksum is ustack's own (test_netns_offload.py covers the partial ones)."""
    start_ustack(netns, "echo:7", "http:80", args=("--no-offload",))
    cap = Capture(netns, tmp_path / "all.pcap")
    got = peers_json(netns, "echo", "--size", 2_000_000, timeout=60)
    assert got["received_sha256"] == got["sent_sha256"], got
    body = netns.client_json("http", "--request", "GET /bytes/1000000 HTTP/1.0\\r\\n\\r\\n",
                             timeout=30)["responses"][0]
    assert body.get("body_sha256") == pattern_sha256(1_000_000), body
    summary = cap.finish(wait=0.5)
    # Every packet the filter saw was written: the capture is the whole conversation.
    captured = re.search(r"(\d+) packets? captured", summary)
    received = re.search(r"(\d+) packets? received by filter", summary)
    assert captured and received and captured[1] == received[1], summary
    assert re.search(r"\b0 packets dropped by kernel", summary), summary
    packets = cap.read("-vv")
    ours = [p for p in packets if from_ustack(p)]
    assert len(ours) >= 2000, f"only {len(ours)} packets from ustack captured"
    # "bad cksum" (IP), "incorrect" (TCP), "malformed", "[|tcp]" (truncated); "\bbad\b" so
    # that a checksum such as 0xbad9 does not count.
    bad = [p for p in ours
           if re.search(r"\bbad\b|incorrect|malformed|invalid|\[\|", p, re.I)]
    assert not bad, "\n".join(bad[:10])
    unverified = [p for p in ours if not re.search(r"cksum 0x[0-9a-f]{4} \(correct\)", p)]
    assert not unverified, "\n".join(unverified[:10])
    assert any("Flags [S.]" in p for p in ours) and any("Flags [F" in p for p in ours)


def test_garbage_and_syn_flood(netns, start_ustack):
    """10,000 garbage packets and 1,000 spoofed SYNs that are never completed: a fresh nc
    is answered within 2 s, memory stays bounded, SYN cookies and drops are counted."""
    require_tools("nc", "timeout")
    # No forwarding: the kernel drops ustack's SYN-ACKs to the spoofed (non-local)
    # addresses, so those connections stay half-open.
    set_sysctls(netns, {"net.ipv4.ip_forward": 0})
    # A backlog below the flood's size, so that the SYN queue overflows into cookies (the
    # default of 4096 would hold all 1,000 half-open connections, as Linux's would).
    server = start_ustack(netns, "echo:7", args=("--backlog", "128"))
    pid = server.proc.pid  # `ip netns exec` execs: this is ustack itself
    warm = netns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"warm\n", timeout=10)
    assert warm.stdout == b"warm\n", warm
    rss_before = vm_rss_kb(pid)
    flood = peers_json(netns, "flood", "--garbage", 10_000, "--syns", 1_000, timeout=60)
    assert flood["garbage"]["sent"] >= 9_000, flood
    assert flood["syns"]["sent"] >= 900, flood

    start = time.monotonic()
    done = netns.run(["timeout", "2", "nc", "-N", USTACK_ADDR, "7"], input=b"hi\n",
                     timeout=10)
    took = time.monotonic() - start
    assert done.stdout == b"hi\n", (done, took)
    assert took < 2.0, took
    rss_after = vm_rss_kb(pid)
    assert rss_after < 200_000, f"VmRSS {rss_after} kB after the flood"
    assert rss_after - rss_before < 50_000, (rss_before, rss_after)

    stats = stop_for_counters(server)
    assert stats.get("tcp_syncookies_sent", 0) > 0, stats
    assert stats.get("drops", 0) >= 5_000, stats
