"""The interface every link stage has, pipelines of stages, and a tap (see the package's
docstring for the order `ustack.api.Stack` builds).

Sans-IO like the TCP core: no asyncio, no clock reads; `now` (the core's monotonic
clock) is passed in. Every stage has the same small interface (smoltcp's `phy::Device`
middleware: `fault_injector.rs`, `pcap_writer.rs`, `tracer.rs`):

    rx(packet, now)  -> packets to pass on toward the host (device -> host)
    tx(packet, now)  -> packets to pass on toward the device (host -> device)
    poll(now)        -> (rx, tx): packets it held back that are due now
    next_deadline()  -> when poll next has something to release, or None
    drain(now)       -> (rx, tx): everything still held, at once (reconfiguration, exit)
    close()          -> release files

A `Pipeline` is itself a stage, so pipelines nest. Stage 0 is the one closest to the
device: inbound packets go through the stages in order, outbound ones in reverse.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from ustack.packet import Packet, ip_of

Packets = list[Packet]  # IP packets, some with offload metadata (`ustack.packet`)
RX, TX = 0, 1  # indexes of the two directions

# ---------------------------------------------------------------------- the interface


class Stage:
    """A pass-through stage; subclasses override what they need."""

    counters: Counter[str] | None = None

    def rx(self, packet: Packet, now: float) -> Packets:
        return [packet]

    def tx(self, packet: Packet, now: float) -> Packets:
        return [packet]

    def poll(self, now: float) -> tuple[Packets, Packets]:
        return [], []

    def next_deadline(self) -> float | None:
        return None

    def drain(self, now: float) -> tuple[Packets, Packets]:
        return [], []

    def close(self) -> None:
        return None


class Pipeline(Stage):
    """Stages in a row; `stages[0]` is next to the device, `stages[-1]` next to the host."""

    def __init__(self, stages: Iterable[Stage]) -> None:
        self.stages: tuple[Stage, ...] = tuple(stages)

    def rx(self, packet: Packet, now: float) -> Packets:
        return self._rx_from(0, [packet], now)

    def tx(self, packet: Packet, now: float) -> Packets:
        return self._tx_from(len(self.stages) - 1, [packet], now)

    def _rx_from(self, first: int, packets: Packets, now: float) -> Packets:
        """`packets` through stages[first:] toward the host."""
        for stage in self.stages[first:]:
            if not packets:
                break
            if len(packets) == 1:
                packets = stage.rx(packets[0], now)
            else:
                out: Packets = []
                for packet in packets:
                    out.extend(stage.rx(packet, now))
                packets = out
        return packets

    def _tx_from(self, last: int, packets: Packets, now: float) -> Packets:
        """`packets` through stages[last], stages[last-1], ..., stages[0] toward the device."""
        for i in range(last, -1, -1):
            if not packets:
                break
            stage = self.stages[i]
            if len(packets) == 1:
                packets = stage.tx(packets[0], now)
            else:
                out: Packets = []
                for packet in packets:
                    out.extend(stage.tx(packet, now))
                packets = out
        return packets

    def poll(self, now: float) -> tuple[Packets, Packets]:
        # A stage hands out at once whatever is due when it is given a packet, so one
        # pass suffices: what stage i releases continues through its neighbours now.
        rx_out: Packets = []
        tx_out: Packets = []
        for i, stage in enumerate(self.stages):
            rx, tx = stage.poll(now)
            if rx:
                rx_out += self._rx_from(i + 1, rx, now)
            if tx:
                tx_out += self._tx_from(i - 1, tx, now)
        return rx_out, tx_out

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (s.next_deadline() for s in self.stages) if d is not None]
        return min(deadlines) if deadlines else None

    def drain(self, now: float) -> tuple[Packets, Packets]:
        """Everything held anywhere, passed through the rest of the pipeline. A stage
        further on may hold a drained packet again, so this repeats (a bounded number
        of times) until no stage holds anything."""
        rx_out: Packets = []
        tx_out: Packets = []
        for _ in range(len(self.stages) + 1):
            moved = False
            for i, stage in enumerate(self.stages):
                rx, tx = stage.drain(now)
                if rx or tx:
                    moved = True
                    rx_out += self._rx_from(i + 1, rx, now)
                    tx_out += self._tx_from(i - 1, tx, now)
            if not moved:
                break
        return rx_out, tx_out

    def close(self) -> None:
        for stage in self.stages:
            stage.close()

    def counters_dict(self) -> dict[str, int]:
        merged: Counter[str] = Counter()
        for stage in self.stages:
            if stage.counters is not None:
                merged.update(stage.counters)
        return dict(merged)


# -------------------------------------------------------------------------------- tap


class Tap(Stage):
    """Hands every packet to `fn(direction, packet, now)` ("rx" or "tx") and passes it on."""

    def __init__(self, fn: Callable[[str, Packet, float], None]) -> None:
        self._fn = fn

    def rx(self, packet: Packet, now: float) -> Packets:
        self._fn("rx", packet, now)
        return [packet]

    def tx(self, packet: Packet, now: float) -> Packets:
        self._fn("tx", packet, now)
        return [packet]


def pipeline_of(stages: Sequence[Stage | None]) -> Pipeline | None:
    """A pipeline of the stages that are not None, or None when there are none."""
    present = [s for s in stages if s is not None]
    return Pipeline(present) if present else None


# ------------------------------------------------------------------------------ spared


_TCP = struct.Struct("!HHII")
# (src, dst, sport, dport, seq, ack, flags, payload length) of a TCP packet
TcpFields = tuple[bytes, bytes, int, int, int, int, int, int]


def tcp_fields(ip: bytes | memoryview) -> TcpFields | None:
    """The TCP header fields a link stage picks packets by, of an IPv4 or IPv6 packet
    (the IPv6 header followed by TCP at once), or None for anything else or too short."""
    if not ip:
        return None
    if ip[0] >> 4 == 4 and len(ip) >= 20 and ip[9] == 6:
        start = (ip[0] & 0x0F) * 4
        src, dst = bytes(ip[12:16]), bytes(ip[16:20])
        total = int.from_bytes(ip[2:4], "big")
    elif ip[0] >> 4 == 6 and len(ip) >= 40 and ip[6] == 6:
        start = 40
        src, dst = bytes(ip[8:24]), bytes(ip[24:40])
        total = 40 + int.from_bytes(ip[4:6], "big")
    else:
        return None
    if len(ip) < start + 20:
        return None
    sport, dport, seq, ack = _TCP.unpack_from(ip, start)
    header = (ip[start + 12] >> 4) * 4
    return (src, dst, sport, dport, seq, ack, ip[start + 13],
            max(0, min(total, len(ip)) - start - header))


def peer_endpoint(packet: Packet, direction: int) -> tuple[bytes, int] | None:
    """The address and TCP port of the far side (the source of an inbound packet, the
    destination of an outbound one), or None for anything but TCP."""
    tcp = tcp_fields(ip_of(packet))
    if tcp is None:
        return None
    return (tcp[0], tcp[2]) if direction == RX else (tcp[1], tcp[3])


class Spared(Stage):
    """`inner` for every packet except those of connections whose far side is one of
    `spared` (address, port): they pass as if it were not there. A proxy's upstream leg
    crosses the same link as its clients; its faults are for the clients' side. The
    set is read live (proxies come and go). Not recognised: an IPv6 packet with
    extension headers before TCP, or an IPv4 fragment past the first: they meet `inner`."""

    def __init__(self, inner: Stage, spared: set[tuple[bytes, int]]) -> None:
        self.inner = inner
        self.spared = spared
        self.counters = inner.counters

    def rx(self, packet: Packet, now: float) -> Packets:
        if self.spared and peer_endpoint(packet, RX) in self.spared:
            return [packet]
        return self.inner.rx(packet, now)

    def tx(self, packet: Packet, now: float) -> Packets:
        if self.spared and peer_endpoint(packet, TX) in self.spared:
            return [packet]
        return self.inner.tx(packet, now)

    def poll(self, now: float) -> tuple[Packets, Packets]:
        return self.inner.poll(now)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def drain(self, now: float) -> tuple[Packets, Packets]:
        return self.inner.drain(now)

    def close(self) -> None:
        self.inner.close()
