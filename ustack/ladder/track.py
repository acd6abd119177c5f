"""Following connections through a stream of events: which connection each segment
belongs to, sequence numbers relative to each side's ISN, and the names the ladder
prints for flags, options, timers and recovery steps."""

from dataclasses import dataclass

from ustack.probe import (
    Endpoint,
    Event,
    FaultEvent,
    RecoveryEvent,
    SegmentEvent,
    StateEvent,
    TimerEvent,
    ToxicEvent,
)
from ustack.tcp.options import Options
from ustack.tcp.sack import is_dsack
from ustack.tcp.segment import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG

# ------------------------------------------------------------------------------ tracking

_FLAG_ORDER = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (URG, "URG"),
               (ACK, "ACK"), (ECE, "ECE"), (CWR, "CWR"))

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


def event_label(ev: "TimerEvent | RecoveryEvent | ToxicEvent") -> tuple[str, str]:
    """(`timer`, `retransmission timeout`), (`recovery`, `fast recovery (RACK: 3 lost)`),
    (`toxic`, `latency (latency=50 downstream)`)."""
    if isinstance(ev, TimerEvent):
        return "timer", TIMER_NAMES.get(ev.kind, ev.kind)
    if isinstance(ev, ToxicEvent):
        return "toxic", f"{ev.kind} ({ev.detail})" if ev.detail else ev.kind
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


def conn_key(a: Endpoint, b: Endpoint) -> tuple:
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
        key = conn_key(us, peer)
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
        syn_only = ev.flags & (SYN | ACK) == SYN
        key = conn_key(us, peer)
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
        if ev.flags & SYN and not mine.syn:
            mine.syn = True
            mine.base = ev.seq
            mine.wscale = ev.opts.wscale
        # Sent before (Wireshark's "TCP Retransmission"): text, SYN or FIN below the
        # highest sequence this side has sent. In a capture a reordered segment looks
        # the same; the ladder cannot tell them apart either.
        end = (ev.seq + ev.length + (1 if ev.flags & SYN else 0)
               + (1 if ev.flags & FIN else 0)) % 2**32
        again = (end != ev.seq and mine.high is not None
                 and 0 < (mine.high - ev.seq) % 2**32 < 2**31)
        if mine.high is None or 0 < (end - mine.high) % 2**32 < 2**31:
            mine.high = end
        rseq = mine.rel(ev.seq)
        rack = theirs.rel(ev.ack) if ev.flags & ACK else None
        if ev.flags & FIN:
            mine.fin = True
        if ev.flags & RST:
            conn.ended = True
        details = [f"seq {ev.seq} ({rseq})"]  # items a line never splits
        if rack is not None:
            details[0] += f" ack {ev.ack} ({rack})"
        # RFC 7323 §2.2: the window field of a segment other than a SYN is scaled when
        # both SYNs offered the option.
        shift = mine.wscale if theirs.wscale is not None and not ev.flags & SYN else None
        window = (f"win {ev.wnd << shift} ({ev.wnd}<<{shift})" if shift
                  else f"win {ev.wnd}")
        details.append(f"{window} len {ev.length}")
        if again:
            details.append("retransmission")
        if ev.flags & SYN:
            details += option_text(ev.opts)
        if ev.opts.sack:
            base = theirs.base or 0
            blocks = " ".join(f"{(a - base) % 2**32}-{(b - base) % 2**32}"
                              for a, b in ev.opts.sack)
            # RFC 2883: the first block reports data received twice.
            dsack = ev.flags & ACK and is_dsack(ev.opts.sack, ev.ack)
            details.append(f"{'dsack' if dsack else 'sack'} {blocks}")
        return Row(conn, ev.time - conn.t0, ev, rseq, rack, tuple(details)), new


