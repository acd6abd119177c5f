"""The ladder: a textbook sequence diagram of each TCP connection, from live events or a
capture. Shared by `--trace`, `tools/ladder.py` and the test kit.

Events (what the stack's probe and the pcap reader produce):
"""

import socket
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, TextIO
from xml.sax.saxutils import escape

from ustack.tcp.options import OptionError, Options, parse
from ustack.tcp.sack import is_dsack


@dataclass(frozen=True, slots=True)
class Endpoint:
    addr: str
    port: int


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """One TCP segment seen by ustack (`outbound` True when ustack sent it)."""

    time: float  # seconds, any origin (live: the loop clock; capture: pcap time stamps)
    src: Endpoint
    dst: Endpoint
    outbound: bool
    flags: int
    seq: int
    ack: int
    wnd: int
    length: int
    opts: Options


@dataclass(frozen=True, slots=True)
class StateEvent:
    """ustack's TCB for (local, remote) moved from `old` to `new` (State names)."""

    time: float
    local: Endpoint
    remote: Endpoint
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class TimerEvent:
    """A timer of ustack's TCB fired: retransmit, persist, delayed_ack, keepalive,
    time_wait, fin_wait_2."""

    time: float
    local: Endpoint
    remote: Endpoint
    kind: str


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """A step of ustack's loss recovery (RECOVERY_NAMES), with what it concerns: a fast
    recovery begun, segments RACK found lost, a tail loss probe and its verdict, a
    reduction undone, the reordering window changed."""

    time: float
    local: Endpoint
    remote: Endpoint
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """The fault injector (`ustack.link.FaultInjector`) dropped, duplicated or corrupted
    a segment between the TUN and the stack (`outbound` True: one ustack sent)."""

    time: float
    src: Endpoint
    dst: Endpoint
    outbound: bool
    kind: str  # "dropped", "duplicated", "corrupted"
    flags: int
    seq: int
    length: int


Event = SegmentEvent | StateEvent | TimerEvent | RecoveryEvent | FaultEvent


# ------------------------------------------------------------------------------ tracking

_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_ORDER = ((_SYN, "SYN"), (_FIN, "FIN"), (_RST, "RST"), (_PSH, "PSH"), (_URG, "URG"),
               (_ACK, "ACK"), (_ECE, "ECE"), (_CWR, "CWR"))

TIMER_NAMES = {
    "retransmit": "retransmission timeout",
    "persist": "persist probe",
    "delayed_ack": "delayed ACK",
    "keepalive": "keepalive probe",
    "time_wait": "TIME_WAIT expired",
    "fin_wait_2": "FIN_WAIT_2 timeout",
    "loss_probe": "tail loss probe",
    "reorder": "RACK reordering timer",
}

RECOVERY_NAMES = {
    "fast_recovery": "fast recovery",
    "rack_lost": "RACK: lost",
    "loss_probe": "probe sent",
    "probe_repaired": "the probe repaired a loss",
    "undo": "spurious: undone",
    "reo_wnd": "reordering window",
}


def event_label(ev: "TimerEvent | RecoveryEvent") -> tuple[str, str]:
    """(`timer`, `retransmission timeout`), (`recovery`, `fast recovery (RACK: 3 lost)`)."""
    if isinstance(ev, TimerEvent):
        return "timer", TIMER_NAMES.get(ev.kind, ev.kind)
    name = RECOVERY_NAMES.get(ev.kind, ev.kind)
    return "recovery", f"{name} ({ev.detail})" if ev.detail else name


def flag_names(flags: int) -> str:
    """`SYN`, `SYN,ACK`, `PSH,ACK`, `FIN,ACK`, `RST`, ... (`-` for none)."""
    return ",".join(name for bit, name in _FLAG_ORDER if flags & bit) or "-"


