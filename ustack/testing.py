"""A pytest plugin: every test that asks for `ustack_host` gets a private network with ustack.

Registered through the `pytest11` entry point named `ustack.testing` when ustack is
installed (from a checkout, load it with `-p ustack.testing`; `-p no:ustack.testing`
switches it off); it does nothing for tests that do not use the fixture.

    def test_echo(ustack_host):
        with socket.create_connection((ustack_host.addr, 7), timeout=5) as s:
            s.sendall(b"hi")
            assert s.recv(2) == b"hi"

    @pytest.mark.ustack(services=["http:8080"], loss=0.05, seed=3)
    def test_lossy(ustack_host): ...

The test's thread enters a new network namespace (`unshare(CLONE_NEWNET)`) for the test,
so every kernel socket it opens lives there, and leaves it afterwards. The stack runs on
its own thread (started inside that namespace) with its own event loop, behind a TUN
device whose kernel side is `kernel_addr` (/24 unless the marker gives a prefix). Where
no namespace may be created but the process is root (a container under Docker's default
seccomp profile) the process's own namespace, private to the container, is used instead.

Without root (`ustack.rootless`) such a test runs whole in a forked child inside a user
and network namespace of its own, root there; where the system allows no unprivileged
user namespace, or `/dev/net/tun` is closed to the user, it is skipped with the reason and
how to allow it (failed under USTACK_REQUIRE_NETNS=1).

Every packet is captured to a pcap and every connection drawn as a ladder; when the test
fails both are kept and their paths added to the report, otherwise they are deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from ustack import netns, rootless
from ustack.marker import MARKER_DOC, Options
from ustack.marker import options_of as _options

__all__ = ["UstackHost", "ustack_host"]

REQUIRE_NETNS_ENV = "USTACK_REQUIRE_NETNS"
TUN_PATH = "/dev/net/tun"
START_TIMEOUT = 10.0  # seconds for the stack to come up
STOP_TIMEOUT = 10.0  # seconds for it to shut down
RUN_TIMEOUT = 30.0  # default for `run(coro)`

T = TypeVar("T")


def _strict() -> bool:
    return os.environ.get(REQUIRE_NETNS_ENV, "") not in ("", "0")


def skip_or_fail(reason: str) -> None:
    """Skip the current test, or fail it when ``USTACK_REQUIRE_NETNS=1`` (CI)."""
    if _strict():
        pytest.fail(f"{reason} (and {REQUIRE_NETNS_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@dataclass
class UstackHost:
    """What the `ustack_host` fixture gives a test."""

    addr: str
    kernel_addr: str
    pcap_path: str
    ladder_path: str
    private_netns: bool  # False: the process's own namespace (a container's) is used
    startup_seconds: float = 0.0
    stack: Any = None  # ustack.Stack, running on `loop` in the stack's thread
    loop: asyncio.AbstractEventLoop | None = None
    # IPv6 (None where the namespace has it off): ustack's and the kernel side's address.
    addr6: str | None = None
    kernel_addr6: str | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = RUN_TIMEOUT) -> T:
        """Run `coro` on the stack's event loop; return its result (or raise its error)."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the coroutine did not finish within {timeout} s") from None

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = RUN_TIMEOUT) -> T:
        """Call `fn(*args)` on the stack's event loop thread; return its result."""
        assert self.loop is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(invoke)
        return future.result(timeout)

    def stats(self) -> dict[str, int]:
        """The stack's counters (`Stack.stats()`)."""
        return self.call(self.stack.stats)

    def rule(self, rule: str) -> Any:
        """Add a fault that knows TCP (`Stack.rule`: e.g. "drop flags=SA count=2");
        returns the Rule, whose `fired` counts its firings."""
        return self.call(self.stack.rule, rule)

    def faults(self, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
               corrupt: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
               seed: int | None = None, distribution: str = "uniform",
               correlation: float = 0.0, reorder_gap: int = 0) -> int | None:
        """Replace the link's faults (`Stack.faults`; fractions; no arguments = none).
        Returns the seed."""
        def change() -> int | None:
            seed_in_use: int | None = self.stack.faults(
                loss=loss, dup=dup, reorder=reorder, corrupt=corrupt, delay_ms=delay_ms,
                jitter_ms=jitter_ms, seed=seed, distribution=distribution,
                correlation=correlation, reorder_gap=reorder_gap)
            return seed_in_use

        return self.call(change)

    def proxy(self, port: int, host: str | None = None, upstream_port: int = 0,
              toxics: tuple[str, ...] = ()) -> Any:
        """A proxy on ustack's `port` to (`host`, default the kernel's side, and
        `upstream_port`), with `toxics` (`Stack.create_proxy`). Returns the running
        `ustack.services.proxy.Proxy`: change its toxics with `ustack_host.call(
        proxy.add_toxic, "latency latency=50")`, `proxy.clear_toxics` and the rest."""
        return self.run(self.stack.create_proxy(port, host or self.kernel_addr,
                                                upstream_port, toxics=toxics))

    def preset(self, name: str, seed: int | None = None) -> int | None:
        """Make the link a named one (`Stack.preset`: "wifi", "3g", "satellite"), its
        faults and shaping together. Returns the seed."""
        seed_in_use: int | None = self.call(self.stack.preset, name, seed)
        return seed_in_use


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Runner:
    """The stack's thread: enters the test's namespace, runs a loop with a Stack."""

    def __init__(self, host: UstackHost, opts: Options, dev: str, ns_fd: int | None,
                 trace_file: Any) -> None:
        self.host = host
        self.opts = opts
        self.dev = dev
        self.ns_fd = ns_fd
        self.trace_file = trace_file
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stop_error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.stop_event: asyncio.Event | None = None  # set on the loop: the stack closes

    def start(self) -> None:
        thread = threading.Thread(target=self._thread, name="ustack-host", daemon=True)
        self.thread = thread
        thread.start()
        if not self.ready.wait(START_TIMEOUT):
            raise TimeoutError(f"ustack did not start within {START_TIMEOUT} s")
        if self.error is not None:
            raise self.error

    def _thread(self) -> None:
        loop = None
        try:
            if self.ns_fd is not None:
                netns.setns(self.ns_fd)  # already inherited; made explicit
            loop = _new_loop()
            self.loop = loop
            loop.run_until_complete(self._main(loop))
        except BaseException as exc:
            if not self.ready.is_set():
                self.error = exc
            else:
                self.stop_error = exc
        finally:
            self.ready.set()
            if loop is not None:
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        from ustack.api import Stack
        from ustack.services import BACKLOG, parse_service_spec, protocol_factory
        from ustack.services.proxy import parse_proxy_spec, proxy_upstream

        opts, host = self.opts, self.host
        specs = [parse_service_spec(s) for s in opts.services]
        stack = Stack(dev=self.dev, addr=opts.addr, kernel_addr=opts.kernel_addr,
                      mtu=opts.mtu, pcap=host.pcap_path, trace=self.trace_file,
                      offload=opts.offload)
        if opts.preset is not None:
            stack.preset(opts.preset, seed=opts.seed)
        else:
            stack.faults(**opts.fault_kwargs())
            stack.shape(opts.rate_bps, queue=opts.queue, gemodel=opts.gemodel,
                        seed=opts.seed)
        for rule in opts.rules:
            stack.rule(rule)
        await stack.__aenter__()
        try:
            for name, port in specs:
                await stack.create_server(protocol_factory(name), port=port,
                                          backlog=BACKLOG)
            for spec in opts.proxies:
                name, port = parse_proxy_spec(f"proxy:{spec}")
                upstream = proxy_upstream(name)
                assert upstream is not None
                await stack.create_proxy(port, *upstream, toxics=opts.toxics,
                                         seed=opts.seed)
            host.stack = stack
            host.loop = loop
            if stack.addr6 and not stack.ipv6_refused:
                host.addr6 = stack.addr6
                host.kernel_addr6 = (stack.kernel_addr6 or "").split("/")[0] or None
            self.stop_event = asyncio.Event()
            self.ready.set()
            await self.stop_event.wait()
        finally:
            await stack.aclose()

    def stop(self) -> None:
        host = self.host
        if host.loop is not None and self.stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                host.loop.call_soon_threadsafe(self.stop_event.set)
        if self.thread is not None:
            self.thread.join(STOP_TIMEOUT)
            if self.thread.is_alive():
                raise RuntimeError(f"the ustack thread did not stop within {STOP_TIMEOUT} s")
        if self.stop_error is not None:
            raise self.stop_error


