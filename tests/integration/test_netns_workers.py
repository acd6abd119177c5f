"""`ustack serve --workers 2` (issue 18): two worker processes on the two queues of one
multi-queue TUN, the kernel's clients spread over them by flow; the supervisor sums their
counters, restarts a worker that dies while the other's connections go on, merges their
captures, and stops them all on SIGTERM with exit 0."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import dpkt
import pytest

from ustack.cli.worker import TICK

from .support import (
    USTACK,
    USTACK_ADDR,
    curl_bytes,
    file_sha256,
    nc_echo,
    pattern_sha256,
    readline,
    require_tools,
)
from .test_netns_link import wait_for

pytestmark = pytest.mark.netns

WORKERS = ["--workers", "2"]
# `ustack: stats; ...` (the sum) or `ustack[w1]: stopped; ...` (one worker's own).
COUNTERS = re.compile(r"^ustack(?:\[w(\d+)\])?: (stats|stopped); (.*)$", re.M)
PIDS = re.compile(r"2 workers: pids (\d+) (\d+)")

# Sixteen echo connections held open; on a line on stdin each sends a line and says
# whether it came back ("ok") or the connection was reset or closed.
HOLD_MANY = textwrap.dedent(f"""
    import json, socket, sys
    conns = [socket.create_connection(("{USTACK_ADDR}", 7), timeout=10) for _ in range(16)]
    for c in conns:
        c.sendall(b"hi\\n")
        assert c.recv(3) == b"hi\\n"
    print("ready", flush=True)
    sys.stdin.readline()
    results = []
    for c in conns:
        try:
            c.sendall(b"again\\n")
            results.append("ok" if c.recv(6) == b"again\\n" else "closed")
        except (ConnectionResetError, BrokenPipeError):
            results.append("reset")
        except TimeoutError:
            results.append("timeout")
    print(json.dumps(results), flush=True)
""")


def counters(text: str, kind: str) -> dict[str | None, dict[str, int]]:
    """The last `kind` lines: the sum (key None) and each worker's (key "0", "1")."""
    found: dict[str | None, dict[str, int]] = {}
    for m in COUNTERS.finditer(text):
        if m.group(2) == kind:
            pairs = (item.split("=", 1) for item in m.group(3).split(", ") if "=" in item)
            found[m.group(1)] = {k: int(v) for k, v in pairs}
    return found


def assert_summed(lines: dict[str | None, dict[str, int]]) -> None:
    total = lines[None]
    for name in ("passive_opens", "tcp_segments_in", "tcp_segments_out", "packets_in"):
        assert total.get(name, 0) == lines["0"].get(name, 0) + lines["1"].get(name, 0), name
    assert total["workers"] == 2


def test_two_workers_serve_echo_http_ping_and_a_crowd_and_sum_their_counters(
        netns, start_ustack, tmp_path):
    require_tools("nc", "curl", "ping")
    server = start_ustack(netns, args=WORKERS)
    assert PIDS.search(server.stderr()), server.stderr()
    # SHA-256-checked both ways: 3 MB echoed, 10 MB downloaded.
    nc_echo(netns, tmp_path / "in.bin", 3_000_000)
    dst = tmp_path / "down.bin"
    curl_bytes(netns, dst, 10_000_000)
    assert file_sha256(dst) == pattern_sha256(10_000_000)
    # ICMP echo: whichever worker gets it answers.
    done = netns.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", USTACK_ADDR],
                     timeout=15)
    assert done.returncode == 0, done.stdout.decode()
    # 200 clients at once, each echoing 16 KB of its own.
    result = netns.client_json("echo-many", "--count", "200", "--size", "16384",
                               "--timeout", "60", timeout=90)
    assert result["errors"] == [] and result["ok"] == 200
    # SIGUSR1: each worker's counters and their sum; both served part of the crowd.
    server.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: None in counters(server.stderr(), "stats"), 5, "no summed stats line")
    stats = counters(server.stderr(), "stats")
    assert_summed(stats)
    assert stats[None]["passive_opens"] == 202
    assert stats["0"]["passive_opens"] >= 20 and stats["1"]["passive_opens"] >= 20, stats
    assert stats[None]["icmp_echo_replies"] == 3
    assert "connections: " in server.stderr()
    assert server.proc.poll() is None, "SIGUSR1 must not stop the service"
    status, _ = server.stop(signal.SIGTERM, timeout=10)
    assert status == 0, server.stderr()
    stopped = counters(server.stderr(), "stopped")
    assert_summed(stopped)
    assert stopped[None]["worker_restarts"] == 0
    assert "Traceback" not in server.stderr()