def option_text(opts: Options) -> list[str]:
    """The options worth showing, abbreviated: mss, ws, sackOK, TS val/ecr."""
    out = []
    if opts.mss is not None:
        out.append(f"mss {opts.mss}")
    if opts.wscale is not None:
        out.append(f"ws {opts.wscale}")
    if opts.sack_permitted:
        out.append("sackOK")
    if opts.ts_val is not None:
        out.append(f"TS {opts.ts_val}/{opts.ts_ecr}")
    return out


def _key(a: Endpoint, b: Endpoint) -> tuple:
    return tuple(sorted(((a.addr, a.port), (b.addr, b.port))))


class _Side:
    __slots__ = ("base", "fin", "high", "syn", "wscale")

    def __init__(self) -> None:
        self.base: int | None = None  # ISN (seq of its SYN), else the first seq seen
        self.syn = False
        self.fin = False
        self.wscale: int | None = None  # the window scale its SYN offered
        self.high: int | None = None  # the end of the highest sequence it has sent

    def rel(self, n: int) -> int:
        if self.base is None:
            self.base = n
        return (n - self.base) % 2**32


class Conn:
    """One connection's ladder: who is who, when it began, each side's ISN."""

    def __init__(self, number: int, us: Endpoint, peer: Endpoint, t0: float) -> None:
        self.number = number
        self.us = us
        self.peer = peer
        self.t0 = t0
        self.sides = {True: _Side(), False: _Side()}  # keyed by "sent by ustack"
        self.ended = False


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a ladder, numbers already made relative."""

    conn: Conn
    dt: float
    event: Event
    rseq: int = 0
    rack: int | None = None
    details: tuple[str, ...] = ()


class Tracker:
    """Sorts events into connections (by the unordered 4-tuple; a fresh SYN after the
    connection ended starts a new one) and makes sequence numbers relative."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self._by_key: dict[tuple, Conn] = {}

    def _conn(self, us: Endpoint, peer: Endpoint, t: float, fresh: bool) -> tuple[Conn, bool]:
        key = _key(us, peer)
        conn = self._by_key.get(key)
        if conn is not None and not (fresh and conn.ended):
            return conn, False
        conn = Conn(len(self.conns) + 1, us, peer, t)
        self.conns.append(conn)
        self._by_key[key] = conn
        return conn, True

    def feed(self, event: Event) -> tuple[Row, bool]:
        """The row for `event`, and whether it began a new connection."""
        if isinstance(event, SegmentEvent):
            return self._segment(event)
        if isinstance(event, FaultEvent):
            us, peer = (event.src, event.dst) if event.outbound else (event.dst, event.src)
            conn, new = self._conn(us, peer, event.time, False)
            rseq = conn.sides[event.outbound].rel(event.seq)
            details = (f"seq {event.seq} ({rseq})", f"len {event.length}")
            return Row(conn, event.time - conn.t0, event, rseq, None, details), new
        fresh = isinstance(event, StateEvent) and event.new in ("SYN_SENT", "SYN_RCVD") \
            and event.old in ("CLOSED", "LISTEN")
        conn, new = self._conn(event.local, event.remote, event.time, fresh)
        if (isinstance(event, StateEvent) and event.new in ("CLOSED", "TIME_WAIT")) or \
                (isinstance(event, TimerEvent) and event.kind == "time_wait"):
            conn.ended = True
        return Row(conn, event.time - conn.t0, event), new

    def _segment(self, ev: SegmentEvent) -> tuple[Row, bool]:
        us, peer = (ev.src, ev.dst) if ev.outbound else (ev.dst, ev.src)
        syn_only = ev.flags & (_SYN | _ACK) == _SYN
        key = _key(us, peer)
        old = self._by_key.get(key)
        fresh = False
        if syn_only and old is not None:
            side = old.sides[ev.outbound]
            both_fin = old.sides[True].fin and old.sides[False].fin
            fresh = (old.ended or both_fin) and side.base != ev.seq
            if fresh:
                old.ended = True
        conn, new = self._conn(us, peer, ev.time, fresh)
        mine, theirs = conn.sides[ev.outbound], conn.sides[not ev.outbound]
        if ev.flags & _SYN and not mine.syn:
            mine.syn = True
            mine.base = ev.seq
            mine.wscale = ev.opts.wscale
        # Sent before (Wireshark's "TCP Retransmission"): text, SYN or FIN below the
        # highest sequence this side has sent. In a capture a reordered segment looks
        # the same; the ladder cannot tell them apart either.
        end = (ev.seq + ev.length + (1 if ev.flags & _SYN else 0)
               + (1 if ev.flags & _FIN else 0)) % 2**32
        again = (end != ev.seq and mine.high is not None
                 and 0 < (mine.high - ev.seq) % 2**32 < 2**31)
        if mine.high is None or 0 < (end - mine.high) % 2**32 < 2**31:
            mine.high = end
        rseq = mine.rel(ev.seq)
        rack = theirs.rel(ev.ack) if ev.flags & _ACK else None
        if ev.flags & _FIN:
            mine.fin = True
        if ev.flags & _RST:
            conn.ended = True
        details = [f"seq {ev.seq} ({rseq})"]  # items a line never splits
        if rack is not None:
            details[0] += f" ack {ev.ack} ({rack})"
        # RFC 7323 §2.2: the window field of a segment other than a SYN is scaled when
        # both SYNs offered the option.
        shift = mine.wscale if theirs.wscale is not None and not ev.flags & _SYN else None
        window = (f"win {ev.wnd << shift} ({ev.wnd}<<{shift})" if shift
                  else f"win {ev.wnd}")
        details.append(f"{window} len {ev.length}")
        if again:
            details.append("retransmission")
        if ev.flags & _SYN:
            details += option_text(ev.opts)
        if ev.opts.sack:
            base = theirs.base or 0
            blocks = " ".join(f"{(a - base) % 2**32}-{(b - base) % 2**32}"
                              for a, b in ev.opts.sack)
            # RFC 2883: the first block reports data received twice.
            dsack = ev.flags & _ACK and is_dsack(ev.opts.sack, ev.ack)
            details.append(f"{'dsack' if dsack else 'sack'} {blocks}")
        return Row(conn, ev.time - conn.t0, ev, rseq, rack, tuple(details)), new


