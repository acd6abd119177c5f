"""The text a TCB receives (RFC 9293 §3.10.7.4 seventh): trimmed to the window,
delivered in order or held beyond a gap (SHLD-31), and the ACKs that draws: at once for
every out-of-order segment and a filled gap, else for every second full-sized segment
(RFC 5681 §4.2, MUST-40), with SACK and D-SACK blocks (RFC 2018, RFC 2883)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.stats import DropReason
from ustack.tcp import events, output, seq
from ustack.tcp.options import TIMESTAMP_SPACE
from ustack.tcp.sack import DUP_THRESH
from ustack.tcp.segment import ACK, FIN, Segment

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb


MIN_VIEW = 512  # received text shorter than this is copied, not kept as a view
_STRIDE_SHARE = 8  # an ACK at least per this share of a round trip's data (`ack_stride`)


def hold_out_of_order(tcb: Tcb, seg: Segment, payload: bytes | memoryview,
                      start: int) -> DropReason | None:
    """Text beyond a gap: hold it (SHLD-31) and say at once what we miss, with the SACK
    blocks as they stand after it (RFC 5681 §4.2 "immediately"; RFC 2018)."""
    if tcb.sack_ok:
        held = tcb._ooo.duplicate(start, seq.add(start, len(payload)))
        if held is not None:
            note_duplicate(tcb, *held)  # RFC 2883 §4.1.2 (Linux tcp_dsack_extend)
    if not tcb._ooo.add(start, payload):
        tcb._ack_now = True
        return DropReason.TCP_OOO_QUEUE_FULL
    tcb.counters["tcp_ooo_queued"] += 1
    if tcb._dupacks_rcv_nxt != tcb.rcv_nxt:
        tcb._dupacks_rcv_nxt = tcb.rcv_nxt
        tcb._dupacks_sent = 0
    # An ACK of its own, not one for the whole read: a sender learns from the order in
    # which ranges fill whether the path reorders (Linux tcp_check_sack_reordering),
    # and without it marks reordered segments lost. Answering a read's out-of-order
    # segments with one ACK (as Linux's SACK compression answers a millisecond's) left
    # a kernel BBR sender at 5 % reordering resending 195 segments of 10 MB where it
    # resent 117 to the kernel's receiver. A coalesced run (`ustack.tcp.gro`) counts as
    # the segments it carries up to DupThresh: one ACK for three segments left a sender
    # on a lossy return path waiting for its retransmission timer (200 KB at 20 % loss
    # took 74 s instead of 7).
    acks = 1
    if seg.gso and tcb._dupacks_sent < DUP_THRESH:
        carried = -(-len(payload) // seg.gso)
        acks = max(1, min(carried, DUP_THRESH - tcb._dupacks_sent))
    tcb._dupacks_sent += acks
    for _ in range(acks):
        tcb._outbox.append(output.segment(tcb, ACK, seq_no=tcb.snd_nxt))
    return None


def deliver(tcb: Tcb, seg: Segment, payload: bytes | memoryview, start: int) -> None:
    """Text at RCV.NXT: to the receive buffer, with what it joins from the out-of-order
    queue; ACKed for every second full-sized segment or at once when it fills a gap."""
    if type(payload) is memoryview and (
            len(payload) < MIN_VIEW
            or 2 * len(payload) < len(payload.obj)):  # type: ignore[arg-type]  # bytes
        # Small or trimmed text is copied: a view would pin its whole packet, and the
        # window counts only the text (1-byte segments would hold 400 B each).
        payload = bytes(payload)
    # A full segment carries the MSS less the options every segment has (the timestamp):
    # a super-packet must not raise the bar above it.
    full = tcb.rcv_mss - (TIMESTAMP_SPACE if tcb.ts_ok else 0)
    # Wire-sized segments, one by one or coalesced from one read (`ustack.tcp.gro`),
    # not a device's super-packets (one packet on the way in, as Linux's GRO packets).
    wire = seg.gso <= full if seg.gso else len(payload) <= full
    carried = 0
    stride = ack_stride(tcb)
    if seg.gso and wire and not tcb._ooo:
        carried = ack_carried(tcb, start, len(payload), seg.gso, stride)
    tcb._rcv_buf.append(payload)
    tcb._rcv_len += len(payload)
    tcb.events |= events.READABLE
    tcb.bytes_received += len(payload)
    tcb.rcv_nxt = seq.add(tcb.rcv_nxt, len(payload))
    space = tcb._rcv_space
    if space.rtt_seq is None or seq.le(space.rtt_seq, tcb.rcv_nxt):
        space.window_reached(tcb._rcv_adv, tcb._now)
    if tcb._ooo:
        # It fills (part of) a gap: take what now follows, and ACK at once (RFC 5681
        # §4.2), before the rest of the read: the sender learns the gap was reordering.
        tcb._ooo.drop_before(tcb.rcv_nxt)
        more = tcb._ooo.take(tcb.rcv_nxt)
        tcb._rcv_buf.append(more)
        tcb._rcv_len += len(more)
        tcb.bytes_received += len(more)
        tcb.rcv_nxt = seq.add(tcb.rcv_nxt, len(more))
        ack_at_once(tcb)
        return
    if len(payload) >= tcb._rcv_mss_seen:
        # MUST-40 / RFC 5681 §4.2: an ACK for at least every second full-sized segment
        # (`ack_stride`: more for a fast flow; a super-packet from a TSO sender counts as
        # the segments it carries).
        tcb._rcv_mss_seen = min(len(payload), full)
        tcb._full_segments_unacked += (len(payload) - carried) // tcb._rcv_mss_seen
        if tcb._full_segments_unacked >= stride:
            if wire:
                # ACKed as they come, not once per read: a batch of them draws the ACKs
                # it would have drawn one by one.
                ack_at_once(tcb)
                return
            tcb._ack_now = True  # a device's super-packets: one ACK per batch
    tcb._ack_delayed = True


def ack_at_once(tcb: Tcb) -> None:
    """An ACK for RCV.NXT now, ahead of what the rest of the read brings; one for both
    when the peer's FIN is next (the eighth step ACKs it)."""
    if tcb._fin_seq == tcb.rcv_nxt:
        tcb._ack_now = True
    else:
        tcb._outbox.append(output.segment(tcb, ACK, seq_no=tcb.snd_nxt))


