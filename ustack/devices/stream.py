"""IP packets back to back over a byte stream (`ustack.devices.framing`): what tunnels
carry over TLS or TCP. `StreamLink` runs over any asyncio stream pair, or opens one: a
kernel TCP connection to a peer (`connect`), or the first one a listening socket accepts
(`listen`) — two processes, or two machines, each with its own stack, no TUN and no root.

A packet that frames but is bad inside is the stack's to drop and count; the stream goes
on. A stream that cannot be framed, or that ends, ends the link: `lost` (a future) holds
why (None for a clean end), and the stack that uses it closes (`Stack` watches it), so no
reader or writer waits for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from ustack.devices.base import Inbox
from ustack.devices.framing import Framer, FramingError
from ustack.packet import Packet

DEFAULT_MTU = 16000  # what the iOS developer tunnel uses
READ_SIZE = 256 * 1024
HIGH_WATER = 4 << 20  # bytes the stream may hold unsent before packets are dropped
Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class LinkLost(ConnectionError):
    """The stream under a link ended or could not be framed; `orderly` when the peer
    ended it between two packets (a clean end of the link, not a failure)."""

    def __init__(self, message: str, orderly: bool = False) -> None:
        super().__init__(message)
        self.orderly = orderly


class StreamLink:
    """A device for `Stack(device=...)` over a stream of framed packets."""

    offload = False

    def __init__(self, opener: Opener, *, mtu: int = DEFAULT_MTU, name: str = "stream",
                 queue: int = 1 << 16) -> None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu} is not in 68..65535")
        self.mtu, self.name = mtu, name
        self.counters: Counter[str] = Counter()
        self.inbox = Inbox(self.counters, queue)
        self.detach = self.inbox.detach
        self._opener = opener
        self._writer: asyncio.StreamWriter | None = None
        self._out: list[bytes] = []  # packets of this loop turn, written together
        self._out_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[LinkLost | None] | None = None
        self._bound: asyncio.Future[None] | None = None
        self.waits_for_peer = False  # `listen`: started once its socket listens
        self.closed = False

    @classmethod
    def over(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
             **kwargs: object) -> StreamLink:
        """Over a stream already open (a TLS connection, a pipe, a socketpair)."""
        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return reader, writer

        return cls(opened, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def connect(cls, host: str, port: int, **kwargs: object) -> StreamLink:
        """Over a kernel TCP connection to host:port (opened when the stack starts)."""
        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection(host, port)

        return cls(opened, name=f"tcp:{host}:{port}", **kwargs)  # type: ignore[arg-type]

    @classmethod
    def listen(cls, host: str, port: int, **kwargs: object) -> StreamLink:
        """Over the first kernel TCP connection accepted on host:port (the listening
        socket opens as the stack starts, which waits for it, and closes at that first
        connection)."""
        link: StreamLink

        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            first: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
                asyncio.get_running_loop().create_future())

            def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                if first.done():
                    writer.close()  # one peer per link
                else:
                    first.set_result((reader, writer))

            server = await asyncio.start_server(accepted, host, port)
            link._set(link._bound)
            try:
                return await first
            finally:
                server.close()

        link = cls(opened, name=f"tcp-listen:{host}:{port}", **kwargs)  # type: ignore[arg-type]
        link.waits_for_peer = True
        return link

    # ------------------------------------------------------------ the stack's side

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[Packet]], None],
               ) -> None:
        self.inbox.attach(loop, deliver)
        self._connected = loop.create_future()
        self._bound = loop.create_future()
        self.lost = loop.create_future()
        if not self.waits_for_peer:
            self._set(self._bound)
        self._task = loop.create_task(self._run())

    async def started(self) -> None:
        """Returns once the link has started: at once, or for `listen` once its socket
        listens (LinkLost if it cannot, as for an address in use)."""
        await self._either(self._bound)

    async def ready(self) -> None:
        """Returns once the stream is open (LinkLost if it could not be)."""
        await self._either(self._connected)

    async def _either(self, future: asyncio.Future[None] | None) -> None:
        assert future is not None and self.lost is not None
        either: list[asyncio.Future[Any]] = [future, self.lost]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            raise self.lost.result() or LinkLost(f"{self.name}: the stream ended")

    @staticmethod
    def _set(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    def write(self, packet: Packet) -> bool:
        """The packet onto the stream (its own length frames it); dropped and counted
        while the stream is not open, or holds more than HIGH_WATER bytes unsent."""
        writer = self._writer
        if writer is None or self.closed:
            self.counters["tx_dropped_link_down"] += 1
            return False
        if self._out_bytes + writer.transport.get_write_buffer_size() > HIGH_WATER:
            self.counters["tx_dropped_queue_full"] += 1
            return False
        # A step's packets go to the stream together, on the loop's next turn: one
        # system call for them all, not one each.
        self._out.append(bytes(packet))  # type: ignore[arg-type]
        self._out_bytes += len(packet)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        self.counters["tx_packets"] += 1
        return True

    def _flush(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if self._writer is not None and not self.closed and out:
            self._writer.write(b"".join(out))

    def close(self) -> None:
        self._flush()  # the stack's last packets (its resets) still go
        self.closed = True
        self.inbox.clear()
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    # ---------------------------------------------------------------- internals

    async def _run(self) -> None:
        """Open the stream, then frame what it brings until it ends."""
        assert self._connected is not None
        try:
            reader, self._writer = await self._opener()
        except OSError as e:
            return self._lose(LinkLost(f"{self.name}: {e.strerror or e}"))
        except Exception as e:
            return self._lose(LinkLost(f"{self.name}: {e!r}"))
        self._set(self._connected)
        framer = Framer()
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for packet in framer.feed(data):
                    self.inbox.put(packet)
        except FramingError as e:
            return self._lose(LinkLost(f"{self.name}: not a stream of IP packets {e}"))
        except OSError as e:
            return self._lose(LinkLost(f"{self.name}: {e.strerror or e}"))
        except Exception as e:  # whatever ends the stream ends the link: nobody waits
            return self._lose(LinkLost(f"{self.name}: {e!r}"))
        if framer.pending:
            self._lose(LinkLost(f"{self.name}: the stream ended inside a packet"))
        else:
            self._lose(None if self.closed else LinkLost(f"{self.name}: the peer closed "
                                                         "the stream", orderly=True))

    def _lose(self, why: LinkLost | None) -> None:
        if why is not None:
            self.counters["link_lost"] += 1
        writer, self._writer = self._writer, None  # nothing more goes to a lost stream
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(why)
