"""Shaping per direction: a link of a given rate with a bounded queue in front of it (what
netem's `rate` with `limit`, or a router's tbf with a queue, make of a real bottleneck),
and bursty loss by the Gilbert–Elliott model (netem's `loss gemodel`). Sans-IO: `now` is
passed in; packets wait in the stage and come out of `poll`.

The rate counts IP bytes. A packet leaves when the link has sent the ones before it:
departure = max(arrival, previous departure) + bytes * 8 / rate. It waits in a FIFO
queue of at most `queue` packets (or `queue_bytes` bytes); one that finds it full is
dropped at the tail and counted apart from random loss (`shaper_queue_dropped`). With
the offloads on, a super-packet is cut into the wire segments it stands for first, each
shaped on its own. Seeded: the same packets at the same `now`s meet the same losses.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter, deque

from ustack.link.segmentation import cut
from ustack.link.stage import RX, TX, Packets, Stage
from ustack.packet import Packet, ip_of

SHAPER_COUNTERS = ("shaper_queue_dropped", "shaper_ge_dropped", "shaper_delayed")
DEFAULT_QUEUE = 1000  # packets: netem's default limit


class GilbertElliott:
    """Bursty loss (E. N. Gilbert 1960, E. O. Elliott 1963), with netem's four
    parameters: `p` the chance to go from the good state to the bad one, `r` back again,
    `loss_bad` (netem's 1-h) the chance to lose a packet in the bad state, `loss_good`
    (netem's 1-k) in the good one. Over many packets the loss rate is
    (r * loss_good + p * loss_bad) / (p + r), and with loss_bad = 1 and loss_good = 0 a
    burst of losses lasts 1/r packets on average."""

    def __init__(self, p: float, r: float, loss_bad: float = 1.0, loss_good: float = 0.0,
                 rng: random.Random | None = None) -> None:
        for name, value in (("p", p), ("r", r), ("loss_bad", loss_bad),
                            ("loss_good", loss_good)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"gemodel {name}={value} is not a probability in 0..1")
        if p + r == 0:
            raise ValueError("gemodel p and r cannot both be 0 (the state never changes "
                             "and no loss rate follows)")
        self.p, self.r, self.loss_bad, self.loss_good = p, r, loss_bad, loss_good
        self._rng = rng or random.Random()
        self.bad = False

    @property
    def loss_rate(self) -> float:
        """The long-run fraction of packets lost."""
        return (self.r * self.loss_good + self.p * self.loss_bad) / (self.p + self.r)

    def lose(self) -> bool:
        """One packet: whether it is lost, by the state it finds; then the state moves
        (netem's loss_gilb_ell)."""
        rng = self._rng
        bad = self.bad
        if rng.random() < (self.r if bad else self.p):
            self.bad = not bad
        return rng.random() < (self.loss_bad if bad else self.loss_good)


class Shaper(Stage):
    """A rate and a queue per direction ("rx" toward the host, "tx" toward the device),
    and Gilbert–Elliott loss before the queue if `gemodel` (p, r, 1-h, 1-k) is given,
    one model per direction (as one netem per interface); `rate_bps=None`: loss only,
    no queue."""

    def __init__(self, rate_bps: float | None, queue: int = DEFAULT_QUEUE,
                 queue_bytes: int | None = None,
                 gemodel: tuple[float, float, float, float] | None = None,
                 seed: int | None = None, directions: str = "both") -> None:
        if rate_bps is not None and not 0 < rate_bps < math.inf:
            raise ValueError(f"rate must be positive, not {rate_bps}")
        if queue < 1 or (queue_bytes is not None and queue_bytes < 1):
            raise ValueError("the queue must hold at least one packet")
        if directions not in ("both", "rx", "tx"):
            raise ValueError(f"directions must be both, rx or tx, not {directions!r}")
        self.rate_bps = rate_bps
        self.queue = queue
        self.queue_bytes = queue_bytes
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        # Seeded apart from a fault injector given the same seed.
        rng = random.Random(f"shaper:{self.seed}")
        self.gemodel = gemodel
        self._loss = tuple(GilbertElliott(*gemodel, rng=random.Random(rng.random()))
                           for _ in (RX, TX)) if gemodel else None
        self._on = (directions in ("both", "rx"), directions in ("both", "tx"))
        self.counters: Counter[str] = Counter(dict.fromkeys(SHAPER_COUNTERS, 0))
        # Per direction: (departure, packet) in order, the bytes they hold, and when the
        # link is free of the last of them.
        self._fifo: tuple[deque[tuple[float, Packet]], ...] = (deque(), deque())
        self._bytes = [0, 0]
        self._free_at = [0.0, 0.0]

    def describe(self) -> str:
        parts = []
        if self.rate_bps is not None:
            parts += [f"rate={self.rate_bps / 1e6:g}mbit", f"queue={self.queue}"]
            if self.queue_bytes is not None:
                parts.append(f"queue_bytes={self.queue_bytes}")
        if self.gemodel is not None:
            parts.append("gemodel=" + ",".join(f"{x:g}" for x in self.gemodel))
        return " ".join([*parts, f"seed={self.seed}"])

    def departures(self, d: int) -> list[float]:
        """When each packet now queued in direction `d` leaves (for tests and tools)."""
        return [at for at, _ in self._fifo[d]]

    # ------------------------------------------------------------------ the stage

    def rx(self, packet: Packet, now: float) -> Packets:
        return self._shape(RX, packet, now) if self._on[RX] else [packet]

    def tx(self, packet: Packet, now: float) -> Packets:
        return self._shape(TX, packet, now) if self._on[TX] else [packet]

    def _shape(self, d: int, packet: Packet, now: float) -> Packets:
        out: Packets = []
        self._release(d, now, out)  # what has left by now goes on, and takes no room
        for piece in cut(packet):
            if self._loss is not None and self._loss[d].lose():
                self.counters["shaper_ge_dropped"] += 1
            elif self.rate_bps is None:
                out.append(piece)
            else:
                self._enqueue(d, piece, now)
        return out

    def _enqueue(self, d: int, packet: Packet, now: float) -> None:
        assert self.rate_bps is not None
        fifo = self._fifo[d]
        size = len(ip_of(packet))
        if len(fifo) >= self.queue or (self.queue_bytes is not None
                                       and self._bytes[d] + size > self.queue_bytes):
            self.counters["shaper_queue_dropped"] += 1  # tail drop
            return
        departure = max(now, self._free_at[d]) + size * 8 / self.rate_bps
        self._free_at[d] = departure
        fifo.append((departure, packet))
        self._bytes[d] += size
        self.counters["shaper_delayed"] += 1

    def _release(self, d: int, now: float, out: Packets) -> None:
        """Packets whose departure has come, in order, to `out`."""
        fifo = self._fifo[d]
        while fifo and fifo[0][0] <= now:
            _, packet = fifo.popleft()
            self._bytes[d] -= len(ip_of(packet))
            out.append(packet)

    def poll(self, now: float) -> tuple[Packets, Packets]:
        rx: Packets = []
        tx: Packets = []
        self._release(RX, now, rx)
        self._release(TX, now, tx)
        return rx, tx

    def next_deadline(self) -> float | None:
        heads = [fifo[0][0] for fifo in self._fifo if fifo]
        return min(heads) if heads else None

    def drain(self, now: float) -> tuple[Packets, Packets]:
        rx = [packet for _, packet in self._fifo[RX]]
        tx = [packet for _, packet in self._fifo[TX]]
        for fifo in self._fifo:
            fifo.clear()
        self._bytes = [0, 0]
        self._free_at = [now, now]  # the link is free: what was queued went at once
        return rx, tx


_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3,
               "mbps": 8e6, "gbps": 8e9}


def parse_rate(text: str) -> float:
    """`50mbit`, `1.5gbit`, `100kbit`, `10mbps` (bytes), or a plain number of bits per
    second, as tc writes rates; ValueError otherwise."""
    raw = text.strip().lower()
    for unit in sorted(_RATE_UNITS, key=len, reverse=True):
        if raw.endswith(unit):
            number, scale = raw[:-len(unit)], _RATE_UNITS[unit]
            break
    else:
        number, scale = raw, 1
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a rate (e.g. 50mbit, 1gbit, 800kbit)") from None
    if not 0 < value < math.inf:
        raise ValueError(f"rate {text!r} must be positive and finite")
    return value


def parse_queue(text: str) -> tuple[int, int | None]:
    """`100` (packets) or `64kb` / `150000b` (bytes): (packets, bytes or None)."""
    raw = text.strip().lower()
    scale = 1000 if raw.endswith("kb") else 1 if raw.endswith("b") else 0
    digits = raw[:-2] if raw.endswith("kb") else raw[:-1] if raw.endswith("b") else raw
    if not digits.isdecimal() or int(digits) < 1:
        raise ValueError(f"{text!r} is not a queue: N packets, or Nb / Nkb bytes")
    if scale:
        return 1 << 30, int(digits) * scale
    return int(digits), None


def parse_gemodel(text: str) -> tuple[float, float, float, float]:
    """netem's `loss gemodel P [R [1-H [1-K]]]` as `P,R,1-H,1-K` in fractions or
    percentages; R defaults to 1-P, 1-H to 1 (the bad state loses everything), 1-K to 0."""
    from ustack.link.faults import parse_probability

    parts = [parse_probability(p) for p in text.split(",")]
    if not 1 <= len(parts) <= 4:
        raise ValueError(f"{text!r}: give P[,R[,1-H[,1-K]]]")
    p = parts[0]
    r = parts[1] if len(parts) > 1 else 1.0 - p
    loss_bad = parts[2] if len(parts) > 2 else 1.0
    loss_good = parts[3] if len(parts) > 3 else 0.0
    GilbertElliott(p, r, loss_bad, loss_good)  # refuses what the model cannot be
    return p, r, loss_bad, loss_good
