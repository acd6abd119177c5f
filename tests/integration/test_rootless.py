"""ustack without root (issue 20): `ustack sandbox` and the pytest plugin as an ordinary
user (uid 65534), in a user and network namespace of their own.

The user sees /dev/net/tun at mode 0666, as distributions ship it, through a device node
bind-mounted over it inside a private mount namespace (CI machines keep 0600; the host's
node is never changed). The same private mount namespace lays a world-readable tmpfs over
any directory the user could not otherwise traverse on the way to the interpreter (pyenv
under /root). A user namespace where user.max_user_namespaces is 0 stands for a system
that refuses them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import REPO, USTACK, require_tools

pytestmark = pytest.mark.netns

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
LIMIT_USERNS = Path(__file__).with_name("userns_limit.py")
TIMEOUT = 120


def _hidden(paths: list[str]) -> dict[str, set[str]]:
    """For each path, the first directory on the way that others may not traverse, with
    the entry under it that leads there (/root: {.pyenv})."""
    found: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for i in range(1, len(parts) - 1):
            here = os.path.join(*parts[:i + 1])
            if not os.stat(here).st_mode & 0o001:
                found.setdefault(here, set()).add(parts[i + 1])
                break
    return found


def _setup_script(tun_open: bool) -> str:
    """The root part, in a private mount namespace: a 0666 TUN node over the real one,
    and what the interpreter and the checkout need made traversable."""
    lines = ["set -eu", 'd=$(mktemp -d)']
    if tun_open:
        lines += ['mknod -m 666 "$d/tun" c 10 200', 'mount --bind "$d/tun" /dev/net/tun']
    needed = [sys.base_prefix, sys.prefix, str(REPO), os.path.realpath(sys.executable)]
    for n, (hidden, entries) in enumerate(sorted(_hidden(needed).items())):
        for m, entry in enumerate(sorted(entries)):
            keep = f'"$d/keep{n}_{m}"'
            lines += [f"mkdir {keep}", f"mount --bind {shlex.quote(hidden + '/' + entry)} "
                      f"{keep}"]
        lines.append(f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(hidden)}")
        for m, entry in enumerate(sorted(entries)):
            target = shlex.quote(hidden + "/" + entry)
            lines += [f"mkdir {target}", f'mount --bind "$d/keep{n}_{m}" {target}']
    lines.append('exec "$@"')
    return "\n".join(lines)


def as_nobody(cmd: list[str], cwd: Path, *, tun_open: bool = True,
              userns_limit: int | None = None, **env: str) -> subprocess.CompletedProcess:
    """`cmd` as uid 65534; with `userns_limit`, inside a user namespace that allows that
    many more (0: none)."""
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("unshare/setpriv (util-linux) are missing")
    inner = [*NOBODY, *cmd]
    if userns_limit is not None:
        inner = [sys.executable, str(LIMIT_USERNS), str(userns_limit), *inner]
    full = ["unshare", "--mount", "--propagation", "private", "bash", "-c",
            _setup_script(tun_open), "setup", *inner]
    environ = dict(os.environ, HOME=str(cwd), PYTHONDONTWRITEBYTECODE="1", **env)
    environ.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(full, cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _out(done: subprocess.CompletedProcess) -> str:
    return f"rc={done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory the ordinary user may use (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ustack-rootless-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_sandbox_as_an_ordinary_user_serves_and_returns_the_commands_status(work):
    require_tools("nc", "curl")
    script = ("id -u; printf 'hi\\n' | nc -N 10.77.0.2 7; curl -sS http://10.77.0.2/; "
              "curl -sSg 'http://[fd77::2]/bytes/5'| od -An -tu1; exit 7")
    done = as_nobody([*USTACK, "sandbox", "--trace", "--serve", "echo:7", "http:80", "--",
                      "sh", "-c", script], work)
    assert done.returncode == 7, _out(done)
    lines = done.stdout.splitlines()
    assert lines[:3] == ["0", "hi", "hello from ustack"], _out(done)
    assert lines[3].split() == ["0", "1", "2", "3", "4"], _out(done)  # over IPv6
    assert "serving echo:7 http:80 on 10.77.0.2" in done.stderr, _out(done)
    assert "SYN" in done.stderr and "stopped;" in done.stderr, _out(done)  # the ladder
    assert "Traceback" not in done.stderr, _out(done)


def test_sandbox_as_root_needs_no_user_namespace(work):
    require_tools("curl")
    here = os.readlink("/proc/self/ns/net")
    done = subprocess.run(
        [*USTACK, "sandbox", "--serve", "http:80", "--", "sh", "-c",
         "curl -sS http://10.77.0.2/ && readlink /proc/self/ns/net /proc/self/ns/user; "
         "exit 3"], cwd=work, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 3, _out(done)
    page, net, user = done.stdout.splitlines()
    assert page == "hello from ustack" and net != here, _out(done)
    assert user == os.readlink("/proc/self/ns/user"), _out(done)  # root's own


def test_a_missing_command_and_bad_arguments_are_reported(work):
    done = as_nobody([*USTACK, "sandbox", "--", "no-such-command-here"], work)
    assert done.returncode == 127, _out(done)
    assert "cannot run no-such-command-here" in done.stderr, _out(done)
    done = as_nobody([*USTACK, "sandbox", "--serve", "nope:7", "--", "true"], work)
    assert done.returncode == 2 and "Traceback" not in done.stderr, _out(done)


def test_serve_without_root_says_where_to_go(work):
    done = as_nobody([*USTACK, "serve", "echo:7"], work)
    assert done.returncode == 2, _out(done)
    assert done.stderr.count("\n") == 1 and "ustack sandbox" in done.stderr, _out(done)
    if os.stat("/dev/net/tun").st_mode & 0o006 != 0o006:  # closed to others, as on CI
        sandbox = as_nobody([*USTACK, "sandbox", "--", "true"], work, tun_open=False)
        assert sandbox.returncode == 2, _out(sandbox)
        assert "/dev/net/tun is mode" in sandbox.stderr, _out(sandbox)
        closed = as_nobody([*USTACK, "serve", "echo:7"], work, tun_open=False)
        assert closed.returncode == 2, _out(closed)
        assert "chmod 0666 /dev/net/tun" in closed.stderr, _out(closed)


PLAIN = '''
import os, socket

import pytest


@pytest.fixture
def shouting(ustack_host):
    """A fixture that serves on the stack before the test runs."""
    async def shout(reader, writer):
        writer.write((await reader.readline()).upper())
        writer.close()

    server = ustack_host.run(ustack_host.stack.start_server(shout, port=8000))
    yield ustack_host.addr
    ustack_host.call(server.close)


@pytest.mark.ustack(services=[])
def test_a_fixture_may_use_the_stack(shouting):
    with socket.create_connection((shouting, 8000), timeout=5) as s:
        s.sendall(b"hi\\n")
        assert s.makefile("rb").readline() == b"HI\\n"

def test_a_plain_test_is_on_the_hosts_network():
    # The runner (root) listens on the host's 127.0.0.1 and sends a token.
    with socket.create_connection(("127.0.0.1", int(os.environ["HOST_PORT"])), timeout=5) as s:
        assert s.recv(64) == os.environ["HOST_TOKEN"].encode()

def test_a_failure_in_the_child_is_reported_with_its_files(ustack_host):
    with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"pong"
'''


def readme_plugin_example() -> str:
    """The Python block of the README's section on the plugin."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Testing your own client against ustack"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _token_server() -> tuple[socket.socket, str, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))
    token = os.urandom(8).hex()

    def serve() -> None:
        server.settimeout(60)
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(token.encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, token, thread


def test_the_plugin_without_root(work):
    """The README's plugin examples (and examples/) pass as an ordinary user (not skipped: CI's
    USTACK_REQUIRE_NETNS=1 would fail them), a test without the fixture reaches the host's
    127.0.0.1 in the same run, and a failing test is reported with the child's traceback,
    its pcap and ladder kept."""
    for example in (REPO / "examples").glob("test_*.py"):
        shutil.copy(example, work / example.name)
    (work / "test_readme.py").write_text(readme_plugin_example())
    (work / "test_plain.py").write_text(PLAIN)
    server, token, thread = _token_server()
    try:
        done = as_nobody([sys.executable, "-m", "pytest", "-p", "ustack.testing", "-p",
                          "no:cacheprovider", "-q", "-rA", "--rootdir", str(work)], work,
                         USTACK_REQUIRE_NETNS="1", PYTHONPATH=str(REPO),
                         HOST_PORT=str(server.getsockname()[1]), HOST_TOKEN=token)
    finally:
        server.close()
        thread.join(5)
    out = _out(done)
    assert done.returncode == 1, out
    assert "1 failed" in done.stdout and "skipped" not in done.stdout, out
    assert "PASSED test_plain.py::test_a_plain_test_is_on_the_hosts_network" in done.stdout, out
    assert "PASSED test_plain.py::test_a_fixture_may_use_the_stack" in done.stdout, out
    assert "assert b'ping' == b'pong'" in done.stdout, out  # the child's own report
    examples = [line for line in done.stdout.splitlines() if line.startswith("PASSED test_")
                and "test_plain" not in line]
    assert len(examples) >= 5, out
    assert sum("PASSED test_readme.py::" in line for line in examples) == 4, out
    pcap = next(line.split(": ", 1)[1] for line in done.stdout.splitlines()
                if line.startswith("pcap: "))
    assert os.path.getsize(pcap) > 0, out
    shutil.rmtree(os.path.dirname(pcap), ignore_errors=True)


def test_without_user_namespaces_the_reason_is_named(work):
    (work / "test_one.py").write_text("def test_it(ustack_host):\n    pass\n")
    done = as_nobody([sys.executable, "-m", "pytest", "-p", "ustack.testing", "-p",
                      "no:cacheprovider", "-q", "-rs", "--rootdir", str(work)], work,
                     userns_limit=0, USTACK_REQUIRE_NETNS="0", PYTHONPATH=str(REPO))
    assert done.returncode == 0 and "1 skipped" in done.stdout, _out(done)
    assert "user.max_user_namespaces=0" in done.stdout, _out(done)
    sandbox = as_nobody([*USTACK, "sandbox", "--", "true"], work, userns_limit=0)
    assert sandbox.returncode == 2, _out(sandbox)
    assert "user.max_user_namespaces=0" in sandbox.stderr, _out(sandbox)


WIDER = '''
import os
import pytest

def note(text):
    with open(os.environ["FIXTURE_LOG"], "a") as f:
        f.write(text + "\\n")

@pytest.fixture(scope="module")
def shared():
    note("up " + str(os.getpid()))
    yield
    note("down " + str(os.getpid()))

def test_plain_first(shared):
    pass

def test_forked_uses_it(shared, ustack_host):
    pass

def test_plain_after(shared):
    pass
'''

FORKED_FIRST = '''
from test_wider import note, shared  # noqa: F401

def test_forked_first(shared, ustack_host):
    pass

def test_plain_then(shared):
    pass
'''


def test_wider_fixtures_are_finalized_once_where_they_were_set_up(work):
    """A module fixture the parent set up is the parent's alone to finalize (a forked
    test's child does not); one a forked test sets up first is finalized in its child,
    and set up again for a later test in the parent."""
    (work / "test_wider.py").write_text(WIDER)
    (work / "test_wider_b.py").write_text(FORKED_FIRST)
    log = work / "fixtures.log"
    done = as_nobody([sys.executable, "-m", "pytest", "-p", "ustack.testing", "-p",
                      "no:cacheprovider", "-q", "--rootdir", str(work), "test_wider.py",
                      "test_wider_b.py"], work,
                     USTACK_REQUIRE_NETNS="1", PYTHONPATH=f"{REPO}:{work}",
                     FIXTURE_LOG=str(log))
    assert done.returncode == 0 and "5 passed" in done.stdout, _out(done)
    events = [line.split() for line in log.read_text().splitlines()]
    parent = events[0][1]
    assert [e[0] for e in events] == ["up", "down", "up", "down", "up", "down"], events
    # test_wider.py: up and down once, both in pytest's process.
    assert events[0][1] == events[1][1] == parent, events
    # test_wider_b.py: up and down in the forked test's child, then again in pytest's.
    assert events[2][1] == events[3][1] != parent, events
    assert events[4][1] == events[5][1] == parent, events