# ------------------------------------------------------------------------------ text

_ARROW = 18  # columns of the arrow between "peer" and "ustack"
_RESET = "\x1b[0m"
_COLORS = {"in": "\x1b[36m", "out": "\x1b[32m", "rst": "\x1b[1;31m", "state": "\x1b[1;33m",
           "timer": "\x1b[35m", "head": "\x1b[1m", "dim": "\x1b[2m"}


def arrow(flags: str, outbound: bool, width: int = _ARROW) -> str:
    """`──SYN────────────▶` (peer to ustack) or `◀──SYN,ACK──────` (ustack to peer)."""
    body = "──" + flags
    body += "─" * max(2, width - 1 - len(body))
    return "◀" + body if outbound else body + "▶"


class Ladder:
    """Renders events as text ladders, one per connection, as they come.

    Every line starts with the connection's tag (`#1`) and the seconds since that
    connection's first event; peer on the left, ustack on the right.
    """

    def __init__(self, out: TextIO, *, color: bool = False, width: int = 80) -> None:
        self.out = out
        self.color = color
        self.width = width
        self.tracker = Tracker()

    def _paint(self, text: str, kind: str) -> str:
        return f"{_COLORS[kind]}{text}{_RESET}" if self.color else text

    def feed(self, event: Event) -> None:
        row, new = self.tracker.feed(event)
        for line in self.lines(row, new):
            self.out.write(line + "\n")

    def close(self) -> None:
        self.out.flush()

    def lines(self, row: Row, new: bool) -> list[str]:
        conn, ev = row.conn, row.event
        tag = f"#{conn.number}"
        out = []
        if new:
            head = (f"{tag} ── peer {conn.peer.addr}:{conn.peer.port} ⇄ "
                    f"ustack {conn.us.addr}:{conn.us.port} ──")
            out.append(self._paint(head, "head"))
        lead = f"{tag} {row.dt:9.6f}  "
        if isinstance(ev, SegmentEvent):
            mid = f"peer {arrow(flag_names(ev.flags), ev.outbound)} ustack  "
            kind = "rst" if ev.flags & _RST else "out" if ev.outbound else "in"
            indent = " " * (len(lead) + len(mid))
            if len(indent) > self.width // 2:
                indent = " " * (len(lead) + 5)
            first, rest = self._wrap(row.details, self.width - len(lead) - len(mid),
                                     self.width - len(indent))
            out.append(lead + self._paint(mid.rstrip(), kind) + "  " + first)
            out += [indent + line for line in rest]
        elif isinstance(ev, FaultEvent):
            # The arrow stops short: the packet never reached the other side as sent.
            flags = flag_names(ev.flags)
            mid = (f"peer {arrow(flags, True)[:-4]}✕    ustack" if ev.outbound
                   else f"peer ──{flags}{'─' * max(2, _ARROW - 5 - len(flags))}✕    ustack")
            if ev.kind != "dropped":
                mid = f"peer {arrow(flags, ev.outbound)} ustack"
            out.append(lead + self._paint(f"{mid}  fault: {ev.kind}", "rst") + "  "
                       + " ".join(row.details))
        else:
            if isinstance(ev, StateEvent):
                text, kind = f"{ev.old} → {ev.new} ▶ ustack", "state"
            else:
                text, kind = "{}: {} ▶ ustack".format(*event_label(ev)), "timer"
            pad = len("peer ") + _ARROW + len(" ustack") - len(text)
            out.append(lead + " " * max(0, pad) + self._paint(text, kind))
        return out

    @staticmethod
    def _wrap(items: tuple[str, ...], first: int, later: int) -> tuple[str, list[str]]:
        lines: list[str] = []
        cur = ""
        room = first
        for item in items:
            cand = f"{cur} {item}" if cur else item
            if cur and len(cand) > room:
                lines.append(cur)
                cur, room = item, later
            else:
                cur = cand
        lines.append(cur)
        return lines[0], lines[1:]


