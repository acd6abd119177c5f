"""The asyncio API (`ustack.Stack`) from a user's script, inside a namespace; and its
streams against the kernel's own sockets on both loops (`api_scenarios.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import HERE, random_file, readline, require_tools

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]


def test_stack_api_server_and_client(netns, tmp_path):
    require_tools("nc")
    nc_input = tmp_path / "nc.bin"
    nc_sha = random_file(nc_input, 300_000)
    theirs = tmp_path / "theirs.bin"
    theirs_sha = random_file(theirs, 200_000)
    listener = netns.popen(
        [sys.executable, str(HERE / "nsclient.py"), "listen", "--port", "5005",
         "--send", str(theirs), "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert readline(listener, 10) == b"listening\n"
    done = netns.run([sys.executable, str(HERE / "api_check.py"), "5005", str(nc_input)],
                     timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["nc_status"] == 0, got
    assert got["nc_echo_sha256"] == nc_sha
    assert got["are_asyncio_streams"], got["stream_types"]
    assert got["received_sha256"] == theirs_sha, got
    out, _ = listener.communicate(timeout=30)
    kernel = json.loads(out.splitlines()[-1])
    assert kernel["received_sha256"] == got["sent_sha256"], kernel


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stack_streams_against_the_kernel(loop: str) -> None:
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.integration.api_scenarios", loop],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results == {
        "up_ok": True,
        "down_ok": True,
        "peername": ["10.77.0.1", 9100],
        "state_after_eof": "TIME_WAIT",
        "echo_ok": True,
        "refused": True,
        "blocked": True,
        "buffer_bounded": True,
        "intact": True,
        "stats_ok": True,
    }
