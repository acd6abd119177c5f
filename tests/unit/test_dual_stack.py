"""Listening per family as asyncio does it (`create_server`): host=None takes both
families (a socket for each in `Server.sockets`), "0.0.0.0" IPv4 only, "::" IPv6 only
(asyncio sets IPV6_V6ONLY), an address of ours only that one; two listeners share a
port on different addresses, never on the same one. Two Stacks over a socketpair."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from tests.unit.test_transport_contract import PairDevice, PairStack, Recorder, recording_factory
from tests.unit.test_transport_contract import run as run  # the fixture, both loops

SERVER, SERVER6, SERVER_LL = "10.0.0.1", "fd00::1", "fe80::1"
CLIENT, CLIENT6, CLIENT_LL = "10.0.0.2", "fd00::2", "fe80::2"


def stacks() -> tuple[PairStack, PairStack]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return (PairStack(PairDevice(a), SERVER, addr6=SERVER6, link_local6=SERVER_LL),
            PairStack(PairDevice(b), CLIENT, addr6=CLIENT6, link_local6=CLIENT_LL))


async def reaches(client: PairStack, host: str, port: int) -> Any:
    """The peername of a connection to host:port, or the error it met."""
    try:
        transport, _ = await client.create_connection(Recorder, host, port)
    except OSError as e:
        return e.errno
    name = transport.get_extra_info("peername")
    transport.close()
    return name


@pytest.mark.parametrize(("host", "names", "answered"), [
    (None, [("0.0.0.0", 7), ("::", 7, 0, 0)], {SERVER, SERVER6, SERVER_LL}),
    ("", [("0.0.0.0", 7), ("::", 7, 0, 0)], {SERVER, SERVER6, SERVER_LL}),
    ("0.0.0.0", [("0.0.0.0", 7)], {SERVER}),
    ("::", [("::", 7, 0, 0)], {SERVER6, SERVER_LL}),
    (SERVER, [(SERVER, 7)], {SERVER}),
    (SERVER6, [(SERVER6, 7, 0, 0)], {SERVER6}),
    (SERVER_LL + "%pair0", [(SERVER_LL, 7, 0, 0)], {SERVER_LL}),
])
def test_a_listener_takes_the_addresses_asyncio_would_bind(run, host, names, answered) -> None:
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            _, factory = recording_factory()
            server = await server_stack.create_server(factory, host, 7)
            assert [s.getsockname() for s in server.sockets] == names
            assert [s.family for s in server.sockets] == [
                socket.AF_INET6 if len(n) == 4 else socket.AF_INET for n in names]
            for addr in (SERVER, SERVER6, SERVER_LL):
                got = await reaches(client_stack, addr, 7)
                if addr in answered:
                    # AF_INET6's 4-tuple: no interface here, so zone 0 (a TUN's index).
                    assert got == ((addr, 7) if ":" not in addr else (addr, 7, 0, 0))
                else:
                    assert got == errno.ECONNREFUSED  # a RST, as from a kernel
            server.close()

    run(main())


def test_families_share_a_port_and_one_address_cannot_listen_twice(run) -> None:
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            four = await server_stack.create_server(Recorder, "0.0.0.0", 8)
            six = await server_stack.create_server(Recorder, "::", 8)
            for host in (None, SERVER6, "0.0.0.0"):
                with pytest.raises(OSError) as caught:
                    await server_stack.create_server(Recorder, host, 8)
                assert caught.value.errno == errno.EADDRINUSE
            with pytest.raises(OSError) as caught:
                await server_stack.create_server(Recorder, "fd00::9", 9)
            assert caught.value.errno == errno.EADDRNOTAVAIL
            assert await reaches(client_stack, SERVER, 8) == (SERVER, 8)
            assert await reaches(client_stack, SERVER6, 8) == (SERVER6, 8, 0, 0)
            four.close()
            assert await reaches(client_stack, SERVER, 8) == errno.ECONNREFUSED
            assert await reaches(client_stack, SERVER6, 8) == (SERVER6, 8, 0, 0)
            six.close()

    run(main())