# ------------------------------------------------------------------------------ captures

PCAPNG_SHB = 0x0A0D0D0A
_PCAP_MAGICS = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}
RAW_LINKTYPES = (101, 228, 12)  # LINKTYPE_RAW, LINKTYPE_IPV4, DLT_RAW of OpenBSD


class CaptureError(ValueError):
    """Not a pcap/pcapng file, or a truncated one."""


def read_capture(f: BinaryIO) -> Iterator[tuple[float, int, bytes]]:
    """(time, link type, frame) for every packet of a classic pcap (either byte order,
    µs or ns) or pcapng (SHB/IDB/EPB/SPB/PB, link type per interface) file."""
    head = f.read(4)
    if len(head) < 4:
        raise CaptureError("empty file")
    if int.from_bytes(head, "little") == PCAPNG_SHB:
        yield from _read_pcapng(f, head)
        return
    for order in "<>":
        (magic,) = struct.unpack(order + "I", head)
        if magic in _PCAP_MAGICS:
            break
    else:
        raise CaptureError(f"not a capture file (magic {head.hex()})")
    unit = _PCAP_MAGICS[magic]
    rest = f.read(20)
    if len(rest) < 20:
        raise CaptureError("truncated pcap header")
    linktype = struct.unpack(order + "I", rest[16:20])[0] & 0xFFFF
    rec = struct.Struct(order + "IIII")
    while True:
        hdr = f.read(16)
        if len(hdr) < 16:
            return
        sec, frac, caplen, _ = rec.unpack(hdr)
        data = f.read(caplen)
        if len(data) < caplen:
            return
        yield sec + frac * unit, linktype, data


