"""``ustack`` refuses what cannot work, and says why, before it says "serving" (issue 15):
addresses the kernel does not route to the device, captures it must not clobber, a
connection attempt with a deadline, and the live view of connections on SIGUSR1."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from .support import KERNEL_ADDR, NSCLIENT, REPO, USTACK, USTACK_ADDR, readline

pytestmark = pytest.mark.netns

SETUP_TUN = REPO / "scripts" / "setup_tun.sh"
KEEP = b"\xd4\xc3\xb2\xa1 an earlier capture the user keeps"


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, f"exit {done.returncode}; stderr: {err}"
    assert "Traceback" not in err and "serving" not in err, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("args", [
    ["--pcap", "{pcap}", "echo:7", "http:7"],  # two services on one port
    ["--pcap", "{pcap}", "https:443"],  # https without a certificate
    ["--pcap", "{pcap}", "--addr", "192.168.9.9", "echo:7"],  # unreachable address
], ids=["same-port", "https-no-cert", "unreachable"])
def test_a_rejected_run_leaves_the_capture_alone(netns, tmp_path, args):
    pcap = tmp_path / "keep.pcap"
    pcap.write_bytes(KEEP)
    done = netns.run([*USTACK, "serve", *[a.format(pcap=pcap) for a in args]], timeout=20)
    refused(done)
    assert pcap.read_bytes() == KEEP


def test_a_busy_device_leaves_the_capture_alone(ustack_server, tmp_path):
    pcap = tmp_path / "keep.pcap"
    pcap.write_bytes(KEEP)
    done = ustack_server.ns.run([*USTACK, "serve", "--pcap", str(pcap), "echo:7"], timeout=20)
    refused(done)
    assert pcap.read_bytes() == KEEP


def test_a_capture_in_use_is_refused_and_readable_while_running(netns, start_ustack, tmp_path):
    pcap = tmp_path / "live.pcap"
    start_ustack(netns, "echo:7", args=["--pcap", str(pcap)])
    echo = netns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"live\n", timeout=10)
    assert echo.stdout == b"live\n"
    time.sleep(0.3)  # flushed within 0.1 s of the last packet
    assert pcap.stat().st_size > 24 + 5 * 16, "the capture must be readable while running"
    size = pcap.stat().st_size
    second = netns.run([*USTACK, "serve", "--dev", "ustack1", "--addr", "10.78.0.2",
                        "--kernel-addr", "10.78.0.1/24", "--pcap", str(pcap), "echo:7"],
                       timeout=20)
    refused(second, "another process")
    assert pcap.stat().st_size >= size, "a second ustack must not truncate a live capture"


@pytest.mark.parametrize(("args", "words"), [
    (["--addr", "192.168.9.9"], ["cannot reach 192.168.9.9", "ip route add"]),
    (["--kernel-addr", "10.77.0.1/32"], ["cannot reach 10.77.0.2"]),
    (["--addr", "10.77.0.255"], ["broadcast address"]),
    (["--addr", "0.0.0.0"], ["unicast"]),
    (["--addr", "224.0.0.1"], ["multicast"]),
    (["--backlog", "0"], ["backlog"]),
    (["--workers", "2", "--addr", "192.168.9.9"], ["cannot reach 192.168.9.9"]),
    (["--dev", ""], ["invalid interface name"]),
    (["--cert", str(REPO / "README.md")], ["not a PEM certificate"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else "")
def test_configurations_that_cannot_work_exit_2(netns, args, words):
    services = ["https:443"] if "--cert" in args else ["echo:7"]
    done = netns.run([*USTACK, "serve", *args, *services], timeout=20)
    refused(done, *words)


def test_a_device_on_another_subnet_is_refused_with_the_fix(netns):
    made = netns.run(["bash", str(SETUP_TUN), "ustack0", "10.99.0.1/24"], timeout=20)
    assert made.returncode == 0, made.stderr.decode()
    done = netns.run([*USTACK, "serve", "echo:7"], timeout=20)
    refused(done, "10.99.0.1/24", "--addr")
    # --kernel-addr does not reconfigure an existing device: said, not silently ignored.
    ok = netns.popen([*USTACK, "serve", "--addr", "10.99.0.2", "--kernel-addr",
                      "10.77.0.1/24", "echo:7"], stderr=subprocess.PIPE)
    try:
        # Both lines may come in one read: the pipe's own bytes, not a buffered readline.
        err = b""
        deadline = time.monotonic() + 10
        while b"serving" not in err and time.monotonic() < deadline:
            if select.select([ok.stderr], [], [], 0.5)[0]:
                err += os.read(ok.stderr.fileno(), 4096)
    finally:
        ok.send_signal(signal.SIGTERM)
        ok.wait(10)
    assert b"--kernel-addr 10.77.0.1/24 ignored" in err, err


def test_a_second_stack_on_the_same_subnet_is_refused(ustack_server):
    done = ustack_server.ns.run([*USTACK, "serve", "--dev", "ustack1", "echo:7"], timeout=20)
    refused(done, "its packets would go to ustack0")


def test_connect_timeout_exits_1_in_time(netns):
    start = time.monotonic()
    done = netns.run([*USTACK, "connect", "--timeout", "2", "10.77.0.99", "80"], input=b"",
                     timeout=20)
    took = time.monotonic() - start
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "connecting to 10.77.0.99:80" in err and "timed out" in err, err
    assert took < 3.5, f"took {took:.1f} s"


def test_connect_interrupted_exits_130(netns):
    proc = netns.popen([*USTACK, "connect", "10.77.0.99", "80"], stdin=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert b"connecting to" in readline(proc, 10, stream="stderr")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130


def test_sigusr1_lists_live_connections(ustack_server):
    holder = ustack_server.ns.popen(
        [sys.executable, str(NSCLIENT), "hold", "--port", "7", "--timeout", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readline(holder, 10) == b"ready\n"
    ustack_server.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "ESTABLISHED" not in ustack_server.stderr():
        time.sleep(0.05)
    err = ustack_server.stderr()
    assert "stats; uptime_s=" in err and "connections: 1" in err, err
    row = next(line for line in err.splitlines() if "ESTABLISHED" in line)
    assert f"{USTACK_ADDR}:7" in row and f"{KERNEL_ADDR}:" in row and "rtt:" in row, row
    holder.kill()
    holder.wait(10)
