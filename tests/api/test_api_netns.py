"""The asyncio API over a real TUN, against the kernel's own sockets, on both loops."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.netns
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stack_streams_against_the_kernel(loop: str) -> None:
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.api.scenarios", loop],
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