def _read_pcapng(f: BinaryIO, first: bytes) -> Iterator[tuple[float, int, bytes]]:
    order = "<"
    ifaces: list[tuple[int, float, int, float]] = []  # link type, ts unit, snaplen, offset
    last_time = 0.0
    pending = first
    while True:
        hdr = pending + f.read(8 - len(pending))
        pending = b""
        if len(hdr) < 8:
            return
        if int.from_bytes(hdr[:4], "little") == PCAPNG_SHB:
            bom = f.read(4)
            order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            (length,) = struct.unpack(order + "I", hdr[4:8])
            body = bom + f.read(length - 12)
            ifaces = []
        else:
            btype, length = struct.unpack(order + "II", hdr)
            body = f.read(length - 8)
        if length < 12 or len(body) < length - 8:
            return
        body = body[:-4]  # the trailing copy of the length
        btype = struct.unpack(order + "I", hdr[:4])[0]
        if btype == 1:  # IDB
            linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
            unit, offset = 1e-6, 0.0
            for code, value in _pcapng_options(body[8:], order):
                if code == 9 and value:
                    v = value[0]
                    unit = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                elif code == 14 and len(value) == 8:
                    offset = float(struct.unpack(order + "q", value)[0])
            ifaces.append((linktype, unit, snaplen, offset))
        elif btype in (6, 2):  # EPB, obsolete PB
            if btype == 6:
                iface, hi, lo, caplen, _ = struct.unpack_from(order + "IIIII", body)
            else:
                iface, _, hi, lo, caplen, _ = struct.unpack_from(order + "HHIIII", body)
            if iface >= len(ifaces):
                continue
            linktype, unit, _, offset = ifaces[iface]
            last_time = ((hi << 32) | lo) * unit + offset
            yield last_time, linktype, body[20:20 + caplen]
        elif btype == 3 and ifaces:  # SPB: interface 0, no time stamp
            linktype, _, snaplen, _ = ifaces[0]
            (origlen,) = struct.unpack_from(order + "I", body)
            size = min(origlen, snaplen) if snaplen else origlen
            yield last_time, linktype, body[4:4 + size]


def _pcapng_options(buf: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    i = 0
    while i + 4 <= len(buf):
        code, length = struct.unpack_from(order + "HH", buf, i)
        if code == 0:
            return
        yield code, buf[i + 4:i + 4 + length]
        i += 4 + (length + 3) // 4 * 4


def ip_of_frame(linktype: int, frame: bytes) -> bytes | None:
    """The IPv4 packet inside a link-layer frame, or None (other protocols, link types)."""
    if linktype in RAW_LINKTYPES:
        ip = frame
    elif linktype == 1:  # Ethernet, optional 802.1Q / 802.1ad tags
        i = 12
        while len(frame) >= i + 2 and frame[i:i + 2] in (b"\x81\x00", b"\x88\xa8"):
            i += 4
        if frame[i:i + 2] != b"\x08\x00":
            return None
        ip = frame[i + 2:]
    elif linktype == 113:  # Linux cooked v1: protocol at 14
        if frame[14:16] != b"\x08\x00":
            return None
        ip = frame[16:]
    elif linktype == 276:  # Linux cooked v2: protocol at 0, 20-byte header
        if frame[0:2] != b"\x08\x00":
            return None
        ip = frame[20:]
    elif linktype == 0:  # BSD loopback: AF_INET (2) in host order
        if frame[:4] not in (b"\x02\x00\x00\x00", b"\x00\x00\x00\x02"):
            return None
        ip = frame[4:]
    else:
        return None
    return ip if len(ip) >= 20 and ip[0] >> 4 == 4 else None


@dataclass(frozen=True, slots=True)
class _Packet:
    time: float
    src: Endpoint
    dst: Endpoint
    flags: int
    seq: int
    ack: int
    wnd: int
    length: int
    opts: Options


def _tcp_of_ip(time: float, ip: bytes) -> _Packet | str:
    """The TCP header of an IPv4 packet, or why it was skipped."""
    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4], "big")
    if ip[9] != 6:
        return "not TCP"
    if int.from_bytes(ip[6:8], "big") & 0x1FFF:
        return "IP fragment"
    tcp = ip[ihl:]
    if ihl < 20 or len(tcp) < 20:
        return "truncated"
    sport, dport, seq, ack, off, flags, wnd = struct.unpack_from("!HHIIBBH", tcp)
    doff = (off >> 4) * 4
    try:
        opts = parse(tcp[20:doff]) if doff > 20 else Options()
    except OptionError:
        opts = Options()
    length = max(0, (total if total >= ihl + doff else len(ip)) - ihl - doff)  # 0: TSO
    src = Endpoint(socket.inet_ntoa(ip[12:16]), sport)
    dst = Endpoint(socket.inet_ntoa(ip[16:20]), dport)
    return _Packet(time, src, dst, flags, seq, ack, wnd, length, opts)