_HOST = pytest.StashKey[UstackHost]()
_FAILED = pytest.StashKey[bool]()


def _precheck() -> None:
    if not sys.platform.startswith("linux"):
        skip_or_fail("ustack_host needs Linux (network namespaces and TUN devices)")
    if not os.path.exists(TUN_PATH):
        skip_or_fail(f"ustack_host needs {TUN_PATH}, which is missing "
                      "(modprobe tun, or docker run --device /dev/net/tun)")


@contextlib.contextmanager
def _private_namespace() -> Iterator[int | None]:
    """Move this thread into a new network namespace; yield an fd on it (None: the
    process's own namespace is used, as no new one may be made). Restores afterwards."""
    orig = netns.current_fd()
    test_fd = None
    try:
        problem = None
        try:
            netns.unshare_net()
        except OSError as exc:
            if os.geteuid() != 0 or not netns.can_unshare_error(exc):
                problem = ("ustack_host needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to "
                           f"create a private network namespace: {exc.strerror}")
            # else: root where namespaces are forbidden (a container): use this one
        else:
            test_fd = netns.current_fd()
        if problem is not None:
            skip_or_fail(problem)
        try:
            if test_fd is not None:
                netns.link_up("lo")
            yield test_fd
        finally:
            if test_fd is not None:
                netns.setns(orig)
    finally:
        if test_fd is not None:
            os.close(test_fd)
        os.close(orig)


