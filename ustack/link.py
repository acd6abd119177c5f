"""Link middleware between the TUN device and the host: pcap capture, fault injection, taps.

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

The order that `ustack.api.Stack` builds is device - pcap - faults - host (as smoltcp's
`examples/utils.rs` stacks them: the pcap writer wraps the device, the fault injector
wraps both). The capture then shows what crossed the TUN, i.e. what the kernel's side
sent and received, exactly as `tcpdump -i ustack0` in the namespace would: an inbound
packet the injector drops is in the capture (the kernel did send it) but the host never
saw it; an outbound packet it drops is not (the kernel never got it); corrupted packets
appear as ustack sent them on receive, and corrupted as the kernel got them on transmit.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import math
import os
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO

Packets = list[bytes]
RX, TX = 0, 1  # indexes of the two directions

# ---------------------------------------------------------------------- the interface


class Stage:
    """A pass-through stage; subclasses override what they need."""

    counters: Counter[str] | None = None
    # Bytes of device framing before the IP packet (a virtio-net header with offloads).
    link_header = 0

    def rx(self, packet: bytes, now: float) -> Packets:
        return [packet]

    def tx(self, packet: bytes, now: float) -> Packets:
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

    def rx(self, packet: bytes, now: float) -> Packets:
        return self._rx_from(0, [packet], now)

    def tx(self, packet: bytes, now: float) -> Packets:
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

    def __init__(self, fn: Callable[[str, bytes, float], None]) -> None:
        self._fn = fn

    def rx(self, packet: bytes, now: float) -> Packets:
        self._fn("rx", packet, now)
        return [packet]

    def tx(self, packet: bytes, now: float) -> Packets:
        self._fn("tx", packet, now)
        return [packet]


# ------------------------------------------------------------------------------- pcap

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
PCAP_VERSION = (2, 4)
PCAP_SNAPLEN = 65535
# LINKTYPE_RAW (101): each record is a bare IP packet, IPv4 or IPv6 by its version
# nibble. Older than LINKTYPE_IPV4 (228), so every tcpdump/Wireshark/dpkt knows it, and
# a record whose version bits were corrupted is still shown (as a bad packet).
LINKTYPE_RAW = 101
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")


FLUSH_INTERVAL = 0.1  # seconds a captured packet may wait in the buffer for the file


class CaptureError(OSError):
    """The capture file cannot be written, or another ustack is writing it."""


def open_capture(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for a new capture: locked (flock) so that a second ustack refuses it,
    and emptied only once the lock is held, so the capture of a running ustack is never
    truncated. Raises CaptureError with one line for the user."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise CaptureError(e.errno, f"cannot write the capture {os.fspath(path)!r}: "
                                    f"{e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CaptureError(errno.EBUSY, f"the capture {os.fspath(path)!r} is being written "
                                        "by another process (it holds the file's lock)") from None
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


class PcapWriter(Stage):
    """Classic pcap of every packet in both directions, as it passes this stage.

    Time stamps are wall-clock: `now + wall_offset`, where the caller sets `wall_offset`
    once to `time.time() - aio.clock()` (the writer reads no clock; tests fix it), in
    microseconds. They never go backwards: the driver's timer may run a hair ahead of
    the loop's clock (it serves a deadline as "now"), so a stamp is at least the last.

    A file named by path is locked while written (`open_capture`). Records reach it
    within FLUSH_INTERVAL (`poll`): `tcpdump -r` can read the capture while ustack runs.
    """

    def __init__(self, dest: str | os.PathLike[str] | BinaryIO, *, wall_offset: float = 0.0,
                 snaplen: int = PCAP_SNAPLEN) -> None:
        if isinstance(dest, str | os.PathLike):
            self._file: BinaryIO = open_capture(dest)
            self._owned = True
        else:
            self._file = dest
            self._owned = False
        self.wall_offset = wall_offset
        self.snaplen = snaplen
        self.counters: Counter[str] = Counter(pcap_packets=0)
        self._closed = False
        self._last = 0
        self._flush_at: float | None = None  # when the oldest unflushed record is due
        self._file.write(_GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen,
                                             LINKTYPE_RAW))
        self._file.flush()  # a capture with no packet yet is still a valid file

    def _record(self, packet: bytes, now: float) -> None:
        if self._closed:
            return
        usec = round((now + self.wall_offset) * 1_000_000)
        if usec < self._last:
            usec = self._last
        self._last = usec
        sec, usec = divmod(usec, 1_000_000)
        ip: bytes | memoryview = packet
        if self.link_header:
            # The IP packet only. With offloads it may be a super-packet, and its TCP
            # checksum partial: tcpdump shows the same on a TSO interface.
            ip = memoryview(packet)[self.link_header:]
        size = len(ip)
        kept = min(size, self.snaplen)
        write = self._file.write
        write(_RECORD_HEADER.pack(sec, usec, kept, size))
        write(ip if kept == size else ip[:kept])
        self.counters["pcap_packets"] += 1
        if self._flush_at is None:
            self._flush_at = now + FLUSH_INTERVAL

    def poll(self, now: float) -> tuple[Packets, Packets]:
        if self._flush_at is not None and now >= self._flush_at:
            self.flush()
        return [], []

    def next_deadline(self) -> float | None:
        return self._flush_at

    def rx(self, packet: bytes, now: float) -> Packets:
        self._record(packet, now)
        return [packet]

    def tx(self, packet: bytes, now: float) -> Packets:
        self._record(packet, now)
        return [packet]

    def flush(self) -> None:
        self._flush_at = None
        if not self._closed:
            self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._file.flush()
        self._closed = True
        if self._owned:
            self._file.close()


# ----------------------------------------------------------------------------- faults

FAULT_COUNTERS = ("fault_dropped", "fault_duplicated", "fault_corrupted", "fault_reordered",
                  "fault_delayed")
DIRECTIONS = ("both", "rx", "tx")
REORDER_MS = 5.0  # the longest a reordered packet waits for a later one to overtake it


class FaultInjector(Stage):
    """A seeded lossy link, applied per packet and per direction ("rx" = toward the host).

    For each packet, in this order: drop it (p = `loss`); else send it twice (p = `dup`);
    each copy: flip one random bit of one random byte (p = `corrupt`), delay it by
    `delay_ms` plus uniform(-`jitter_ms`, +`jitter_ms`) (never below zero; like netem,
    jitter alone reorders), and with p = `reorder` hold it back until the next later
    packet of its direction has gone out ahead of it (or `reorder_ms` at most).

    Held packets come out of `poll(now)` once due; nothing blocks. Same seed, same
    packets, same `now`s: the same decisions, so a failure replays. With `seed=None` a
    seed is drawn from os.urandom and kept in `.seed` for the log.
    """

    def __init__(self, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 corrupt: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 seed: int | None = None, directions: str = "both",
                 reorder_ms: float = REORDER_MS) -> None:
        self.loss = check_probability("loss", loss)
        self.dup = check_probability("dup", dup)
        self.reorder = check_probability("reorder", reorder)
        self.corrupt = check_probability("corrupt", corrupt)
        self.delay_ms = check_millis("delay_ms", delay_ms)
        self.jitter_ms = check_millis("jitter_ms", jitter_ms)
        self.reorder_ms = check_millis("reorder_ms", reorder_ms)
        if directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {', '.join(DIRECTIONS)}, "
                             f"not {directions!r}")
        self.directions = directions
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "big")
        elif not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, not {seed!r}")
        self.seed = seed
        self._rng = random.Random(seed)
        self._on = (directions in ("both", "rx"), directions in ("both", "tx"))
        self._delay = self.delay_ms / 1000.0
        self._jitter = self.jitter_ms / 1000.0
        self._reorder_s = self.reorder_ms / 1000.0
        self.counters: Counter[str] = Counter(dict.fromkeys(FAULT_COUNTERS, 0))
        self._order = 0
        # Delayed packets: (release at, arrival order, direction, packet).
        self._queue: list[tuple[float, int, int, bytes]] = []
        # Told of every packet dropped, duplicated or corrupted: (kind, direction RX/TX,
        # the packet as it was, now). The stack shows them in its ladder and capture.
        self.probe: Callable[[str, int, bytes, float], None] | None = None
        # Per direction, packets held back to be overtaken: [due, give-up at, order, packet].
        self._held: tuple[list[tuple[float, float, int, bytes]], ...] = ([], [])

    @property
    def active(self) -> bool:
        """Whether this injector changes anything at all."""
        return bool(self.loss or self.dup or self.reorder or self.corrupt
                    or self.delay_ms or self.jitter_ms)

    def describe(self) -> str:
        """`loss=0.05 dup=0.01 ... seed=7`, for the log line that lets a run be replayed."""
        parts = [f"loss={self.loss:g}", f"dup={self.dup:g}", f"reorder={self.reorder:g}",
                 f"corrupt={self.corrupt:g}", f"delay={self.delay_ms:g}ms",
                 f"jitter={self.jitter_ms:g}ms"]
        if self.directions != "both":
            parts.append(f"directions={self.directions}")
        return " ".join([*parts, f"seed={self.seed}"])

    def held(self) -> int:
        """How many packets this injector holds now."""
        return len(self._queue) + len(self._held[RX]) + len(self._held[TX])

    # ------------------------------------------------------------------ the stage

    def rx(self, packet: bytes, now: float) -> Packets:
        if not self._on[RX]:
            return [packet]
        return self._inject(RX, packet, now)

    def tx(self, packet: bytes, now: float) -> Packets:
        if not self._on[TX]:
            return [packet]
        return self._inject(TX, packet, now)

    def _inject(self, d: int, packet: bytes, now: float) -> Packets:
        rng = self._rng
        counters = self.counters
        probe = self.probe
        if self.loss and rng.random() < self.loss:
            counters["fault_dropped"] += 1
            if probe is not None:
                probe("dropped", d, packet, now)
            return []
        copies = 1
        if self.dup and rng.random() < self.dup:
            counters["fault_duplicated"] += 1
            copies = 2
            if probe is not None:
                probe("duplicated", d, packet, now)
        out: Packets = []
        for _ in range(copies):
            copy = packet
            if self.corrupt and copy and rng.random() < self.corrupt:
                counters["fault_corrupted"] += 1
                if probe is not None:
                    probe("corrupted", d, copy, now)
                copy = flip_bit(copy, rng, self.link_header)
            at = now
            if self._delay or self._jitter:
                extra = self._delay
                if self._jitter:
                    extra += rng.uniform(-self._jitter, self._jitter)
                if extra > 0:
                    counters["fault_delayed"] += 1
                    at = now + extra
            order = self._order
            self._order += 1
            if self.reorder and rng.random() < self.reorder:
                counters["fault_reordered"] += 1
                self._held[d].append((at, at + self._reorder_s, order, copy))
            elif at > now:
                heapq.heappush(self._queue, (at, order, d, copy))
            else:
                self._emit(d, order, copy, now, out)
        return out

    def _emit(self, d: int, order: int, packet: bytes, now: float, out: Packets) -> None:
        """`packet` goes out; packets held back for reordering that it overtook follow it."""
        out.append(packet)
        held = self._held[d]
        if held:
            overtaken = [h for h in held if h[2] < order and h[0] <= now]
            if overtaken:
                self._held[d][:] = [h for h in held if not (h[2] < order and h[0] <= now)]
                out.extend(h[3] for h in overtaken)

    def poll(self, now: float) -> tuple[Packets, Packets]:
        outs: tuple[Packets, Packets] = ([], [])
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, order, d, packet = heapq.heappop(queue)
            self._emit(d, order, packet, now, outs[d])
        for d in (RX, TX):
            held = self._held[d]
            if held and any(h[1] <= now for h in held):
                late = sorted((h for h in held if h[1] <= now), key=lambda h: (h[1], h[2]))
                held[:] = [h for h in held if h[1] > now]
                outs[d].extend(h[3] for h in late)
        return outs

    def next_deadline(self) -> float | None:
        deadline = self._queue[0][0] if self._queue else None
        for held in self._held:
            for h in held:
                if deadline is None or h[1] < deadline:
                    deadline = h[1]
        return deadline

    def drain(self, now: float) -> tuple[Packets, Packets]:
        outs: tuple[Packets, Packets] = ([], [])
        for _, _, d, packet in sorted(self._queue):
            outs[d].append(packet)
        self._queue.clear()
        for d in (RX, TX):
            outs[d].extend(h[3] for h in sorted(self._held[d], key=lambda h: h[2]))
            self._held[d].clear()
        return outs


def flip_bit(packet: bytes, rng: random.Random, link_header: int = 0) -> bytes:
    """`packet` with one random bit of one random byte after `link_header` inverted.

    A virtio-net header in front is cleared: its word that the checksum is partial or
    already verified no longer holds, so the receiver verifies it and drops the packet,
    as a wire's corruption is caught (and a TSO request goes with it)."""
    if len(packet) <= link_header:
        return packet
    data = bytearray(packet)
    data[link_header + rng.randrange(len(data) - link_header)] ^= 1 << rng.randrange(8)
    if link_header:
        data[:link_header] = bytes(link_header)
    return bytes(data)