DEFAULT_US = "10.77.0.2"


def fault_event(kind: str, ip: bytes, outbound: bool, time: float) -> FaultEvent | None:
    """The ladder's event for a packet the fault injector acted on (None: not TCP)."""
    pkt = _tcp_of_ip(time, ip) if len(ip) >= 20 else "truncated"
    if isinstance(pkt, str):
        return None
    return FaultEvent(time, pkt.src, pkt.dst, outbound, kind, pkt.flags, pkt.seq, pkt.length)


def capture_events(f: BinaryIO, us: str | None = None) -> tuple[list[SegmentEvent], Counter]:
    """The segments of a capture as events, and the count of packets skipped, by reason.

    ustack's side of each connection is the endpoint at address `us` (default: 10.77.0.2
    if present, else the passive side: the one that answered the first SYN); in a
    connection without that address, the passive side (or the destination of its first
    packet when its SYN was not captured).
    """
    skipped: Counter = Counter()
    packets: list[_Packet] = []
    for time, linktype, frame in read_capture(f):
        ip = ip_of_frame(linktype, frame)
        if ip is None:
            skipped["not IPv4" if linktype in (0, 1, 12, 101, 113, 228, 276)
                    else f"link type {linktype}"] += 1
            continue
        pkt = _tcp_of_ip(time, ip)
        if isinstance(pkt, str):
            skipped[pkt] += 1
        else:
            packets.append(pkt)
    addrs = {p.src.addr for p in packets} | {p.dst.addr for p in packets}
    if us is None:
        if DEFAULT_US in addrs:
            us = DEFAULT_US
        else:
            first = next((p for p in packets if p.flags & (_SYN | _ACK) == _SYN), None)
            us = first.dst.addr if first else None
    ours: dict[tuple, Endpoint] = {}  # connection -> ustack's endpoint
    for p in packets:
        key = _key(p.src, p.dst)
        if key in ours:
            continue
        if us is not None and us in (p.src.addr, p.dst.addr):
            ours[key] = p.src if p.src.addr == us else p.dst
        elif p.flags & (_SYN | _ACK) == _SYN | _ACK:
            ours[key] = p.src
        else:
            ours[key] = p.dst
    events = [SegmentEvent(p.time, p.src, p.dst, p.src == ours[_key(p.src, p.dst)], p.flags,
                           p.seq, p.ack, p.wnd, p.length, p.opts) for p in packets]
    return events, skipped


# ------------------------------------------------------------------------------ SVG

_SVG_W, _PEER_X, _US_X, _STEP, _SLOPE = 760, 200, 520, 30, 22


