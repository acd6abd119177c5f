"""`--trace` on live traffic, and the same ladder from the run's own `--pcap`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ustack.addresses import endpoint

from .support import REPO, USTACK_ADDR, require_tools

pytestmark = pytest.mark.netns

SEGMENT = re.compile(r"^#\d+\s+[\d.]+\s+(peer .*)$")


def segment_lines(text: str) -> list[str]:
    """The segment lines of a ladder without the time column, with their detail lines."""
    out, keep = [], False
    for line in text.splitlines():
        m = SEGMENT.match(line)
        if m:
            out.append(m.group(1))
            keep = True
        elif keep and line.startswith(" ") and not line.lstrip().startswith("#"):
            out.append(line.strip())
        else:
            keep = False
    return out


@pytest.mark.parametrize("addr", [USTACK_ADDR, "fd77::2"], ids=["ipv4", "ipv6"])
def test_trace_and_pcap_ladders_agree(netns, start_ustack, tmp_path, addr):
    require_tools("nc")
    pcap = tmp_path / "run.pcap"
    server = start_ustack(netns, "echo:7", args=["--trace", "--pcap", str(pcap)])
    done = netns.run(["nc", "-N", addr, "7"], input=b"ladder\n", timeout=10)
    assert done.stdout == b"ladder\n"
    status, _ = server.stop()
    assert status == 0
    live = server.stderr()
    assert "LISTEN → SYN_RCVD" in live and "CLOSE_WAIT → LAST_ACK" in live
    assert "LAST_ACK → CLOSED" in live
    tool = subprocess.run([sys.executable, str(REPO / "tools" / "ladder.py"), str(pcap)],
                          capture_output=True, text=True, timeout=30)
    assert tool.returncode == 0, tool.stderr
    ours, theirs = segment_lines(live), segment_lines(tool.stdout)
    assert len(ours) >= 12  # handshake, data both ways, both FINs: two lines a segment
    assert ours == theirs
    assert f"ustack {endpoint(addr, 7)}" in live


TIME = re.compile(r"^#\d+\s+([\d.]+)\s")


def test_trace_times_have_microseconds_under_uvloop(netns, start_ustack):
    # The core's clock is CLOCK_MONOTONIC, not uvloop's cached millisecond loop time:
    # events of different wake-ups less than a millisecond apart get different times.
    require_tools("nc")
    server = start_ustack(netns, "echo:7", args=["--trace", "--loop", "uvloop"])
    done = netns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"tick\n", timeout=10)
    assert done.stdout == b"tick\n"
    status, _ = server.stop()
    assert status == 0
    times = [float(m.group(1)) for line in server.stderr().splitlines()
             if (m := TIME.match(line))]
    assert len(times) >= 8, server.stderr()
    # Not all whole milliseconds, as uvloop's loop time would make them. (Whether two
    # wake-ups fall less than a millisecond apart depends on the machine's load: a CI
    # run saw every gap above 1.4 ms, so that is not asserted.)
    assert any(round(t * 1e6) % 1000 for t in times), times
