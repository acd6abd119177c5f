"""ustack as a proxy with toxics (issue 23) in front of a kernel HTTP server the test
starts on the kernel's side of the TUN (`python -m http.server` at 10.77.0.1:8000),
fetched by the kernel's curl through `ustack serve proxy:8080=10.77.0.1:8000`: the body
intact without toxics and with 5 % packet loss on the client's side; with latency 50 ms
the first byte at least 50 ms later; at 1000 KB/s a 5 MB body takes at least 5 s;
limit_data makes curl exit 18, reset_peer 56, timeout (with --max-time) 28."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .support import random_file, readline, require_tools, sha256

pytestmark = pytest.mark.netns

URL = "http://10.77.0.2:8080/body"
PROXY = "proxy:8080=10.77.0.1:8000"


def proxied(netns, start_ustack, tmp_path, *toxics: str, args=(), size=1_000_000):
    """ustack's proxy with `toxics`, and the kernel's HTTP server behind it; the body's
    SHA-256 and the server."""
    flags = [*args, "--trace"]
    for toxic in toxics:
        flags += ["--toxic", toxic]
    server = start_ustack(netns, PROXY, args=flags)
    want = random_file(tmp_path / "body", size)
    web = netns.popen([sys.executable, "-u", "-m", "http.server", "8000", "--bind",
                       "10.77.0.1", "--directory", str(tmp_path)],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert b"Serving HTTP" in readline(web, 10)
    return want, server


def curl(netns, *args: str, timeout: float = 30):
    require_tools("curl")
    return netns.run(["curl", "-sS", "-o", "-", "-w", "%{stderr}%{time_starttransfer}",
                      *args, URL], timeout=timeout)


def test_the_body_arrives_intact_through_the_proxy(netns, start_ustack, tmp_path):
    want, server = proxied(netns, start_ustack, tmp_path)
    got = curl(netns, "--fail", "--max-time", "20")
    assert got.returncode == 0 and sha256(got.stdout) == want, got.stderr.decode()
    server.stop()
    assert "proxy_connections=1" in server.stderr()


def test_five_percent_loss_on_the_clients_side_loses_nothing(netns, start_ustack, tmp_path):
    want, server = proxied(netns, start_ustack, tmp_path, args=["--loss", "5%",
                                                                "--seed", "4"])
    got = curl(netns, "--fail", "--max-time", "30")
    assert got.returncode == 0 and sha256(got.stdout) == want, got.stderr.decode()
    server.stop()
    assert "fault: dropped" in server.stderr()


def test_latency_delays_the_first_byte(netns, start_ustack, tmp_path):
    want, server = proxied(netns, start_ustack, tmp_path, "latency latency=50",
                           size=10_000)
    got = curl(netns, "--fail", "--max-time", "20")
    assert got.returncode == 0 and sha256(got.stdout) == want
    assert float(got.stderr.decode().split()[-1]) >= 0.05
    server.stop()
    log = server.stderr()
    assert "toxic: latency (latency=50 downstream)" in log, log  # the ladder's row
    assert "toxic_latency=1" in log


def test_bandwidth_paces_a_5_mb_body(netns, start_ustack, tmp_path):
    want, _ = proxied(netns, start_ustack, tmp_path, "bandwidth rate=1000",
                           size=5_000_000)
    start = time.monotonic()
    got = curl(netns, "--fail", "--max-time", "30")
    took = time.monotonic() - start
    assert got.returncode == 0 and sha256(got.stdout) == want
    assert took >= 5.0, took


@pytest.mark.parametrize(("toxics", "extra", "status"), [
    (("limit_data bytes=100000",), (), 18),  # a partial file
    (("bandwidth rate=1000", "reset_peer timeout=300"), (), 56),  # reset by peer
    (("timeout timeout=0",), ("--max-time", "2"), 28),  # nothing comes: timed out
])
def test_a_toxic_ends_the_transfer_as_curl_says(netns, start_ustack, tmp_path, toxics,
                                                 extra, status):
    _, server = proxied(netns, start_ustack, tmp_path, *toxics)
    got = curl(netns, *extra)
    assert got.returncode == status, (got.returncode, got.stderr.decode())
    server.stop()
    kind = toxics[-1].split()[0]
    assert f"toxic_{kind}=1" in server.stderr()