def svg(events: Sequence[Event], conn: int | None = None) -> str:
    """A sequence diagram (plain SVG text): per connection, two lifelines (peer left,
    ustack right), a sloped arrow per segment labelled with flags, relative seq/ack,
    length, the (scaled) window, SACK blocks and a retransmission mark,
    state changes and timers beside ustack's lifeline. All connections stacked, or only
    the `conn`-th (1-based)."""
    tracker = Tracker()
    rows: dict[int, list[Row]] = {}
    for ev in events:
        row, _ = tracker.feed(ev)
        rows.setdefault(row.conn.number, []).append(row)
    numbers = [conn] if conn is not None else sorted(rows)
    body: list[str] = []
    y = 10
    for n in numbers:
        c = tracker.conns[n - 1]
        section = rows.get(n, [])
        top = y
        y += 20
        body.append(f'<text x="{_SVG_W // 2}" y="{y}" text-anchor="middle" '
                    f'font-weight="bold">#{n}</text>')
        y += 20
        for x, name in ((_PEER_X, f"peer {c.peer.addr}:{c.peer.port}"),
                        (_US_X, f"ustack {c.us.addr}:{c.us.port}")):
            body.append(f'<text x="{x}" y="{y}" text-anchor="middle">{escape(name)}</text>')
        y += 10
        life_top = y
        y += 20
        for row in section:
            ev = row.event
            body.append(f'<text x="10" y="{y + 4}" class="t">{row.dt:.6f}</text>')
            if isinstance(ev, SegmentEvent):
                x1, x2 = (_US_X, _PEER_X) if ev.outbound else (_PEER_X, _US_X)
                label = f"{flag_names(ev.flags)} seq={row.rseq}"
                if row.rack is not None:
                    label += f" ack={row.rack}"
                if ev.length:
                    label += f" len={ev.length}"
                # The window (scaled) and SACK blocks, as the text ladder has them.
                extra = [d for d in row.details
                         if d.startswith(("win ", "sack ", "dsack ", "retransmission"))]
                label += "".join(f" {d.split(' len ')[0]}" for d in extra)
                cls = "rst" if ev.flags & _RST else "out" if ev.outbound else "in"
                body.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y + _SLOPE}" '
                            f'class="{cls}" marker-end="url(#head)"/>')
                tx = (_PEER_X + _US_X) // 2
                body.append(f'<text x="{tx}" y="{y + _SLOPE // 2 - 4}" text-anchor="middle" '
                            f'class="seg">{escape(label)}</text>')
                y += _STEP + _SLOPE // 2
            else:
                if isinstance(ev, StateEvent):
                    text, cls = f"{ev.old} → {ev.new}", "state"
                elif isinstance(ev, FaultEvent):
                    side = "ustack" if ev.outbound else "peer"
                    text = (f"fault: {ev.kind} {flag_names(ev.flags)} from {side} "
                            f"seq={row.rseq} len={ev.length}")
                    cls = "rst"
                else:
                    text, cls = event_label(ev)[1], "timer"
                body.append(f'<text x="{_US_X + 8}" y="{y + 4}" class="{cls}">'
                            f'{escape(text)}</text>')
                y += _STEP
        for x in (_PEER_X, _US_X):
            body.append(f'<line x1="{x}" y1="{life_top}" x2="{x}" y2="{y}" class="life"/>')
        y += 20
        body.append(f'<rect x="2" y="{top}" width="{_SVG_W - 4}" height="{y - top}" '
                    f'class="box"/>')
        y += 10
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_W}" height="{y}" '
        f'viewBox="0 0 {_SVG_W} {y}" font-family="monospace" font-size="12">\n'
        '<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
        'orient="auto"><path d="M0,0 L10,4 L0,8 z"/></marker></defs>\n'
        "<style>.life{stroke:#888;stroke-width:2}.in{stroke:#06c}.out{stroke:#080}"
        ".rst{stroke:#c00}.state{fill:#a60;font-weight:bold}.timer{fill:#808;"
        "font-style:italic}.t{fill:#666}.box{fill:none;stroke:#ddd}</style>\n"
        f'<rect width="{_SVG_W}" height="{y}" fill="white"/>\n'
    )
    return head + "\n".join(line for line in body if line) + "\n</svg>\n"