@pytest.fixture
def ustack_host(request: pytest.FixtureRequest) -> Iterator[UstackHost]:
    """A private network with a running ustack; see the module's docstring."""
    opts = _options(request.node.get_closest_marker("ustack"))
    _precheck()
    if rootless.wanted():  # reached only where no user namespace could be made
        skip_or_fail(f"ustack_host without root: {rootless.problem()}")
    t0 = time.perf_counter()
    with _private_namespace() as ns_fd:
        workdir = tempfile.mkdtemp(prefix="ustack-")
        keep = False
        try:
            dev = "ustack0" if ns_fd is not None else f"ustk{os.getpid()}"[:15]
            host = UstackHost(addr=opts.addr, kernel_addr=opts.kernel_addr.split("/")[0],
                              pcap_path=os.path.join(workdir, "capture.pcap"),
                              ladder_path=os.path.join(workdir, "ladder.txt"),
                              private_netns=ns_fd is not None)
            with open(host.ladder_path, "w", encoding="utf-8") as trace_file:
                runner = _Runner(host, opts, dev, ns_fd, trace_file)
                try:
                    try:
                        runner.start()
                    except Exception as exc:
                        from ustack.tun import TunError
                        if isinstance(exc, TunError):
                            skip_or_fail(f"ustack_host cannot open its TUN device: {exc}")
                        raise
                    host.startup_seconds = time.perf_counter() - t0
                    request.node.stash[_HOST] = host
                    yield host
                finally:
                    runner.stop()
            keep = request.node.stash.get(_FAILED, False)
            if opts.trace:
                with open(host.ladder_path, encoding="utf-8") as f:
                    sys.stderr.write(f"ustack ladder ({host.ladder_path}):\n{f.read()}")
        finally:
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Without root, a test that uses `ustack_host` runs in a forked child in its own
    user and network namespace (`ustack.rootless`); where none can be made, as usual
    (its fixture then skips, saying why)."""
    if (not rootless.wanted() or "ustack_host" not in getattr(item, "fixturenames", ())
            or rootless.problem() is not None):
        return None
    rootless.run_protocol(item, nextitem)
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    host = item.stash.get(_HOST, None)
    if host is not None and report.failed and not item.stash.get(_FAILED, False):
        item.stash[_FAILED] = True
        report.sections.append(
            ("ustack", f"pcap: {host.pcap_path}\nladder: {host.ladder_path}"))
        item.user_properties.append(("ustack_pcap", host.pcap_path))
        item.user_properties.append(("ustack_ladder", host.ladder_path))
    return report
