"""The ``ustack`` command itself: signals, exit statuses, errors, ``connect``, devices."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import (
    KERNEL_ADDR,
    NSCLIENT,
    REPO,
    USTACK,
    USTACK_ADDR,
    random_file,
    readline,
    require_tools,
    sha256,
)

pytestmark = pytest.mark.netns

SETUP_TUN = REPO / "scripts" / "setup_tun.sh"


def assert_clean_error(done: subprocess.CompletedProcess, status: int) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == status, f"exit {done.returncode}, want {status}; stderr: {err!r}"
    assert "Traceback" not in err, err
    assert err.strip(), "an error must say why on stderr"
    return err


def device_exists(ns, name: str) -> bool:
    return ns.ip("link", "show", "dev", name, check=False).returncode == 0


# --- serve: signals --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_exits_0_on_signal_and_resets_open_connections(netns, start_ustack, sig):
    server = start_ustack(netns, "echo:7")
    holder = netns.popen(
        [sys.executable, str(NSCLIENT), "hold", "--port", "7", "--timeout", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert readline(holder, 10) == b"ready\n"
    status, took = server.stop(sig, timeout=3.0)
    assert status == 0, f"exit status {status} after {sig.name}; stderr:\n{server.stderr()}"
    assert took < 2.5, f"took {took:.2f} s to exit after {sig.name}"
    assert "Traceback" not in server.stderr()
    out, _ = holder.communicate(timeout=15)
    result = json.loads(out.splitlines()[-1])
    assert result["result"] == "reset", f"open connection not reset on exit: {result}"


def test_serve_exits_0_on_sigterm_when_idle(netns, start_ustack):
    server = start_ustack(netns)
    status, took = server.stop(signal.SIGTERM, timeout=3.0)
    assert status == 0, server.stderr()
    assert took < 2.5
    # The device ustack created for itself goes away with it.
    deadline = time.monotonic() + 2
    while device_exists(netns, "ustack0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not device_exists(netns, "ustack0")


# --- one process per device --------------------------------------------------------------


def test_second_serve_on_same_device_exits_2(ustack_server):
    start = time.monotonic()
    done = ustack_server.ns.run([*USTACK, "serve", "echo:7"], timeout=15)
    took = time.monotonic() - start
    err = assert_clean_error(done, 2)
    assert len(err.strip().splitlines()) == 1, err
    assert took < 5, f"took {took:.1f} s: a busy device must fail fast, not hang"
    # The first server is unharmed.
    assert ustack_server.proc.poll() is None
    echo = ustack_server.ns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"still here\n",
                                timeout=10)
    assert echo.stdout == b"still here\n"


def test_connect_on_busy_device_exits_2(ustack_server):
    start = time.monotonic()
    done = ustack_server.ns.run([*USTACK, "connect", KERNEL_ADDR, "5000"], timeout=15)
    assert_clean_error(done, 2)
    assert time.monotonic() - start < 5


# --- usage and environment errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "nosuch:7"],
        ["serve", "echo:99999"],
        ["serve", "echo:0x"],
        ["serve", "echo:-1"],
        ["serve", "--addr", "999.1.1.1", "echo:7"],
        ["serve", "--kernel-addr", "nonsense", "echo:7"],
        ["serve", "--mtu", "abc", "echo:7"],
        ["serve", "--workers", "0", "echo:7"],
        ["serve", "--workers", "257", "echo:7"],
        ["connect"],
        ["connect", KERNEL_ADDR],
        ["connect", KERNEL_ADDR, "notaport"],
        ["connect", KERNEL_ADDR, "70000"],
        ["frobnicate"],
    ],
    ids=lambda a: " ".join(a) or "none",
)
def test_bad_arguments_exit_2_without_traceback(netns, args):
    done = netns.run([*USTACK, *args], timeout=15)
    assert_clean_error(done, 2)
    assert not device_exists(netns, "ustack0"), "bad arguments must not create a device"


def test_python_dash_m_and_console_script_agree(netns):
    """``python -m ustack`` and the ``ustack`` console script are the same program."""
    beside = Path(sys.executable).parent / "ustack"  # the venv's bin/
    exe = str(beside) if beside.exists() else shutil.which("ustack")
    if exe is None:
        pytest.skip("no `ustack` console script installed")
    for cmd in ([exe, "serve", "nosuch:7"], [*USTACK, "serve", "nosuch:7"]):
        done = netns.run(cmd, timeout=15)
        assert_clean_error(done, 2)


def _nobody_can(ns, code: str) -> bool:
    probe = ns.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    sys.executable, "-c", code], timeout=15)
    return probe.returncode == 0


def _nobody_can_run_ustack(ns) -> bool:
    return _nobody_can(ns, "import ustack.cli")


def test_no_permission_for_tun_exits_2(netns):
    require_tools("setpriv")
    if not _nobody_can_run_ustack(netns):
        pytest.skip("user nobody cannot read this checkout or venv")
    done = netns.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                      "--inh-caps=-all", "--bounding-set=-all",
                      *USTACK, "serve", "echo:7"], timeout=15)
    err = assert_clean_error(done, 2)
    assert len(err.strip().splitlines()) == 1, err


# --- ustack connect ---------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "family"), [(("--no-offload",), 4), ((), 4), ((), 6)],
                         ids=["plain", "offload", "ipv6"])
def test_connect_transfers_1mb_both_ways(netns, tmp_path, extra, family):
    peer, bind, ours_addr = ((KERNEL_ADDR, "0.0.0.0", USTACK_ADDR) if family == 4
                             else ("fd77::1", "::", "fd77::2"))
    ours = tmp_path / "ours.bin"
    theirs = tmp_path / "theirs.bin"
    ours_sha = random_file(ours, 1_000_000)
    theirs_sha = random_file(theirs, 1_000_000)
    # The listener binds 0.0.0.0 (or ::): the address appears when ustack creates its device.
    listener = netns.popen(
        [sys.executable, str(NSCLIENT), "listen", "--port", "5001", "--send", str(theirs),
         "--timeout", "30", "--bind", bind],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert readline(listener, 10) == b"listening\n"
    start = time.monotonic()
    with ours.open("rb") as stdin:
        done = netns.run([*USTACK, "connect", *extra, peer, "5001"], stdin=stdin,
                         timeout=60)
    took = time.monotonic() - start
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"exit {done.returncode}; stderr: {err}"
    assert "Traceback" not in err
    assert len(done.stdout) == 1_000_000
    assert sha256(done.stdout) == theirs_sha
    out, lerr = listener.communicate(timeout=30)
    assert listener.returncode == 0, lerr.decode()
    got = json.loads(out.splitlines()[-1])
    assert got["peer"][0] == ours_addr, got
    assert got["recv_error"] is None and got["send_error"] is None, got
    assert got["received_len"] == 1_000_000, got
    assert got["received_sha256"] == ours_sha
    assert got["sender_done"], got
    assert took < 20, f"connect took {took:.1f} s: it must not wait out TIME_WAIT"


def test_connect_half_close_then_receive(netns, tmp_path):
    """stdin ends at once (half-close); the kernel side still sends 1 MB afterwards."""
    theirs = tmp_path / "theirs.bin"
    theirs_sha = random_file(theirs, 1_000_000)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    listener = netns.popen(
        [sys.executable, str(NSCLIENT), "listen", "--port", "5003", "--send", str(theirs),
         "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert readline(listener, 10) == b"listening\n"
    done = netns.run([*USTACK, "connect", KERNEL_ADDR, "5003"], input=b"", timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert sha256(done.stdout) == theirs_sha
    out, _ = listener.communicate(timeout=30)
    got = json.loads(out.splitlines()[-1])
    assert got["received_len"] == 0, got


def test_connect_with_nc_listener(netns, tmp_path):
    require_tools("nc")
    to_send = tmp_path / "kernel.txt"
    to_send.write_bytes(b"hello from the kernel\n")
    with to_send.open("rb") as stdin:
        listener = netns.popen(["nc", "-N", "-l", "5002"], stdin=stdin,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.3)  # nc gives no readiness signal; the bind is immediate
    done = netns.run([*USTACK, "connect", KERNEL_ADDR, "5002"], input=b"hello from ustack\n",
                     timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"hello from the kernel\n"
    out, err = listener.communicate(timeout=10)
    assert out == b"hello from ustack\n", err.decode()


def test_connect_refused_exits_1(netns):
    start = time.monotonic()
    done = netns.run([*USTACK, "connect", KERNEL_ADDR, "5999"], input=b"x", timeout=30)
    err = assert_clean_error(done, 1)
    assert len(err.strip().splitlines()) == 1, err
    assert done.stdout == b""
    assert time.monotonic() - start < 5, "a RST must end the attempt at once"


# --- devices: setup_tun.sh, attaching, options -----------------------------------------------


def test_setup_tun_then_serve_attaches(netns, start_ustack):
    require_tools("nc")
    first = netns.run(["bash", str(SETUP_TUN)], timeout=20)
    assert first.returncode == 0, first.stderr.decode()
    again = netns.run(["bash", str(SETUP_TUN)], timeout=20)
    assert again.returncode == 0, "setup_tun.sh must be idempotent: " + again.stderr.decode()
    link = netns.ip("-d", "link", "show", "dev", "ustack0").stdout
    assert " tun type tun " in link and "persist on" in link, link
    addrs = netns.ip("-4", "-o", "addr", "show", "dev", "ustack0").stdout
    assert addrs.count("inet 10.77.0.1/24") == 1, addrs

    server = start_ustack(netns, "echo:7")
    echo = netns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"attached\n", timeout=10)
    assert echo.returncode == 0 and echo.stdout == b"attached\n", echo.stderr.decode()
    status, _ = server.stop()
    assert status == 0, server.stderr()
    assert device_exists(netns, "ustack0"), "a persistent device outlives ustack"

    down = netns.run(["bash", str(SETUP_TUN), "--down"], timeout=20)
    assert down.returncode == 0, down.stderr.decode()
    assert not device_exists(netns, "ustack0")


def _world_usable_tun(tmp_path) -> list[str]:
    """A command prefix under which /dev/net/tun is mode 0666 (Debian's default).

    Where the machine's node is 0600, a private mount namespace bind-mounts a 0666 node of
    the same device over it, for the wrapped process only; the host is not changed.
    """
    if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
        return []
    node = tmp_path / "tun"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.stat("/dev/net/tun").st_rdev)
    os.chmod(node, 0o666)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind {node} /dev/net/tun && exec "$@"', "sh"]


def test_setup_tun_lets_its_owner_serve_without_root(netns, start_ustack, tmp_path):
    require_tools("nc", "setpriv", "unshare")
    if not _nobody_can_run_ustack(netns):
        pytest.skip("user nobody cannot read this checkout or venv")
    made = netns.run(["env", "SUDO_USER=nobody", "bash", str(SETUP_TUN), "tunx0",
                      "10.78.0.1/24"], timeout=20)
    assert made.returncode == 0, made.stderr.decode()
    assert "user nobody" in netns.ip("-d", "link", "show", "dev", "tunx0").stdout
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    server = start_ustack(
        netns, "echo:7",
        args=["--dev", "tunx0", "--addr", "10.78.0.2", "--kernel-addr", "10.78.0.1/24"],
        prefix=[*_world_usable_tun(tmp_path), *nobody],
    )
    echo = netns.run(["nc", "-N", "10.78.0.2", "7"], input=b"unprivileged\n", timeout=10)
    assert echo.stdout == b"unprivileged\n", echo.stderr.decode()
    status, _ = server.stop()
    assert status == 0, server.stderr()


def test_serve_with_custom_device_address_and_mtu(netns, start_ustack, tmp_path):
    require_tools("nc", "ping")
    start_ustack(netns, "echo:7",
                 args=["--dev", "ut9", "--addr", "10.88.0.2", "--kernel-addr", "10.88.0.1/24",
                       "--mtu", "9000"])
    link = netns.ip("link", "show", "dev", "ut9").stdout
    assert "mtu 9000" in link, link
    assert "inet 10.88.0.1/24" in netns.ip("-4", "-o", "addr", "show", "dev", "ut9").stdout
    src = tmp_path / "in.bin"
    want = random_file(src, 1_000_000)
    with src.open("rb") as stdin:
        echo = netns.run(["nc", "-N", "10.88.0.2", "7"], stdin=stdin, timeout=60)
    assert echo.returncode == 0, echo.stderr.decode()
    assert sha256(echo.stdout) == want
    ping = netns.run(["ping", "-n", "-c", "1", "-W", "2", "-s", "8000", "10.88.0.2"],
                     timeout=10)
    assert ping.returncode == 0, ping.stdout.decode()
