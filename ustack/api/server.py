"""`Server`: the asyncio.Server interface over one ustack listener."""

import asyncio
import socket
from collections.abc import Callable

from ustack.addresses import endpoint, is_link_local, pton
from ustack.tcp.listener import Listener

SocketName = tuple[str, int] | tuple[str, int, int, int]  # AF_INET's, AF_INET6's


class ListeningSocket:
    """What `Server.sockets` holds: the address a listener is bound to, as a socket
    would say it (`getsockname()`, `family`, `type`)."""

    type = socket.SOCK_STREAM

    def __init__(self, name: SocketName) -> None:
        self._name = name
        self.family = socket.AF_INET6 if len(name) == 4 else socket.AF_INET

    def getsockname(self) -> SocketName:
        return self._name

    def __repr__(self) -> str:
        return f"<ustack listening socket {endpoint(self._name[0], self._name[1])}>"


def socket_names(host: str | None, local: list[str], port: int,
                 scope_id: int) -> list[SocketName]:
    """What asyncio's listening sockets would say for `host` bound to our `local`
    addresses: one per family for None or "" (each its wildcard), the wildcard asked
    for, or the address; an IPv6 one as (host, port, flowinfo, scope_id)."""
    if not host:
        names = ["0.0.0.0", "::"] if any(":" in a for a in local) else ["0.0.0.0"]
    elif host in ("0.0.0.0", "::"):
        names = [host]
    else:
        names = local
    return [(a, port) if ":" not in a
            else (a, port, 0, scope_id if is_link_local(pton(a)) else 0) for a in names]


class Server:
    """The asyncio.Server interface over one ustack listener."""

    def __init__(self, listener: Listener, protocol_factory: Callable[[], asyncio.BaseProtocol],
                 *, loop: asyncio.AbstractEventLoop, names: list[SocketName],
                 on_close: Callable[[Listener], None]) -> None:
        self._listener = listener
        self.protocol_factory = protocol_factory
        self._loop = loop
        self._names = names
        self._on_close = on_close  # the stack's: stop listening, reset what waits
        self._closed = loop.create_future()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def sockets(self) -> tuple["ListeningSocket", ...]:
        """As `asyncio.Server.sockets`: what it listens on, each with `getsockname()`
        (no kernel socket exists; these only describe the listener)."""
        if self._listener.closed:
            return ()
        return tuple(ListeningSocket(name) for name in self._names)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._listener.closed

    def close(self) -> None:
        """Mirrors `asyncio.Server.close`: stop listening; connections not yet accepted
        are reset (as closing a listening socket does); accepted ones go on."""
        if not self._listener.closed:
            self._on_close(self._listener)
        if not self._closed.done():
            self._closed.set_result(None)

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

