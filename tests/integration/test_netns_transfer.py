"""Bulk transfers between the kernel's clients and ``ustack serve``, verified by SHA-256."""

from __future__ import annotations

import subprocess
import time

import pytest

from .support import (
    USTACK_ADDR,
    file_sha256,
    pattern_sha256,
    random_file,
    require_tools,
    sha256,
)

pytestmark = pytest.mark.netns


def test_nc_echo_1mb(ustack_server, tmp_path):
    require_tools("nc")
    src = tmp_path / "in.bin"
    want = random_file(src, 1_000_000)
    with src.open("rb") as stdin:
        done = ustack_server.ns.run(["nc", "-N", USTACK_ADDR, "7"], stdin=stdin, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == 1_000_000
    assert sha256(done.stdout) == want


def test_nc_echo_small_line(ustack_server):
    require_tools("nc")
    done = ustack_server.ns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"hello\n", timeout=10)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"hello\n"


def test_curl_download_20mb(ustack_server, tmp_path):
    require_tools("curl")
    n = 20_000_000
    dst = tmp_path / "bytes.bin"
    done = ustack_server.ns.run(
        ["curl", "-sS", "--fail", "--max-time", "100", "-o", str(dst),
         "-w", "%{http_code} %{size_download}", f"http://{USTACK_ADDR}/bytes/{n}"],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"200 {n}"
    assert dst.stat().st_size == n
    assert file_sha256(dst) == pattern_sha256(n)


def test_curl_download_odd_sizes(ustack_server, tmp_path):
    """Sizes around segment and pattern boundaries, including 0."""
    require_tools("curl")
    sizes = [0, 1, 255, 256, 257, 1459, 1460, 1461, 65535, 65536, 100_003]
    urls = [f"http://{USTACK_ADDR}/bytes/{n}" for n in sizes]
    outs = [tmp_path / f"b{n}" for n in sizes]
    cmd = ["curl", "-sS", "--fail", "--max-time", "20"]
    for url, dst in zip(urls, outs, strict=True):
        cmd += ["-o", str(dst), url]
    done = ustack_server.ns.run(cmd, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    for n, dst in zip(sizes, outs, strict=True):
        assert dst.stat().st_size == n, n
        assert file_sha256(dst) == pattern_sha256(n), n


def test_discard_upload_20mb(ustack_server, tmp_path):
    require_tools("nc")
    src = tmp_path / "up.bin"
    random_file(src, 20_000_000)
    start = time.monotonic()
    with src.open("rb") as stdin:
        done = ustack_server.ns.run(["nc", "-N", USTACK_ADDR, "9"], stdin=stdin, timeout=120)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"", "discard must send nothing back"
    # nc returns only when ustack closed its side after our FIN: the close was timely.
    assert took < 120


def test_50_concurrent_echo_connections(ustack_server):
    result = ustack_server.ns.client_json(
        "echo-many", "--count", "50", "--size", "65536", "--timeout", "60", timeout=90
    )
    assert result["errors"] == []
    assert result["ok"] == 50
    assert result["distinct"] == 50


def test_chargen_lines(ustack_server):
    n = 72 * 74 * 3  # a few full rotations of the 72-character lines (74 with CRLF)
    done = ustack_server.ns.client("recv", "--port", "19", "--count", str(n), "--timeout", "10",
                                   timeout=20)
    assert done.returncode == 0, done.stderr.decode()
    data = done.stdout
    assert len(data) == n
    lines = data.split(b"\r\n")
    full = lines[:-1]
    assert len(full) >= 200
    for line in full:
        assert len(line) == 72, line
        assert all(32 <= c <= 126 for c in line), line
    # The lines rotate: consecutive lines differ, and the pattern is not constant.
    assert len(set(full)) > 50


def test_echo_survives_many_sequential_connections(ustack_server):
    """Connections are set up and torn down cleanly one after another."""
    require_tools("nc")
    for i in range(20):
        msg = f"line {i}\n".encode()
        done = ustack_server.ns.run(["nc", "-N", USTACK_ADDR, "7"], input=msg, timeout=10)
        assert done.returncode == 0, (i, done.stderr.decode())
        assert done.stdout == msg, i


def test_serve_keeps_running_after_client_aborts(ustack_server):
    """A client that resets mid-transfer must not take the server down."""
    proc = ustack_server.ns.popen(
        ["curl", "-sS", "-o", "/dev/null", f"http://{USTACK_ADDR}/bytes/1000000000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    proc.kill()
    proc.wait(5)
    done = ustack_server.ns.run(["curl", "-sS", "--max-time", "5", f"http://{USTACK_ADDR}/"],
                                timeout=10)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"hello from ustack\n"
    assert ustack_server.proc.poll() is None
