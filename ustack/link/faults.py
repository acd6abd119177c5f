"""The fault injector stage (loss, duplication, reordering, corruption, delay; seeded
and replayable), and the parsing of its settings from the command line."""

from __future__ import annotations

import heapq
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from statistics import NormalDist

from ustack.link.segmentation import cut
from ustack.link.stage import RX, TX, Packets, Stage
from ustack.packet import Packet, ip_of

# ----------------------------------------------------------------------------- faults

FAULT_COUNTERS = ("fault_dropped", "fault_duplicated", "fault_corrupted", "fault_reordered",
                  "fault_delayed")
DIRECTIONS = ("both", "rx", "tx")
REORDER_MS = 5.0  # the longest a reordered packet waits for a later one to overtake it
DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")
_PARETO_SHAPE = 3.0  # netem's pareto table (iproute2 netem/pareto.c) uses a = 3
_PARETO_MEAN = _PARETO_SHAPE / (_PARETO_SHAPE - 1)  # of x_m (u)^(-1/a) with x_m = 1
_PARETO_SD = math.sqrt(_PARETO_SHAPE / ((_PARETO_SHAPE - 1) ** 2 * (_PARETO_SHAPE - 2)))
_UNIT_NORMAL = NormalDist()
_EDGE = 1e-12  # keeps a quantile's argument inside (0, 1)


def jitter_quantile(distribution: str, u: float) -> float:
    """The jitter, in units of the jitter's size, at quantile `u` of `distribution`:
    uniform over [-1, 1] (netem's default), a unit normal, a Pareto of shape 3 (a long
    tail of late packets) scaled to mean 0 and deviation 1, or netem's paretonormal mix
    (iproute2 netem/paretonormal.c: a quarter Pareto, three quarters normal, of one draw:
    its deviation is about 0.94)."""
    u = min(max(u, _EDGE), 1.0 - _EDGE)
    if distribution == "uniform":
        return 2.0 * u - 1.0
    normal = _UNIT_NORMAL.inv_cdf(u)
    if distribution == "normal":
        return normal
    pareto = ((1.0 - u) ** (-1.0 / _PARETO_SHAPE) - _PARETO_MEAN) / _PARETO_SD
    if distribution == "pareto":
        return pareto
    return 0.25 * pareto + 0.75 * normal


