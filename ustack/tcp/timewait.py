"""TIME-WAIT as a compact record, not a whole TCB (Linux inet_timewait_sock, lwIP tcp_tw_pcbs).

A server that closes first keeps every connection for 2 x MSL after it ends: at a few
thousand connections a second that is hundreds of thousands of them. What TIME-WAIT needs
to do its job fits in a few numbers, kept here; the TCB (its buffers, timers, congestion
state) is released when the connection enters TIME-WAIT.

The rules (one place, used by a TCB in TIME-WAIT and by the host's table alike):

- RFC 9293 §3.10.7.4 in TIME-WAIT: an unacceptable segment gets an ACK; the peer's FIN
  (retransmitted because our ACK was lost) is acknowledged again and restarts the 2 MSL
  timeout; a RST at RCV.NXT ends it (RFC 5961 §3.2: elsewhere in the window, a challenge
  ACK); a SYN in the window gets a challenge ACK (RFC 5961 §4.2); text is ignored.
- RFC 7323 §5.3 (PAWS) with TS.Recent, and §4.3 (R3) keeping TS.Recent current.
- RFC 6191: a SYN proves a new incarnation, which may reuse the 4-tuple at once, by a
  timestamp above TS.Recent, or, where timestamps are not in use on both connections, by
  a sequence number above RCV.NXT.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from ustack.stats import Counters, DropReason
from ustack.tcp import acceptance, buffers, challenge, rcvwnd, seq
from ustack.tcp.options import Options, ts_clock
from ustack.tcp.segment import ACK, FIN, RST, SYN, Segment

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

# Linux tcp_max_tw_buckets as this machine's kernel sizes it: past this many records a
# closing connection skips TIME-WAIT (counted as tcp_time_wait_overflow).
MAX_RECORDS = 131072


class Outcome(Enum):
    KEEP = "keep"  # the record stays (its deadline or TS.Recent may have moved)
    CLOSE = "close"  # a RST ended TIME-WAIT: forget the record
    REOPEN = "reopen"  # a new incarnation's SYN: forget the record, hand the SYN on


@dataclass(slots=True)
class TimeWait:
    """What is left of a connection in TIME-WAIT."""

    local_port: int
    remote_port: int
    snd_nxt: int
    rcv_nxt: int
    window: int  # the window field we advertise (already scaled down)
    wscale: int  # our window scale: RCV.WND = window << wscale
    ts_ok: bool
    ts_recent: int  # TS.Recent (RFC 7323 §4.3)
    ts_offset: int  # this connection's timestamp offset (RFC 7323 §5.4)
    deadline: float  # the end of the 2 x MSL wait
    lifetime: float  # 2 x MSL, to restart the wait
    challenge_second: float = -1.0  # RFC 5961 §7 throttle: the second being counted ...
    challenge_count: int = 0  # ... and the challenge ACKs sent in it

    def restart(self, now: float) -> None:
        """Restart the 2 MSL wait (RFC 9293 §3.10.7.4, eighth)."""
        self.deadline = now + self.lifetime


def ack(tw: TimeWait, now: float) -> Segment:
    """<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> with our window and timestamps."""
    opts = Options()
    if tw.ts_ok:
        opts.ts_val, opts.ts_ecr = ts_clock(now, tw.ts_offset), tw.ts_recent
    return Segment(tw.local_port, tw.remote_port, tw.snd_nxt, tw.rcv_nxt, ACK, tw.window,
                   b"", opts)


def reopens(tw: TimeWait, seg: Segment, ts_wanted: bool) -> bool:
    """RFC 6191 §2: does this SYN belong to a new incarnation of the connection?

    `ts_wanted`: whether the new connection would use timestamps (our configuration
    allows them). With timestamps on both incarnations, a TSval above TS.Recent decides,
    whatever the sequence number (an equal TSval needs a higher sequence number too);
    with the old one using them and the new one not, or neither, only a sequence number
    above RCV.NXT does; with only the new one using them, the SYN is honoured."""
    if (seg.flags & (SYN | ACK | RST)) != SYN:
        return False
    ts_val = seg.opts.ts_val
    new_ts = ts_wanted and ts_val is not None
    if tw.ts_ok and new_ts:
        assert ts_val is not None
        if ts_val == tw.ts_recent:
            return seq.gt(seg.seq, tw.rcv_nxt)
        return seq.gt(ts_val, tw.ts_recent)
    if not tw.ts_ok and new_ts:
        return True
    return seq.gt(seg.seq, tw.rcv_nxt)


def reopen_iss(tw: TimeWait) -> int:
    """The ISN of a connection that ends this TIME-WAIT: above everything the old one
    sent, so that none of its old segments falls into the new window (RFC 9293 §3.6.1,
    MAY-2 condition (1); Linux tcp_timewait_state_process: SND.NXT + 65535 + 2). Going
    back to TIME-WAIT when the SYN proves to be an old duplicate (condition (2)) is not
    done, as Linux does not."""
    return seq.add(tw.snd_nxt, 65537)


def _challenge(tw: TimeWait, now: float, counters: Counters) -> Segment | None:
    tw.challenge_second, tw.challenge_count, allowed = challenge.throttle(
        tw.challenge_second, tw.challenge_count, now, counters)
    return ack(tw, now) if allowed else None


def on_segment(tw: TimeWait, seg: Segment, now: float, counters: Counters,
               listener_ts: bool | None) -> tuple[Outcome, Segment | None, DropReason | None]:
    """A segment for a connection in TIME-WAIT: what becomes of the record, the segment
    to answer with (if any), and why the segment was dropped (if it was).

    `listener_ts`: None when no listener could take a new incarnation's SYN (then it is
    answered like any other segment, as Linux does); else whether the listener's
    connections use timestamps (see `reopens`)."""
    flags = seg.flags
    if listener_ts is not None and reopens(tw, seg, listener_ts):
        return Outcome.REOPEN, None, None
    ts_val = seg.opts.ts_val
    # RFC 7323 §5.3 (R1), PAWS: an older timestamp marks an old duplicate.
    if (tw.ts_ok and ts_val is not None and not flags & RST
            and acceptance.paws_rejects(ts_val, tw.ts_recent, 0)):
        return Outcome.KEEP, ack(tw, now), DropReason.TCP_PAWS
    # First, check the sequence number. The peer's retransmitted FIN lies just below
    # RCV.NXT: ACK it again and wait 2 MSL from now.
    if not acceptance.in_window(seg.seq, seg.seg_len, tw.rcv_nxt,
                                seq.add(tw.rcv_nxt, tw.window << tw.wscale)):
        if flags & RST:
            return Outcome.KEEP, None, DropReason.TCP_NOT_ACCEPTABLE
        if flags & FIN:
            tw.restart(now)
        return Outcome.KEEP, ack(tw, now), DropReason.TCP_NOT_ACCEPTABLE
    # RFC 7323 §4.3 (R3): the segment is at the left edge (Last.ACK.sent = RCV.NXT here).
    if ts_val is not None and acceptance.keeps_ts(ts_val, tw.ts_recent, seg.seq, tw.rcv_nxt):
        tw.ts_recent = ts_val
    # Second, the RST bit (RFC 5961 §3.2); fourth, the SYN bit (RFC 5961 §4.2).
    if flags & RST:
        if seg.seq == tw.rcv_nxt:
            return Outcome.CLOSE, None, None
        return Outcome.KEEP, _challenge(tw, now, counters), DropReason.TCP_NOT_ACCEPTABLE
    if flags & SYN:
        return Outcome.KEEP, _challenge(tw, now, counters), DropReason.TCP_NOT_ACCEPTABLE
    # Fifth, the ACK field.
    if not flags & ACK:
        return Outcome.KEEP, None, DropReason.TCP_NO_ACK
    if seq.gt(seg.ack, tw.snd_nxt):
        return Outcome.KEEP, ack(tw, now), DropReason.TCP_BAD_ACK
    # Seventh, text after the peer's FIN is ignored; eighth, a FIN restarts the wait. An
    # ACK tells a confused peer where we stand.
    if flags & FIN:
        tw.restart(now)
    if flags & FIN or seg.payload:
        return Outcome.KEEP, ack(tw, now), None
    return Outcome.KEEP, None, None


# ---------------------------------------------------------------------------- the table

# One record, packed: SND.NXT, RCV.NXT, TS.Recent, TS offset, deadline, 2 x MSL, the
# challenge second, window field, window scale, timestamps on/off, challenge count.
_RECORD = struct.Struct("<IIIIdddHBBB")
TICK = 0.125  # expiry granularity: a record goes at most this late


def key(remote_addr: bytes, remote_port: int, local_port: int) -> int:
    """The table's key for a connection (one int: a tuple costs four objects); our
    address follows from the peer's (`Network.local_for`). An IPv6 peer's key has a bit
    set past any IPv4 one's (bit 128 of the address part), so the families never meet."""
    if len(remote_addr) == 16:
        return (1 << 128 | int.from_bytes(remote_addr, "big")) << 32 | (
            remote_port << 16 | local_port)
    return int.from_bytes(remote_addr, "big") << 32 | remote_port << 16 | local_port


