"""Shared pytest configuration for all of ustack's tests.

Tests marked ``@pytest.mark.netns`` need root, ``/dev/net/tun`` and ``ip netns``. Where
those are missing they skip with the reason; with ``USTACK_REQUIRE_NETNS=1`` (set by
``.ci/run``) the same condition fails the test instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

from ustack.testing import skip_or_fail


@functools.cache
def netns_problem() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"ustk-probe-{os.getpid()}"
    try:
        added = subprocess.run(
            ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` did not work: {exc}"
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def require_netns() -> None:
    """Return when namespace tests can run; otherwise skip (or fail under CI)."""
    problem = netns_problem()
    if problem is not None:
        skip_or_fail(problem)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        require_netns()
