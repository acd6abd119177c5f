"""The pytest plugin without root: the body of a test that uses `ustack_host` runs in a
forked child, in a user and network namespace of its own (`ustack.userns`), where the
stack's TUN device and the test's kernel sockets live; the test's outcome comes back to
pytest's process and is reported there as any test's.

Why a child: a process that has entered a new user namespace cannot enter the host's
network namespace again, and `unshare(CLONE_NEWUSER)` needs a single-threaded process.
The fork leaves pytest's process where it was: tests that do not use the fixture run on
the host's network as before. Fixtures are set up and torn down in pytest's process as
usual (their values are the child's too, copied by the fork); only the call runs in the
child. Its output reaches pytest's capture (the child writes to the same descriptors),
and a failure comes back as its report text.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import pytest

from ustack import userns

_probed: list[str | None] = []  # the answer of `problem`, once asked


def wanted() -> bool:
    """Whether this process is not root: the rootless mode then applies."""
    return os.geteuid() != 0


def problem() -> str | None:
    """Why no test can get a private network here without root, or None; the user
    namespace is tried once, in a child (this process must stay where it is)."""
    if not _probed:
        _probed.append(userns.tun_problem() or _probe_userns())
    return _probed[0]


def _probe_userns() -> str | None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: try, say the errno if refused, leave without cleanup
        code = 0
        try:
            os.close(read)
            userns.enter()
        except OSError as exc:
            os.write(write, str(exc.errno or 0).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read()
    os.waitpid(pid, 0)
    if not said:
        return None
    err = int(said)
    return userns.problem(OSError(err, os.strerror(err)))


def call_in_child(body: Callable[[], None], test_path: str) -> None:
    """Run `body` (the test's call) in a forked child inside a new user and network
    namespace; then pass, or raise what it raised: a skip or xfail as such, any other
    exception as a failure with the child's report of it (its traceback from the first
    frame in `test_path`, the test's file)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(body, write, test_path)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    if not said:
        how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited with status {os.waitstatus_to_exitcode(status)}")
        pytest.fail(f"the test's process (in its own user and network namespace) {how} "
                    "before it reported", pytrace=False)
    outcome = json.loads(said)
    kind, text = outcome["kind"], outcome["text"]
    if kind == "skip":
        pytest.skip(text)
    if kind == "xfail":
        pytest.xfail(text)
    if kind != "passed":
        pytest.fail(text, pytrace=False)


def _child(body: Callable[[], None], write: int, test_path: str) -> None:
    """The forked child: never returns (os._exit, past pytest's own exit handling)."""
    outcome = {"kind": "passed", "text": ""}
    try:
        try:
            userns.enter()
        except OSError as exc:
            pytest.fail(f"ustack_host without root: {userns.problem(exc)}", pytrace=False)
        body()
    except pytest.skip.Exception as exc:
        outcome = {"kind": "skip", "text": str(exc.msg)}
    except pytest.xfail.Exception as exc:
        outcome = {"kind": "xfail", "text": str(exc.msg)}
    except pytest.fail.Exception as exc:
        text = (str(pytest.ExceptionInfo.from_exception(exc).getrepr(style="short"))
                if exc.pytrace else str(exc.msg))
        outcome = {"kind": "failed", "text": text}
    except BaseException as exc:  # the test's failure, reported as pytest would have
        info = pytest.ExceptionInfo.from_exception(exc)
        info.traceback = info.traceback.cut(path=test_path)  # from the test's own frame
        outcome = {"kind": "failed", "text": str(info.getrepr(style="short", chain=True))}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        data = json.dumps(outcome).encode()
        while data:
            data = data[os.write(write, data):]
    finally:
        os._exit(0)
