"""Faults that know TCP (packetdrill's kind of precision on a live link): rules that pick
segments by their flags, port, direction, place among the matching ones, or the stream
byte they carry, and drop or corrupt them a given number of times; or black-hole a
connection once a number of its payload bytes have crossed (the client sees a timeout,
not a close). Sans-IO; every firing is told to `probe` (the stack's ladder and capture
log) and counted.

A rule is one line, as the command line takes it:

    drop flags=SA count=2 port=80     the first two SYN-ACKs of port 80
    drop flags=S nth=3                the third SYN (and only it)
    drop final=handshake dir=rx       the peer's ACK that completes the handshake
    drop final=close                  the last ACK of a close (its FIN is sent again)
    corrupt offset=100000 dir=rx      the segment carrying stream byte 100000, inbound
    blackhole after=1000000 port=80   every packet of a connection past its first MB
    reset after=100000 dir=tx         a RST from ustack once 100 kB have crossed
    reset state=CLOSE-WAIT dir=rx     a RST to ustack once its side is in CLOSE-WAIT
    zerowindow ms=500 after=100000    ustack advertises a zero window for 0.5 s

`flags` are TCP's S, A, F, R matched exactly (PSH and the ECN bits aside): "S" is a SYN
without ACK, "SA" a SYN-ACK, "FA" a FIN with its ACK, "A" a bare ACK (with or without
data). `final` picks a final ACK: the one that completes the three-way handshake, or the
one that acknowledges the second FIN of a close (`ustack.link.track`). `state` matches
while ustack's side of the connection is in that RFC 9293 state, as the wire shows it
once the segment has arrived (SYN-SENT, SYN-RECEIVED, ESTABLISHED, FIN-WAIT-1,
FIN-WAIT-2, CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT, CLOSED; `ustack.link.track`). A
dropped segment changes no connection's state: a resent one can be dropped again. `dir`
is rx (toward ustack), tx (from it) or both (default). `nth` is the first matching
segment that fires (default 1); `count` how many fire from there (default 1; 0: every
one). `offset` counts from the first byte after the SYN of that direction. A RST is
injected right behind the segment that fires, from that segment's sender, at the
sequence number its receiver expects.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ustack import ip as ip4
from ustack import ip6
from ustack.link.faults import flip_bit
from ustack.link.segmentation import cut
from ustack.link.stage import RX, TX, Packets, Stage, TcpFields, tcp_fields
from ustack.link.track import FINAL_ACKS, STATES, Conn
from ustack.packet import Offloaded, Packet, ip_of
from ustack.tcp.segment import ACK, RST, Segment, encode

ACTIONS = ("drop", "corrupt", "blackhole", "reset", "zerowindow")
_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "A": 0x10}
_MATCHED_BITS = 0x17  # S, A, F, R
RULE_COUNTERS = ("rule_fired",)
MAX_TRACKED = 65536  # connections whose first sequence number and byte count are kept


@dataclass
class Rule:
    """One rule (see the module's docstring for the fields' meaning)."""

    action: str
    flags: str | None = None
    port: int | None = None
    direction: str = "both"
    nth: int = 1
    count: int = 1
    offset: int | None = None
    after: int | None = None
    ms: int | None = None  # zerowindow: for how long
    state: str | None = None  # ustack's side's state (RFC 9293 §3.3.2)
    final: str | None = None  # "handshake" or "close": that final ACK
    matched: int = field(default=0, compare=False)  # matching segments seen so far
    fired: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"rule action {self.action!r}: one of {', '.join(ACTIONS)}")
        if self.flags is not None and (not self.flags
                                       or set(self.flags.upper()) - set(_FLAG_BITS)):
            raise ValueError(f"rule flags {self.flags!r}: letters of S, A, F, R")
        if self.direction not in ("both", "rx", "tx"):
            raise ValueError(f"rule dir {self.direction!r}: rx, tx or both")
        if self.nth < 1 or self.count < 0:
            raise ValueError("rule nth must be >= 1 and count >= 0")
        if self.state is not None:
            self.state = self.state.upper()
            if self.state not in STATES:
                raise ValueError(f"rule state {self.state!r}: one of {', '.join(STATES)}")
        if self.final is not None and self.final not in FINAL_ACKS:
            raise ValueError(f"rule final {self.final!r}: handshake or close")
        if self.action == "blackhole" and self.after is None:
            raise ValueError("blackhole takes after=BYTES")
        if self.action == "reset" and self.after is None and self.state is None:
            raise ValueError("reset takes after=BYTES, state=STATE or both")
        if self.after is not None and self.action not in ("blackhole", "reset",
                                                          "zerowindow"):
            raise ValueError("after=BYTES is for blackhole, reset and zerowindow only")
        if (self.action == "zerowindow") != (self.ms is not None):
            raise ValueError("zerowindow takes ms=MILLISECONDS, and only it does")

    @property
    def want(self) -> int | None:
        """The flag bits to match exactly, or None."""
        if self.flags is None:
            return None
        return sum(_FLAG_BITS[c] for c in set(self.flags.upper()))

    def describe(self) -> str:
        parts = [self.action]
        for name in ("flags", "final", "state", "port", "nth", "count", "offset", "after",
                     "ms"):
            value = getattr(self, name)
            if value is not None and not (name == "nth" and value == 1) and not (
                    name == "count" and value == 1):
                parts.append(f"{name}={value}")
        if self.direction != "both":
            parts.append(f"dir={self.direction}")
        return " ".join(parts)


_WORDS = ("flags", "final", "state", "port", "dir", "nth", "count", "offset", "after", "ms")


def parse_rule(text: str) -> Rule:
    """`drop flags=SA count=2 port=80` as a Rule; ValueError saying what is wrong."""
    words = text.split()
    if not words:
        raise ValueError("an empty rule: give e.g. 'drop flags=SA count=2 port=80'")
    kwargs: dict[str, object] = {}
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if not sep or name not in _WORDS:
            raise ValueError(f"rule {text!r}: {word!r} is not one of "
                             + ", ".join(f"{w}=" for w in _WORDS))
        if name in ("flags", "dir", "state", "final"):
            kwargs["direction" if name == "dir" else name] = value
        elif value.isdecimal():
            kwargs[name] = int(value)
        else:
            raise ValueError(f"rule {text!r}: {name}={value!r} is not a number")
    return Rule(words[0], **kwargs)  # type: ignore[arg-type]


class TcpRules(Stage):
    """The rules as a link stage, per wire segment (a super-packet is cut first)."""

    def __init__(self, rules: list[Rule], seed: int = 0) -> None:
        self.rules = rules
        self._rng = random.Random(seed)  # which bit a corruption flips
        self.counters: Counter[str] = Counter(dict.fromkeys(RULE_COUNTERS, 0))
        self.probe: Callable[[str, int, Packet, float], None] | None = None
        # Followed connections, least recently seen first (bounded by MAX_TRACKED).
        self._conns: dict[tuple[bytes, int, bytes, int], Conn] = {}
        self._holes: set[tuple[bytes, int, bytes, int]] = set()  # black-holed connections
        self._reset: bytes | None = None  # a RST to send right after the current packet
        self._zero_until: dict[tuple[bytes, int, bytes, int], float] = {}  # per connection

    def rx(self, packet: Packet, now: float) -> Packets:
        return self._each(RX, packet, now)

    def tx(self, packet: Packet, now: float) -> Packets:
        return self._each(TX, packet, now)

    def _each(self, d: int, packet: Packet, now: float) -> Packets:
        out: Packets = []
        for piece in cut(packet):
            kept = self._apply(d, piece, now)
            if kept is not None:
                out.append(kept)
                if self._reset is not None:  # a RST right behind it, the same way
                    out.append(self._reset)
                    self._reset = None
        return out

    def _apply(self, d: int, packet: Packet, now: float) -> Packet | None:
        tcp = tcp_fields(ip_of(packet))
        if tcp is None:
            return packet
        src, dst, sport, dport, seq, ack, flags, payload = tcp
        key = min((src, sport, dst, dport), (dst, dport, src, sport))  # both directions
        conn = self._conns.pop(key, None)  # and put back last: the oldest go first
        if conn is None or conn.new_incarnation(d, seq, flags):
            if len(self._conns) >= MAX_TRACKED:
                del self._conns[next(iter(self._conns))]
            conn = Conn()
        self._conns[key] = conn
        before = conn.copy()
        final = conn.see(d, seq, ack, flags, payload)
        kept = self._decide(d, packet, tcp, key, conn, final, now)
        if kept is None:  # a segment dropped changed nothing (a resent one is final again)
            self._conns[key] = before
        return kept

    def _decide(self, d: int, packet: Packet, tcp: TcpFields,
                key: tuple[bytes, int, bytes, int], conn: Conn, final: str | None,
                now: float) -> Packet | None:
        """What the rules do with one segment, the connection having seen it."""
        _, _, sport, dport, seq, _, flags, payload = tcp
        if d == TX and key in self._zero_until:
            if now < self._zero_until[key]:
                return _zero_window(packet)
            del self._zero_until[key]
        if key in self._holes:
            self._fire("dropped (black hole)", d, packet, now)
            return None
        state = None
        for rule in self.rules:
            if rule.count and rule.fired >= rule.count:
                continue
            if rule.direction != "both" and (rule.direction == "rx") != (d == RX):
                continue
            if rule.port is not None and rule.port not in (sport, dport):
                continue
            if rule.state is not None:
                state = state or conn.state()
                if state != rule.state:
                    continue
            if rule.final is not None and rule.final != final:
                continue
            if rule.action == "zerowindow":
                if d != TX or conn.bytes < (rule.after or 0):
                    continue  # ustack's side: its own segments' window
                rule.fired += 1
                self._zero_until[key] = now + (rule.ms or 0) / 1000
                self._fire(f"window zeroed for {rule.ms} ms ({rule.describe()})", d, packet,
                           now)
                return _zero_window(packet)
            if rule.action in ("blackhole", "reset"):
                if conn.bytes < (rule.after or 0):
                    continue
                rule.fired += 1
                if rule.action == "reset":
                    self._reset = _reset_after(bytes(ip_of(packet)), tcp)
                    conn.reset = True  # what it does to both ends
                    self._fire(f"reset injected ({rule.describe()})", d, self._reset, now)
                    return packet
                self._holes.add(key)
                self._fire(f"dropped ({rule.describe()})", d, packet, now)
                return None
            want = rule.want
            if want is not None and flags & _MATCHED_BITS != want:
                continue
            if rule.offset is not None:
                start = conn.offset(d, seq)
                if start is None or not start <= rule.offset < start + payload:
                    continue
            rule.matched += 1
            if rule.matched < rule.nth:
                continue
            rule.fired += 1
            if rule.action == "drop":
                self._fire(f"dropped ({rule.describe()})", d, packet, now)
                return None
            corrupted = flip_bit(packet, self._rng)
            self._fire(f"corrupted ({rule.describe()})", d, packet, now)
            return corrupted
        return packet

    def _fire(self, kind: str, d: int, packet: Packet, now: float) -> None:
        self.counters["rule_fired"] += 1
        if self.probe is not None:
            self.probe(kind, d, packet, now)


def _reset_after(ip: bytes, tcp: TcpFields) -> bytes:
    """A RST from the sender of `ip` to its receiver with the sequence number the
    receiver expects next (this packet's end), so that it is taken at once (RFC 9293
    §3.10.7.4, RFC 5961 §3.2: a RST exactly at RCV.NXT resets)."""
    src, dst, sport, dport, seq, ack, flags, payload = tcp
    end = (seq + payload + (1 if flags & 0x03 else 0)) % (1 << 32)
    seg = Segment(sport, dport, end, ack, RST | ACK, 0)
    header, data = encode(seg, src, dst)
    length = len(header) + len(data)
    if len(src) == 4:
        return ip4.header(src, dst, ip4.PROTO_TCP, length, 0) + header + data
    return ip6.header(src, dst, ip6.NH_TCP, length) + header + data


def _zero_window(packet: Packet) -> Packet:
    """`packet` (an outgoing TCP segment) advertising a window of 0. A full checksum is
    updated for the change (RFC 1624's incremental update); an offloaded one holds only
    the pseudo-header's sum, which the window is no part of."""
    ip = bytearray(ip_of(packet))
    start = (ip[0] & 0x0F) * 4 if ip[0] >> 4 == 4 else 40
    window = int.from_bytes(ip[start + 14:start + 16], "big")
    if not window:
        return packet
    ip[start + 14:start + 16] = b"\0\0"
    if type(packet) is Offloaded:
        return Offloaded(bytes(ip), csum_ok=packet.csum_ok, gso=packet.gso)
    # HC' = ~(~HC + ~m + m'), m' = 0: in ones' complement, adding ~m removes m.
    old = int.from_bytes(ip[start + 16:start + 18], "big")
    total = (~old & 0xFFFF) + (~window & 0xFFFF)
    total = (total & 0xFFFF) + (total >> 16)
    ip[start + 16:start + 18] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(ip)
