"""The pytest plugin `ustack.testing`, exercised as a user would: pytest in a subprocess.

Runs examples/test_*.py (the repo's own run collects them only through this file), a
deliberately failing test whose pcap and ladder must be kept and named, a leak check
over tests in a row, the container modes (a namespace that may or may not make further
namespaces) and the skip/fail of an unprivileged user.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .support import require_tools

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("test_*.py"))
TIMEOUT = 180


def _plugin_args() -> list[str]:
    """`-p ustack.testing`, as examples/test_ustack_plugin.py tells users: it must work
    with ustack installed (the entry point is named as the module, so pytest finds it
    registered already) as well as from a checkout."""
    return ["-p", "ustack.testing"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    env.update(extra)
    return env


def _pytest(args: list[str], cwd: Path, prefix: list[str] | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [*(prefix or []), sys.executable, "-m", "pytest", *_plugin_args(),
           "-p", "no:cacheprovider", "-q", "-rA", "--rootdir", str(cwd), *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _out(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_examples_pass(tmp_path: Path) -> None:
    assert EXAMPLES, "no examples/test_*.py"
    proc = _pytest(EXAMPLES, tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert re.search(r"\b\d+ passed\b", proc.stdout) and "skipped" not in proc.stdout, _out(proc)


FAILING = '''
import os, socket

def test_passes(ustack_host):
    with open(os.environ["PASSED_PATHS"], "w") as f:
        f.write(ustack_host.pcap_path + "\\n" + ustack_host.ladder_path)
    with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
        s.sendall(b"ok")
        assert s.recv(2) == b"ok"

def test_fails(ustack_host):
    with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"pong"
'''


def test_failure_keeps_pcap_and_ladder(tmp_path: Path) -> None:
    (tmp_path / "test_failing.py").write_text(FAILING)
    passed_paths = tmp_path / "passed.txt"
    proc = _pytest(["test_failing.py"], tmp_path, PASSED_PATHS=str(passed_paths))
    out = _out(proc)
    assert proc.returncode == 1 and "1 failed, 1 passed" in proc.stdout, out
    pcap = re.search(r"^pcap: (\S+)$", proc.stdout, re.M)
    ladder = re.search(r"^ladder: (\S+)$", proc.stdout, re.M)
    assert pcap and ladder, out
    pcap_path, ladder_path = Path(pcap[1]), Path(ladder[1])
    try:
        assert pcap_path.is_file() and ladder_path.is_file(), out
        text = ladder_path.read_text()
        assert "SYN" in text and ":7" in text, text
        require_tools("tshark")  # the issue asks that Wireshark's reader takes the pcap
        read = subprocess.run(["tshark", "-n", "-r", str(pcap_path)], capture_output=True,
                              text=True, timeout=30)
        assert read.returncode == 0, read.stderr
        assert "10.77.0.2" in read.stdout and "10.77.0.1" in read.stdout, read.stdout
        # The passing test's files were removed.
        for kept in passed_paths.read_text().split("\n"):
            assert not Path(kept).exists(), kept
    finally:
        shutil.rmtree(pcap_path.parent, ignore_errors=True)


LEAKS = '''
import os, socket, subprocess, threading

STATE = {}
SEEN_NS = []

def snapshot():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return {
        "fds": fds,
        "threads": threading.active_count(),
        "tasks": len(os.listdir("/proc/self/task")),
        "netns": os.readlink("/proc/thread-self/ns/net"),
        "links": sorted(name for _, name in socket.if_nameindex()),
    }

TTL = "/proc/sys/net/ipv4/ip_default_ttl"
HOME_NS = os.readlink("/proc/thread-self/ns/net")

def use(ustack_host):
    here = os.readlink("/proc/thread-self/ns/net")
    assert here != HOME_NS  # never mark the namespace the tests started in
    SEEN_NS.append(here)
    # A fresh namespace has the default TTL; each test leaves a mark in its own. (Inode
    # numbers cannot tell: the kernel reuses a freed namespace's number.)
    with open(TTL) as f:
        assert f.read().strip() == "64"
    with open(TTL, "w") as f:
        f.write("99")
    with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"

def test_warm_up(ustack_host):
    use(ustack_host)

def test_baseline():
    STATE["before"] = snapshot()

def test_first(ustack_host):
    use(ustack_host)

def test_second(ustack_host):
    use(ustack_host)

def test_nothing_leaked():
    before, after = STATE["before"], snapshot()
    assert after == before
    assert len(SEEN_NS) == 3 and before["netns"] not in SEEN_NS
    listed = subprocess.run(["lsns", "-n", "-t", "net", "-o", "NS"], capture_output=True,
                            text=True, timeout=10).stdout.split()
    for ns in SEEN_NS:
        assert ns.removeprefix("net:[").rstrip("]") not in listed, ns
'''


def test_no_leaks_across_tests(tmp_path: Path) -> None:
    if shutil.which("lsns") is None:
        pytest.skip("lsns (util-linux) is missing")
    (tmp_path / "test_leaks.py").write_text(LEAKS)
    proc = _pytest(["test_leaks.py"], tmp_path)
    assert proc.returncode == 0 and "5 passed" in proc.stdout, _out(proc)


CONTAINER = '''
import os, socket, urllib.request

def test_in_container(ustack_host):
    with open(os.environ["MODE_FILE"], "w") as f:
        f.write("private" if ustack_host.private_netns else "shared")
    with urllib.request.urlopen(f"http://{ustack_host.addr}/bytes/1000", timeout=10) as r:
        assert r.read() == bytes(i % 256 for i in range(1000))

def test_again(ustack_host):
    with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
        s.sendall(b"y")
        assert s.recv(1) == b"y"
'''


@pytest.mark.parametrize("may_unshare", [True, False], ids=["namespace-per-test", "seccomp"])
def test_container_modes(tmp_path: Path, may_unshare: bool) -> None:
    """As a container sees it: a fresh net+mount+pid namespace as root, with (SYS_ADMIN)
    or without (Docker's default: no unshare) the right to make further namespaces."""
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("unshare/setpriv (util-linux) are missing")
    (tmp_path / "test_container.py").write_text(CONTAINER)
    prefix = ["unshare", "--net", "--mount", "--pid", "--fork"]
    if not may_unshare:
        prefix += ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
    mode_file = tmp_path / "mode"
    proc = _pytest(["test_container.py"], tmp_path, prefix, MODE_FILE=str(mode_file))
    assert proc.returncode == 0 and "2 passed" in proc.stdout, _out(proc)
    assert mode_file.read_text() == ("private" if may_unshare else "shared")


def test_unprivileged_user_skips_or_fails() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
        pytest.skip("/dev/net/tun is open to every user here: test_rootless.py runs them")
    work = Path(tempfile.mkdtemp(prefix="ustack-unpriv-"))  # pytest's tmp_path is 0700
    try:
        work.chmod(0o777)
        test = work / "test_unpriv.py"
        test.write_text("def test_needs_root(ustack_host):\n    raise AssertionError('ran')\n")
        test.chmod(0o644)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc = _pytest(["test_unpriv.py"], work, prefix, USTACK_REQUIRE_NETNS="0")
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, _out(proc)
        # /dev/net/tun is closed to others here (test_rootless.py opens it): the reason.
        assert "without root: /dev/net/tun is mode" in proc.stdout, _out(proc)
        assert "Traceback" not in proc.stdout, _out(proc)
        proc = _pytest(["test_unpriv.py"], work, prefix, USTACK_REQUIRE_NETNS="1")
        assert proc.returncode == 1 and "1 error" in proc.stdout, _out(proc)  # in setup
        assert "During handling" not in proc.stdout, _out(proc)
        assert "forbids skipping" in proc.stdout, _out(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_entry_point_is_named_as_the_module() -> None:
    """Installed, the plugin registers under `ustack.testing`: `-p ustack.testing` then
    finds it loaded (another name made pytest fail with "Plugin already registered")."""
    eps = importlib.metadata.entry_points(group="pytest11")
    ours = [ep for ep in eps if ep.value == "ustack.testing"]
    if not ours:
        pytest.skip("ustack is not installed (run from a checkout)")
    assert [ep.name for ep in ours] == ["ustack.testing"]


def test_plugin_can_be_switched_off(tmp_path: Path) -> None:
    """`-p no:ustack.testing` blocks the installed entry point (an explicit `-p
    ustack.testing` before it would still load it, as pytest does for any plugin)."""
    (tmp_path / "test_off.py").write_text("def test_uses_it(ustack_host):\n    pass\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:ustack.testing", "-p", "no:cacheprovider",
           "-q", "--rootdir", str(tmp_path), "test_off.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 1, _out(proc)
    assert "fixture 'ustack_host' not found" in proc.stdout, _out(proc)



MARKER_PREFIX = '''
import socket
import pytest

@pytest.mark.ustack(kernel_addr="10.66.0.1/24", addr="10.66.0.2", services=["echo:7"])
def test_with_prefix(ustack_host):
    assert ustack_host.kernel_addr == "10.66.0.1"
    with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
        s.sendall(b"prefix")
        assert s.recv(6) == b"prefix"

@pytest.mark.ustack(kernel_addr="10.67.0.1", addr="10.67.0.2", services=["echo:7"])
def test_without_prefix(ustack_host):
    assert ustack_host.kernel_addr == "10.67.0.1"
'''


def test_marker_takes_kernel_addr_with_or_without_prefix(tmp_path: Path) -> None:
    (tmp_path / "test_marker.py").write_text(MARKER_PREFIX)
    proc = _pytest(["test_marker.py"], tmp_path)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, _out(proc)
