"""Errors as asyncio users expect them, flow control and per-connection options, from a
script (api_errors_check.py) that runs ustack in a private namespace, on both loops."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from .support import HERE

pytestmark = pytest.mark.netns

LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(
        importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_api_errors_flow_control_and_options(netns, loop):
    done = netns.run([sys.executable, str(HERE / "api_errors_check.py"), "--loop", loop],
                     timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["refused"] == "ConnectionRefusedError", got
    # syn_retries=2: SYNs at 0, 1 and 3 s, given up at 7 s.
    assert got["silent"]["error"] == "TimeoutError", got
    assert 6.0 <= got["silent"]["seconds"] <= 9.0, got
    # tcp=TcpConfig(syn_retries=1) on the one connection: given up at 3 s.
    assert got["silent_per_connection"]["error"] == "TimeoutError", got
    assert 2.5 <= got["silent_per_connection"]["seconds"] <= 4.5, got
    assert got["addrinuse"] == "EADDRINUSE", got
    assert got["reset"] == "ConnectionResetError", got
    bp = got["backpressure"]
    assert bp["received"] == bp["total"], bp
    assert bp["pauses"] >= 1 and bp["resumes"] >= 1, bp
    assert bp["events"][:2] == ["pause", "resume"], bp
    # Bounded: never more than the high-water mark plus the one write that crossed it.
    assert bp["max_buffer"] <= bp["high"] + 64 * 1024, bp
    ka = got["keepalive"]
    assert ka["nodelay_after_set"] is False, ka
    # idle 1 s, then 2 probes 1 s apart: TimeoutError after about 3 s.
    assert ka["lost"] == "TimeoutError", ka
    assert 2.0 <= ka["seconds"] <= 6.0, ka
