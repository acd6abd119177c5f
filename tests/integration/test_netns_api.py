"""The asyncio API (`ustack.Stack`) from a user's script, inside a namespace."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support import HERE, random_file, readline, require_tools

pytestmark = pytest.mark.netns


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