def _split(k: int) -> tuple[bytes, int, int]:
    addr = k >> 32
    if addr >> 128:  # IPv6 (the family bit of `key`)
        return (addr & ((1 << 128) - 1)).to_bytes(16, "big"), (k >> 16) & 0xFFFF, k & 0xFFFF
    return addr.to_bytes(4, "big"), (k >> 16) & 0xFFFF, k & 0xFFFF


class TimeWaitTable:
    """Every connection in TIME-WAIT of a host, about 200 bytes each.

    Records are kept packed (`_RECORD`) in one dict; their deadlines sit in buckets of
    TICK seconds (a timer wheel: one list entry per record, no heap entry per record).
    A record whose deadline moved later is found in its old bucket and filed again.
    """

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self.limit = limit
        self._records: dict[int, bytes] = {}
        self._buckets: dict[int, list[int]] = {}
        self._ticks: list[int] = []  # a heap of the bucket numbers in use

    def __len__(self) -> int:
        return len(self._records)

    def __bool__(self) -> bool:
        return bool(self._records)

    def add(self, remote_addr: bytes, tw: TimeWait) -> bool:
        """File a connection entering TIME-WAIT; False when the table is full."""
        k = key(remote_addr, tw.remote_port, tw.local_port)
        if len(self._records) >= self.limit and k not in self._records:
            return False
        self.put(k, tw)
        return True

    def get(self, k: int) -> TimeWait | None:
        packed = self._records.get(k)
        if packed is None:
            return None
        (snd_nxt, rcv_nxt, ts_recent, ts_offset, deadline, lifetime, challenge_second,
         window, wscale, ts_ok, challenge_count) = _RECORD.unpack(packed)
        return TimeWait(k & 0xFFFF, (k >> 16) & 0xFFFF, snd_nxt, rcv_nxt, window, wscale,
                        bool(ts_ok), ts_recent, ts_offset, deadline, lifetime,
                        challenge_second, challenge_count)

    def put(self, k: int, tw: TimeWait) -> None:
        """Store `tw` (new, or changed by `on_segment`) under `k`."""
        old = self._records.get(k)
        self._records[k] = _RECORD.pack(
            tw.snd_nxt, tw.rcv_nxt, tw.ts_recent, tw.ts_offset, tw.deadline, tw.lifetime,
            tw.challenge_second, tw.window, tw.wscale, tw.ts_ok, tw.challenge_count)
        if old is None or _RECORD.unpack_from(old)[4] != tw.deadline:
            self._file(k, tw.deadline)

    def remove(self, k: int) -> None:
        self._records.pop(k, None)  # its bucket entry goes when the bucket comes up

    def _file(self, k: int, deadline: float) -> None:
        tick = -int(-deadline // TICK)  # the bucket that ends at or after the deadline
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = []
            heapq.heappush(self._ticks, tick)
        bucket.append(k)

    def next_deadline(self) -> float | None:
        """When the earliest bucket is due (records in it expire at most TICK late)."""
        return self._ticks[0] * TICK if self._ticks else None

    def expire(self, now: float) -> list[tuple[bytes, int, int]]:
        """Forget every record whose deadline has passed; their 4-tuples (remote address,
        remote port, local port)."""
        gone: list[tuple[bytes, int, int]] = []
        ticks, records = self._ticks, self._records
        while ticks and ticks[0] * TICK <= now:
            for k in self._buckets.pop(heapq.heappop(ticks)):
                packed = records.get(k)
                if packed is None:
                    continue  # closed or reopened since
                deadline = _RECORD.unpack_from(packed)[4]
                if deadline <= now:
                    del records[k]
                    gone.append(_split(k))
                # else: restarted since; `put` filed it in a later bucket too.
        return gone

    def __contains__(self, k: int) -> bool:
        return k in self._records

    def entries(self) -> list[tuple[bytes, int, int, float]]:
        """(remote address, remote port, local port, deadline) of every record."""
        return [(*_split(k), _RECORD.unpack_from(packed)[4])
                for k, packed in self._records.items()]


def enter(tcb: Tcb, now: float) -> None:
    """A TCB enters TIME-WAIT: it keeps only the compact record; the send side, the
    out-of-order queue and the recovery state go (unread text stays for the
    application). "Start the time-wait timer, turn off the other timers" (§3.10.7.4
    eighth)."""
    lifetime = 2 * tcb.config.msl
    tcb.time_wait = TimeWait(
        tcb.local_port, tcb.remote_port, tcb.snd_nxt, tcb.rcv_nxt, rcvwnd.window(tcb),
        tcb.rcv_wscale, tcb.ts_ok, tcb.ts_recent, tcb._ts_offset, now + lifetime,
        lifetime, tcb._challenge_second, tcb._challenge_count)
    tcb._snd_buf.clear()
    tcb._ooo.clear()
    tcb.scoreboard.clear()
    tcb._flight.clear()
    tcb.timers.clear()
    buffers.release_growth(tcb)
