"""A link the application drives, for a tunnel it reads and writes itself (a VPN's
packets, a QUIC datagram flow, a device protocol): `feed` hands the stack a packet that
came out of the tunnel; what the stack sends comes out through the `on_packet` callback,
or from `await link.get()` / `async for packet in link` (a bounded queue: when it is
full, packets are dropped and counted, as a full TUN queue drops them, and TCP resends).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable

from ustack.devices.base import Inbox
from ustack.packet import Packet

DEFAULT_QUEUE = 1024


class LinkClosed(ConnectionError):
    """The link was closed: no packet will come out of it any more."""


class PacketLink:
    """A device for `Stack(device=...)` that the application feeds and drains."""

    name = "packets"
    offload = False

    def __init__(self, mtu: int = 1500, *, on_packet: Callable[[bytes], object] | None = None,
                 queue: int = DEFAULT_QUEUE) -> None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu} is not in 68..65535")
        self.mtu, self.queue = mtu, queue
        self.on_packet = on_packet
        self.counters: Counter[str] = Counter()
        self.inbox = Inbox(self.counters, queue)
        self.attach = self.inbox.attach  # the stack's driver takes what `feed` brings
        self.detach = self.inbox.detach
        self._out: deque[bytes] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self.closed = False

    # ------------------------------------------------------------ the stack's side

    def write(self, packet: Packet) -> bool:
        """A packet the stack sends: to `on_packet`, or queued for `get`."""
        if self.closed:
            self.counters["tx_dropped_link_down"] += 1
            return False
        data = bytes(packet)  # type: ignore[arg-type]
        self.counters["tx_packets"] += 1
        if self.on_packet is not None:
            try:
                self.on_packet(data)
            except Exception:  # the application's callback: counted, the stack goes on
                self.counters["tx_error_on_packet"] += 1
                return False
            return True
        if len(self._out) >= self.queue:
            self.counters["tx_dropped_queue_full"] += 1
            return False
        self._out.append(data)
        self._wake()
        return True

    def close(self) -> None:
        """No more packets either way; whoever waits in `get` gets LinkClosed."""
        self.closed = True
        self.inbox.clear()
        self._wake()

    # ------------------------------------------------------ the application's side

    def feed(self, packet: bytes | bytearray | memoryview) -> None:
        """A packet from the tunnel, for the stack (taken on the loop's next turn, with
        whatever else was fed before it)."""
        if self.closed:
            self.counters["rx_dropped_link_down"] += 1
            return
        self.inbox.put(bytes(packet))

    async def get(self) -> bytes:
        """The next packet the stack sent; LinkClosed once the link is closed."""
        while not self._out:
            if self.closed:
                raise LinkClosed("the packet link is closed")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._out.popleft()

    def get_nowait(self) -> bytes | None:
        """The next packet the stack sent, or None if there is none now."""
        return self._out.popleft() if self._out else None

    def __aiter__(self) -> PacketLink:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.get()
        except LinkClosed:
            raise StopAsyncIteration from None

    # ---------------------------------------------------------------- internals

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