class FaultInjector(Stage):
    """A seeded lossy link, applied per packet and per direction ("rx" = toward the host).
    A super-packet of the offloads is first cut into the wire packets it stands for
    (`ustack.link.segmentation`): each is lost, duplicated or delayed on its own.

    For each packet, in this order: drop it (p = `loss`); else send it twice (p = `dup`);
    each copy: flip one random bit of one random byte (p = `corrupt`), delay it by
    `delay_ms` plus a jitter (never below zero; like netem, jitter alone reorders), and
    with p = `reorder` hold it back until the next later packet of its direction has
    gone out ahead of it (or `reorder_ms` at most). With `reorder_gap` G > 1 at most one
    packet in G is held back (netem's `reorder P gap G`: G-1 in order between two).

    The jitter is `jitter_ms` times a draw from `distribution` (`jitter_quantile`:
    uniform over ±`jitter_ms` by default, or normal, pareto, paretonormal with that
    deviation), correlated with the draw before it by `correlation` (netem's `delay D J
    C%`). netem mixes the last uniform draw into the next, which narrows the
    distribution as the correlation grows; here the draws are an AR(1) series of normal
    variables (each the last times `correlation` plus fresh noise) mapped to their
    quantile (a Gaussian copula), so the distribution stays the one asked for;
    consecutive normal jitters correlate by `correlation`, and the ranks of any
    distribution's by (6/pi) asin(`correlation`/2), within 0.02 of it.

    Held packets come out of `poll(now)` once due; nothing blocks. Same seed, same
    packets, same `now`s: the same decisions, so a failure replays. With `seed=None` a
    seed is drawn from os.urandom and kept in `.seed` for the log.
    """

    def __init__(self, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 corrupt: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 seed: int | None = None, directions: str = "both",
                 reorder_ms: float = REORDER_MS, distribution: str = "uniform",
                 correlation: float = 0.0, reorder_gap: int = 0) -> None:
        self.loss = check_probability("loss", loss)
        self.dup = check_probability("dup", dup)
        self.reorder = check_probability("reorder", reorder)
        self.corrupt = check_probability("corrupt", corrupt)
        self.delay_ms = check_millis("delay_ms", delay_ms)
        self.jitter_ms = check_millis("jitter_ms", jitter_ms)
        self.reorder_ms = check_millis("reorder_ms", reorder_ms)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, "
                             f"not {distribution!r}")
        self.distribution = distribution
        self.correlation = check_probability("correlation", correlation)
        if (isinstance(reorder_gap, bool) or not isinstance(reorder_gap, int)
                or reorder_gap < 0):
            raise ValueError(f"reorder_gap must be a whole number >= 0, not {reorder_gap!r}")
        self.reorder_gap = reorder_gap
        unused = ignored_settings(self.reorder, self.jitter_ms, distribution,
                                  self.correlation, reorder_gap)
        if unused:
            raise ValueError(unused)
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
        # The jitter's AR(1) state per direction, in normal units (None: no draw yet).
        self._last_normal: list[float | None] = [None, None]
        self._fresh_sd = math.sqrt(1.0 - self.correlation ** 2)
        self._since_held = [reorder_gap, reorder_gap]  # per direction, since one was held
        self.counters: Counter[str] = Counter(dict.fromkeys(FAULT_COUNTERS, 0))
        self._order = 0
        # Delayed packets: (release at, arrival order, direction, packet).
        self._queue: list[tuple[float, int, int, Packet]] = []
        # Told of every packet dropped, duplicated or corrupted: (kind, direction RX/TX,
        # the packet as it was, now). The stack shows them in its ladder and capture.
        self.probe: Callable[[str, int, Packet, float], None] | None = None
        # Per direction, packets held back to be overtaken: [due, give-up at, order, packet].
        self._held: tuple[list[tuple[float, float, int, Packet]], ...] = ([], [])

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
        if self.jitter_ms and self.distribution != "uniform":
            parts.append(f"distribution={self.distribution}")
        if self.jitter_ms and self.correlation:
            parts.append(f"correlation={self.correlation:g}")
        if self.reorder_gap > 1:
            parts.append(f"gap={self.reorder_gap}")
        if self.directions != "both":
            parts.append(f"directions={self.directions}")
        return " ".join([*parts, f"seed={self.seed}"])

    def held(self) -> int:
        """How many packets this injector holds now."""
        return len(self._queue) + len(self._held[RX]) + len(self._held[TX])

    # ------------------------------------------------------------------ the stage

    def rx(self, packet: Packet, now: float) -> Packets:
        if not self._on[RX]:
            return [packet]
        return self._inject_each(RX, packet, now)

    def tx(self, packet: Packet, now: float) -> Packets:
        if not self._on[TX]:
            return [packet]
        return self._inject_each(TX, packet, now)

    def _inject_each(self, d: int, packet: Packet, now: float) -> Packets:
        """Faults per wire packet: a super-packet is cut into its segments first."""
        out: Packets = []
        for piece in cut(packet):
            out += self._inject(d, piece, now)
        return out

    def _inject(self, d: int, packet: Packet, now: float) -> Packets:
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
                copy = flip_bit(copy, rng)
            at = now
            if self._delay or self._jitter:
                extra = self._delay
                if self._jitter and self.distribution == "uniform" and not self.correlation:
                    extra += rng.uniform(-self._jitter, self._jitter)  # as before: replays
                elif self._jitter:
                    extra += self._jitter * self._jitter_draw(d)
                if extra > 0:
                    counters["fault_delayed"] += 1
                    at = now + extra
            order = self._order
            self._order += 1
            if self.reorder and self._may_hold(d) and rng.random() < self.reorder:
                counters["fault_reordered"] += 1
                self._since_held[d] = 0
                self._held[d].append((at, at + self._reorder_s, order, copy))
            elif at > now:
                heapq.heappush(self._queue, (at, order, d, copy))
            else:
                self._emit(d, order, copy, now, out)
        return out

    def _jitter_draw(self, d: int) -> float:
        """The next jitter of direction `d` in units of `jitter_ms` (see the class: a
        Gaussian copula; one series per direction, as netem keeps one per qdisc). The
        first draw is plain: with a correlation of 1 every packet gets that one."""
        last = self._last_normal[d]
        fresh = self._rng.gauss()
        z = fresh if last is None else self.correlation * last + self._fresh_sd * fresh
        self._last_normal[d] = z
        if self.distribution == "normal":
            return z
        return jitter_quantile(self.distribution, _UNIT_NORMAL.cdf(z))

    def _may_hold(self, d: int) -> bool:
        """With a gap G, G-1 packets of a direction go in order after one held back."""
        if self.reorder_gap <= 1:
            return True
        self._since_held[d] += 1
        return self._since_held[d] >= self.reorder_gap

    def _emit(self, d: int, order: int, packet: Packet, now: float, out: Packets) -> None:
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


def ignored_settings(reorder: float, jitter_ms: float, distribution: str,
                     correlation: float, reorder_gap: int) -> str | None:
    """A sentence naming a setting that would do nothing without another, or None (the
    user meant something: silence would leave them thinking it acts)."""
    if reorder_gap and not reorder:
        return "a reorder gap needs a reordering probability (reorder, --reorder)"
    if (distribution != "uniform" or correlation) and not jitter_ms:
        return ("a jitter distribution or correlation needs a jitter (jitter_ms, "
                "--delay MS:JITTER_MS)")
    return None


def flip_bit(packet: Packet, rng: random.Random) -> Packet:
    """The IP packet with one random bit of one random byte inverted.

    Offload metadata goes (`ustack.packet.Offloaded`): its word that the checksum is
    partial or already verified no longer holds, so the receiver verifies it and drops
    the packet, as a wire's corruption is caught (and a TSO request goes with it)."""
    ip = ip_of(packet)
    if not ip:
        return packet
    data = bytearray(ip)
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
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


def parse_delay(text: str) -> tuple[float, float, float]:
    """`MS`, `MS:JITTER_MS` or `MS:JITTER_MS:CORRELATION` (milliseconds >= 0; the
    correlation a fraction or a percentage, as netem's `delay 100ms 10ms 25%`) as
    (delay_ms, jitter_ms, correlation)."""
    parts = text.split(":")
    if len(parts) > 3:
        raise ValueError(f"{text!r} is not a delay: write MS, MS:JITTER_MS or "
                         "MS:JITTER_MS:CORRELATION")
    correlation = 0.0
    if len(parts) == 3:
        try:
            correlation = parse_probability(parts.pop())
        except ValueError as e:
            raise ValueError(f"{text!r} is not a delay: its correlation: {e}") from None
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
    return values[0], values[1] if len(values) == 2 else 0.0, correlation
