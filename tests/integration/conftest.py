"""Fixtures for the integration tests: namespaces and a running ``ustack serve``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .support import Netns, UstackServer

ALL_SERVICES = ("echo:7", "discard:9", "http:80", "chargen:19")


@pytest.fixture
def make_netns() -> Iterator[Callable[[], Netns]]:
    """A factory of private namespaces; all of them (and their processes) go at teardown."""
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns()
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.close()


@pytest.fixture
def netns(make_netns) -> Netns:
    return make_netns()


@pytest.fixture
def start_ustack(make_netns, tmp_path) -> Iterator[Callable[..., UstackServer]]:
    """Start ``ustack serve SERVICES`` in a namespace and wait until it is ready.

    At teardown every server still running gets SIGTERM and must exit 0 within 3 s
    (this fixture depends on make_netns so that it is torn down before the namespaces).
    """
    servers: list[UstackServer] = []

    def start(
        ns: Netns, *services: str, args=(), prefix=(), ready: bool = True
    ) -> UstackServer:
        log = tmp_path / f"ustack-serve-{len(servers)}.stderr"
        server = UstackServer(ns, services or ALL_SERVICES, log, args, prefix)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    problems = []
    for server in servers:
        if server.proc.poll() is None:
            status, took = server.stop()
            if status != 0:
                problems.append(
                    f"{' '.join(server.cmd)}: exit status {status} after SIGTERM "
                    f"({took:.1f} s); stderr:\n{server.stderr()}"
                )
        server.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def ustack_server(netns, start_ustack) -> UstackServer:
    """``ustack serve echo:7 discard:9 http:80 chargen:19`` ready in ``netns``."""
    return start_ustack(netns)