# ---------------------------------------------------------------------------- parsing


def check_probability(name: str, value: float) -> float:
    """`value` as a float in 0..1, else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number from 0 to 1, not {value!r}")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be from 0 to 1, not {value!r}")
    return float(value)


def check_millis(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of milliseconds, not {value!r}")
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of milliseconds >= 0, not {value!r}")
    return float(value)


def parse_probability(text: str) -> float:
    """A probability written as a fraction (`0.05`) or a percentage (`5%`)."""
    raw = text.strip()
    percent = raw.endswith("%")
    number = raw[:-1].strip() if percent else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a probability: write a fraction like 0.05 "
                         "or a percentage like 5%") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a probability: it must be finite")
    if percent:
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{text!r} is not a probability: a percentage must be "
                             "from 0% to 100%")
        return value / 100.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} is not a probability: a fraction must be from 0 to 1 "
                         "(or write a percentage like 5%)")
    return value


def parse_delay(text: str) -> tuple[float, float]:
    """`MS` or `MS:JITTER_MS` (milliseconds, >= 0) as (delay_ms, jitter_ms)."""
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"{text!r} is not a delay: write MS or MS:JITTER_MS")
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{text!r} is not a delay: write MS or MS:JITTER_MS, "
                             "in milliseconds") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{text!r} is not a delay: milliseconds must be finite "
                             "and >= 0")
        values.append(value)
    return values[0], values[1] if len(values) == 2 else 0.0


def pipeline_of(stages: Sequence[Stage | None]) -> Pipeline | None:
    """A pipeline of the stages that are not None, or None when there are none."""
    present = [s for s in stages if s is not None]
    return Pipeline(present) if present else None
