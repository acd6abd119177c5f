"""The pytest plugin without root: a test that uses `ustack_host` runs whole (setup,
call, teardown) in a forked child, in a user and network namespace of its own
(`ustack.userns`) where it is root, so the fixture works there as it does for root; its
reports come back to pytest's process and are logged there as any test's, as
pytest-forked does it.

Why a child: a process that has entered a new user namespace cannot enter the host's
network namespace again, and `unshare(CLONE_NEWUSER)` needs a single-threaded process.
The fork leaves pytest's process where it was: tests that do not use the fixture run on
the host's network as before. The child's output reaches pytest's capture (it writes to
the same descriptors). A wider-scoped fixture such a test uses first is set up in the
child and finalized there; one set up before is the parent's, finalized by it alone.

pytest has no public interface for running a test's protocol elsewhere: this drives its
runner (`_pytest.runner`, and the session's setup state), as pytest-forked does.
"""

from __future__ import annotations

import os
import pickle
import sys

import pytest
from _pytest.runner import pytest_runtest_teardown as teardown_collectors
from _pytest.runner import runtestprotocol

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
    _, status = os.waitpid(pid, 0)
    if not said:
        return None if status == 0 else (
            f"a child trying a user namespace ended with status {status} before it said "
            "why")
    err = int(said)
    return userns.problem(OSError(err, os.strerror(err)))


def run_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """`pytest_runtest_protocol` for `item`: its setup, call and teardown run in a forked
    child inside a new user and network namespace; the reports come back and are logged
    here as pytest logs any test's."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in _reports_from_child(item, nextitem):
        ihook.pytest_runtest_logreport(report=report)
    # This process still holds the collectors (modules, classes) earlier tests set up
    # here: it drops those the next test does not need, as the test's own teardown
    # would have; a finalizer's error is this test's teardown error.
    call = pytest.CallInfo.from_call(lambda: teardown_collectors(item, nextitem),
                                     when="teardown")
    if call.excinfo is not None:
        ihook.pytest_runtest_logreport(report=ihook.pytest_runtest_makereport(item=item,
                                                                              call=call))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _reports_from_child(item: pytest.Item,
                        nextitem: pytest.Item | None) -> list[pytest.TestReport]:
    config = item.config
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(item, nextitem, write)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    if not said:
        how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited with status {os.waitstatus_to_exitcode(status)}")
        return [pytest.TestReport(item.nodeid, item.location, {}, "failed",
                                  f"the test's process (in its own user and network "
                                  f"namespace) {how} before it reported", "call")]
    # pickle, not JSON: a skip's report holds a tuple that must stay one (and both ends
    # are this same program).
    return [config.hook.pytest_report_from_serializable(config=config, data=data)
            for data in pickle.loads(said)]


def _child(item: pytest.Item, nextitem: pytest.Item | None, write: int) -> None:
    """The forked child: never returns (os._exit, past pytest's own exit handling).
    Where no namespace can be made here, the fixture says why (it sees a non-root
    user, and `problem` this child's reason)."""
    code = 0
    try:
        try:
            userns.enter()
        except OSError as exc:
            _probed[:] = [userns.problem(exc)]
        # The collectors this process inherited are the parent's to finalize (it does,
        # in `run_protocol`): their finalizers go from this copy of pytest's setup
        # state. What this child sets up (a module's fixture first used here) it
        # finalizes itself, down to the session, before it goes.
        state = item.session._setupstate
        for node, (_, failed) in list(state.stack.items()):
            state.stack[node] = ([], failed)
        reports = runtestprotocol(item, log=False, nextitem=None)
        config = item.config
        data = pickle.dumps([config.hook.pytest_report_to_serializable(config=config,
                                                                          report=report)
                             for report in reports])
        sys.stdout.flush()
        sys.stderr.flush()
        while data:
            data = data[os.write(write, data):]
    except BaseException:  # reported by the parent as a death without a report
        code = 1
    finally:
        os._exit(code)
