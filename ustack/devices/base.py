"""What the devices that hand the driver their packets themselves share (a memory link,
a packet link the application feeds, a framed stream), beside a TUN's file descriptor:
`Inbox`, the packets that arrived for the stack, handed over a batch at a time."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from ustack.packet import Packet

# The driver's entry for packets that arrived: a batch at a time, from the event loop.
Deliver = Callable[[list[Packet]], None]


class Inbox:
    """Packets for the stack: `put` from anywhere on the loop's thread, handed to the
    driver together on the loop's next turn (one step for the whole batch, as a TUN's
    batch read). Held until the driver attaches; at most `limit` (more are dropped and
    counted in `counters`, as a full TUN queue drops them)."""

    def __init__(self, counters: Counter[str], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"queue {limit} must be at least 1")
        self.counters = counters
        self.limit = limit
        self._packets: list[Packet] = []
        self._deliver: Deliver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """The stack's driver takes what arrives from here on (and what came before)."""
        self._loop, self._deliver = loop, deliver
        if self._packets:
            self._schedule()

    def detach(self) -> None:
        self._deliver = None

    def clear(self) -> None:
        self._deliver = None
        self._packets = []

    def put(self, packet: Packet) -> bool:
        if len(self._packets) >= self.limit:
            self.counters["rx_dropped_queue_full"] += 1
            return False
        self._packets.append(packet)
        if not self._scheduled and self._deliver is not None:
            self._schedule()
        return True

    def _schedule(self) -> None:
        assert self._loop is not None
        self._scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._packets = self._packets, []
        if self._deliver is not None and batch:
            self.counters["rx_packets"] += len(batch)
            self._deliver(batch)
