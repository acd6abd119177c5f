"""The examples in examples/ are tests: each runs in a namespace, on both loops, and a
kernel client (curl, nc) talks to it through the TUN."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest

from .support import REPO, USTACK_ADDR, readline, require_tools, stop_process

pytestmark = pytest.mark.netns

EXAMPLES = REPO / "examples"
LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(
        importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")),
]


def example_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def start_example(netns, name: str, loop: str, port: int) -> subprocess.Popen:
    proc = netns.popen(
        [sys.executable, str(EXAMPLES / name), "--dev", "ustack0", "--addr", USTACK_ADDR,
         "--port", str(port), "--loop", loop],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=example_env(),
    )
    line = readline(proc, 20)
    if not line.startswith(b"ready"):
        stop_process(proc)
        raise AssertionError(f"{name} did not start: {line!r} {proc.stderr.read()!r}")
    return proc


def stop_example(proc: subprocess.Popen) -> None:
    status = stop_process(proc, grace=5)
    assert status == 0, f"exit status {status} after SIGTERM: {proc.stderr.read()!r}"


def curl(netns, url: str) -> subprocess.CompletedProcess:
    return netns.run(["curl", "-sS", "--max-time", "10", url], timeout=20)


@pytest.mark.parametrize("loop", LOOPS)
def test_echo_streams(netns, tmp_path, loop):
    require_tools("nc")
    proc = start_example(netns, "echo_streams.py", loop, 7)
    payload = os.urandom(200_000)
    (tmp_path / "in.bin").write_bytes(payload)
    with (tmp_path / "in.bin").open("rb") as stdin:
        done = netns.run(["timeout", "20", "nc", "-N", USTACK_ADDR, "7"], timeout=30,
                         stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    stop_example(proc)


@pytest.mark.parametrize("loop", LOOPS)
def test_http_protocol(netns, loop):
    require_tools("curl")
    proc = start_example(netns, "http_protocol.py", loop, 80)
    done = curl(netns, f"http://{USTACK_ADDR}/some/path")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello from ustack: GET /some/path\n"
    # Keep-alive: two requests on one connection.
    two = netns.run(["curl", "-sS", "--max-time", "10", f"http://{USTACK_ADDR}/a",
                     f"http://{USTACK_ADDR}/b"], timeout=20)
    assert two.stdout == b"Hello from ustack: GET /a\nHello from ustack: GET /b\n", two.stderr
    stop_example(proc)


@pytest.mark.parametrize("loop", LOOPS)
def test_aiohttp_app(netns, loop):
    require_tools("curl")
    pytest.importorskip("aiohttp")
    proc = start_example(netns, "aiohttp_app.py", loop, 8080)
    done = curl(netns, f"http://{USTACK_ADDR}:8080/hello/curl")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, curl, from aiohttp on ustack\n"
    info = curl(netns, f"http://{USTACK_ADDR}:8080/info")
    assert info.returncode == 0, info.stderr
    assert b'"state"' in info.stdout and b'"srtt"' in info.stdout, info.stdout
    stop_example(proc)