def test_a_killed_worker_is_restarted_and_the_other_keeps_its_connections(
        netns, start_ustack):
    server = start_ustack(netns, "echo:7", args=WORKERS)
    pids = [int(p) for p in PIDS.search(server.stderr()).groups()]
    holder = netns.popen([sys.executable, "-c", HOLD_MANY], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readline(holder, 15) == b"ready\n", holder.stderr.read1().decode()
    time.sleep(TICK + 0.5)  # the counts of a killed worker are those of its last tick
    netns.run(["kill", "-KILL", str(pids[1])], timeout=5)
    wait_for(lambda: "worker 1 serving again" in server.stderr(), 10,
             f"no restart of worker 1; stderr:\n{server.stderr()}")
    out, _ = holder.communicate(b"go\n", timeout=30)
    results = json.loads(out.splitlines()[-1])
    # The flows worker 0 had go on; worker 1's died with it (its successor resets them).
    assert "ok" in results and "reset" in results, results
    assert set(results) <= {"ok", "reset"}, results
    result = netns.client_json("echo-many", "--count", "40", "--size", "4096",
                               "--timeout", "30", timeout=60)
    assert result["errors"] == [] and result["ok"] == 40
    status, _ = server.stop(signal.SIGTERM, timeout=10)
    assert status == 0, server.stderr()
    stopped = counters(server.stderr(), "stopped")
    assert stopped[None]["worker_restarts"] == 1
    # The sum keeps what the killed worker counted up to its last report.
    assert stopped[None]["passive_opens"] >= 16 + 40
    assert "was killed by SIGKILL" in server.stderr()


def test_trace_lines_name_their_worker_and_the_captures_merge(netns, start_ustack, tmp_path):
    require_tools("curl")
    pcap = tmp_path / "cap.pcap"
    server = start_ustack(netns, "http:80", args=[*WORKERS, "--trace", "--pcap", str(pcap)])
    assert f"merged into {pcap}" in server.stderr()
    for i in range(8):
        curl_bytes(netns, tmp_path / f"b{i}", 1000)
    status, _ = server.stop(signal.SIGINT, timeout=10)
    assert status == 0, server.stderr()
    text = server.stderr()
    assert re.search(r"^\[w0\] ", text, re.M) and re.search(r"^\[w1\] ", text, re.M), text
    # One capture, in time order, with all eight connections; the parts are gone.
    with pcap.open("rb") as f:
        stamps, syns = [], 0
        for ts, raw in dpkt.pcap.Reader(f):
            stamps.append(ts)
            if raw[0] >> 4 == 4 and raw[9] == dpkt.ip.IP_PROTO_TCP:  # not the kernel's IPv6
                flags = dpkt.ip.IP(raw).data.flags
                syns += bool(flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK)
    assert syns == 8
    assert stamps == sorted(stamps)
    assert sorted(p.name for p in tmp_path.glob("cap.pcap*")) == ["cap.pcap"]


def test_workers_refuse_a_device_made_without_queues(netns):
    netns.ip("tuntap", "add", "dev", "ustack0", "mode", "tun")
    done = netns.run([*USTACK, "serve", *WORKERS], timeout=20)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "not a multi-queue TUN device" in err and "Traceback" not in err