def ack_stride(tcb: Tcb) -> int:
    """Full-sized segments per ACK: two (RFC 5681 §4.2), or an eighth of the most the
    application took in one RTT when that is more. A deviation Linux makes too: under
    load its GRO packets (up to 64 KB) draw one ACK each. A fast flow's sender has the
    window to spare and loses little by it; the receiver saves an ACK's work per two
    segments (on the in-memory path, 219 ACKs for 20 MB instead of 7,125: 45 µs a
    segment against 25). A slow one, whose window is a few segments, keeps an ACK per
    two: one ACK per read of ten segments left a kernel CUBIC sender at 1 % loss with
    0.73 of its goodput to a kernel receiver."""
    return max(2, tcb._rcv_space.space // (_STRIDE_SHARE * tcb.rcv_mss))


def ack_carried(tcb: Tcb, start: int, length: int, gso: int, stride: int) -> int:
    """The ACKs a run of in-order segments coalesced from one read (`ustack.tcp.gro`)
    would have drawn one by one: one every `stride` segments, each for RCV.NXT and the
    free space as they stood then; what follows the last of them is left to the usual
    rule. Returns the bytes they covered."""
    step = stride * gso
    if length <= step:
        return 0
    rcv_nxt, rcv_len = tcb.rcv_nxt, tcb._rcv_len
    offset = 0
    for offset in range(step, length, step):
        tcb.rcv_nxt = seq.add(start, offset)
        tcb._rcv_len = rcv_len + offset  # the run's text so far is in the buffer
        tcb._outbox.append(output.segment(tcb, ACK, seq_no=tcb.snd_nxt))
    tcb.rcv_nxt, tcb._rcv_len = rcv_nxt, rcv_len
    return offset


def trim(tcb: Tcb, seg: Segment) -> tuple[bytes | memoryview, bool, int]:
    """The part of the text inside the window, whether the FIN survives, and its start."""
    payload = seg.payload
    fin = bool(seg.flags & FIN)
    start = seg.seq
    old = seq.ahead(tcb.rcv_nxt, start)
    if old:  # starts before RCV.NXT: drop what we already have
        if old > len(payload):
            return b"", False, tcb.rcv_nxt
        if payload:
            note_duplicate(tcb, start, seq.add(start, min(old, len(payload))))
        payload = payload[old:]
        start = tcb.rcv_nxt
    room = seq.sub(tcb._rcv_adv, start)
    if len(payload) > room:
        payload = payload[:room]
        fin = False  # the FIN lies beyond the window
        tcb._ack_now = True
    return payload, fin, start


def note_duplicate(tcb: Tcb, start: int, end: int) -> None:
    """Text [start, end) arrived again: the next ACK reports it (RFC 2883), if SACK was
    negotiated. The first duplicate waiting wins. (Whether that ACK goes at once is
    the caller's rule: for a wholly old segment or out-of-order text it does; for a
    segment that overlaps RCV.NXT it is the usual delayed ACK, as in Linux.)"""
    if tcb.sack_ok and tcb._dsack is None:
        tcb._dsack = (start, end)
