"""`Server`: the asyncio.Server interface over one ustack listener."""

import asyncio
import socket
from collections.abc import Callable

from ustack.tcp.listener import Listener


class ListeningSocket:
    """What `Server.sockets` holds: the address a listener is bound to, as a socket
    would say it (`getsockname()`, `family`, `type`)."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self, name: tuple[str, int]) -> None:
        self._name = name

    def getsockname(self) -> tuple[str, int]:
        return self._name

    def __repr__(self) -> str:
        return f"<ustack listening socket {self._name[0]}:{self._name[1]}>"


class Server:
    """The asyncio.Server interface over one ustack listener."""

    def __init__(self, listener: Listener, protocol_factory: Callable[[], asyncio.BaseProtocol],
                 *, loop: asyncio.AbstractEventLoop, addr: str,
                 on_close: Callable[[Listener], None]) -> None:
        self._listener = listener
        self.protocol_factory = protocol_factory
        self._loop = loop
        self._addr = addr
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
        return (ListeningSocket((self._addr, self._listener.port)),)

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

