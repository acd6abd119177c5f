"""SEGMENT ARRIVES (RFC 9293 §3.10.7) for one TCB: the steps of §3.10.7.4 as named
functions, called in the RFC's order by `synchronized`, and by `fast_path` (header
prediction) where only some of them can act. Each step returns `NEXT` to go on, or what
ends the segment's processing: None, or the `DropReason` it was dropped for."""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING

from ustack.stats import DropReason
from ustack.tcp import (
    acceptance,
    challenge,
    delivery,
    events,
    handshake,
    output,
    recovery,
    seq,
    timewait,
)
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN, Segment
from ustack.tcp.states import ON_FIN_ACKED, ON_FIN_RECEIVED, RECEIVING, State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb


class _Next(enum.Enum):
    NEXT = "next"


NEXT = _Next.NEXT  # a step's verdict: go on to the next step
Verdict = DropReason | None | _Next

OOW_ACK_INTERVAL = 0.5  # Linux tcp_invalid_ratelimit: 500 ms
_AFTER_PEER_FIN = (State.CLOSE_WAIT, State.LAST_ACK, State.CLOSING)


def fast_path(tcb: Tcb, seg: Segment, now: float) -> bool:
    """Van Jacobson's header prediction (BSD; Linux tcp_rcv_established): in ESTABLISHED,
    the next expected segment, only ACK (and PSH) set, an open window, no SACK news,
    no recovery under way, either acknowledging new data or carrying in-window text.
    Every check of §3.10.7.4 would pass, so only the steps that act are taken, in
    their order; anything else (False) takes the full path."""
    if (seg.flags | PSH) != ACK | PSH or seg.seq != tcb.rcv_nxt:
        return False
    opts = seg.opts
    ts_val = opts.ts_val
    if tcb.ts_ok and (ts_val is None or acceptance.paws_rejects(ts_val, tcb.ts_recent)):
        return False  # no timestamp, or PAWS would have a word (R1)
    # A new window is taken (the window update rule runs below), unlike Linux's
    # prediction, which leaves any change to its slow path: a receiver's window moves
    # with nearly every ACK of a transfer. A zero window, or one reopening, takes the
    # full path (the persist timer, a resend of what was sent into it).
    if (opts.sack or tcb.in_recovery or tcb._flight.lost_bytes or tcb.scoreboard
            or tcb._tlp is not None or tcb._ooo or tcb._fin_seq is not None
            or not seg.wnd or not tcb.snd_wnd):
        return False
    ack = seg.ack
    advance = (ack - tcb.snd_una) & seq.MASK
    if advance > (tcb.snd_nxt - tcb.snd_una) & seq.MASK:
        return False  # beyond SND.NXT, or an old ACK
    size = len(seg.payload)
    if size:
        if size > seq.ahead(tcb._rcv_adv, tcb.rcv_nxt) or tcb.orphaned:
            return False
    elif not advance:
        return False  # a duplicate ACK or a window probe's answer
    accepted(tcb, seg, now)  # first: acceptable (SEG.SEQ = RCV.NXT, within the window)
    if advance:  # fifth: the ACK of new data, then the window update rule
        recovery.ack_advanced(tcb, ack, opts.ts_ecr, now)
    window_update_rule(tcb, seg)
    if size:
        seventh_segment_text(tcb, seg)
    return True


def syn_sent(tcb: Tcb, seg: Segment, now: float) -> DropReason | None:
    # RFC 9293 §3.10.7.3, first: check the ACK bit.
    if seg.flags & ACK and (
        seq.le(seg.ack, tcb.iss) or seq.gt(seg.ack, tcb.snd_nxt)
    ):
        if not seg.flags & RST:
            tcb._outbox.append(output.segment(tcb, RST, seq_no=seg.ack))
        return DropReason.TCP_BAD_ACK
    # Second: the RST bit; acceptable only with an ACK of our SYN (RFC 5961 §3.2).
    if seg.flags & RST:
        if seg.flags & ACK:
            tcb._close(ConnectionRefusedError(errno.ECONNREFUSED, "connection refused"))
            return None
        return DropReason.TCP_NOT_ACCEPTABLE
    # Fourth: the SYN bit.
    if not seg.flags & SYN:
        return DropReason.TCP_UNEXPECTED
    tcb._last_rcv = now
    handshake.set_irs(tcb, seg.seq)
    handshake.negotiate(tcb, seg)
    if seg.flags & ACK:
        recovery.ack_advanced(tcb, seg.ack, seg.opts.ts_ecr, now)
    if seq.gt(tcb.snd_una, tcb.iss):
        set_send_window(tcb, seg)
        tcb._set_state(State.ESTABLISHED)
        tcb._ack_now = True
        # Text in a SYN-ACK is rare and may be dropped: the peer retransmits it.
    else:
        # Simultaneous open (§3.3.5): <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>.
        tcb._syn_owed = True
        tcb._set_state(State.SYN_RCVD)
    return None


def synchronized(tcb: Tcb, seg: Segment, now: float,
                 accept_queue_full: bool = False) -> DropReason | None:
    """§3.10.7.4 "Otherwise" (SYN-RECEIVED to LAST-ACK): the steps in the RFC's order;
    the third (security) does not apply and the sixth (URG) is ignored: urgent data is
    not supported."""
    for step in (before_the_steps, first_check_sequence, second_check_rst,
                 fourth_check_syn):
        verdict = step(tcb, seg, now)
        if verdict is not NEXT:
            return verdict
    verdict = fifth_check_ack(tcb, seg, now, accept_queue_full)
    if verdict is not NEXT:
        return verdict
    reason = seventh_segment_text(tcb, seg)
    if tcb.state is not State.CLOSED:
        eighth_check_fin(tcb, now)
    return reason


def before_the_steps(tcb: Tcb, seg: Segment, now: float) -> Verdict:
    """What Linux checks before the RFC's steps: a retransmitted SYN, PAWS (RFC 7323
    §5.3 R1, which the RFC places before the first step) and a RST just after the FIN."""
    state = tcb.state
    flags = seg.flags
    if state is State.SYN_RCVD and flags & SYN and not flags & ACK and seg.seq == tcb.irs:
        # The peer retransmitted its SYN: our SYN-ACK was lost. Send it again
        # (Linux tcp_check_req), rather than the bare ACK of the sequence check.
        tcb._syn_owed = True
        return None

    # RFC 7323 §5.3 (R1), PAWS: an older timestamp marks an old duplicate.
    ts_val = seg.opts.ts_val
    if (tcb.ts_ok and ts_val is not None and not flags & RST
            and acceptance.paws_rejects(ts_val, tcb.ts_recent)
            and not disordered_ack(tcb, seg, ts_val)):
        # R1: "send an acknowledgment in reply", but to a pure ACK at most one per
        # OOW_ACK_INTERVAL (Linux tcp_oow_rate_limited, tcp_invalid_ratelimit): an
        # ACK the path reordered behind a newer one needs no answer, and a burst of
        # them drew one ACK each (100 in a 5 MB download at 5 % reordering).
        if seg.payload or flags & (SYN | FIN) or now - tcb._oow_ack_at >= OOW_ACK_INTERVAL:
            tcb._oow_ack_at = now
            tcb._ack_now = True
        return DropReason.TCP_PAWS

    # RFC 5961 §3.2 takes a RST only at exactly RCV.NXT. After the peer's FIN, a RST
    # from its closed socket carries the FIN's own number, RCV.NXT - 1: Linux
    # (tcp_reset_check) takes that as exact too, and so do we, rather than drop it
    # as out of window and wait for a second one.
    if (flags & RST and tcb.fin_received and state in _AFTER_PEER_FIN
            and seg.seq == seq.sub(tcb.rcv_nxt, 1)):
        tcb._close(None if state is not State.CLOSE_WAIT
                   else ConnectionResetError("connection reset by peer"))
        tcb.counters["tcp_rst_in"] += 1
        return None
    return NEXT


def first_check_sequence(tcb: Tcb, seg: Segment, now: float) -> Verdict:
    """First, check sequence number (§3.10.7.4, Table 6)."""
    if not acceptance.in_window(seg.seq, seg.seg_len, tcb.rcv_nxt, tcb._rcv_adv):
        if not seg.flags & RST:
            tcb._ack_now = True  # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
            end = seq.add(seg.seq, len(seg.payload))
            if seg.payload and seq.le(end, tcb.rcv_nxt):
                # Text we had already: say so (RFC 2883 §4, Linux tcp_dsack_set).
                delivery.note_duplicate(tcb, seg.seq, end)
        return DropReason.TCP_NOT_ACCEPTABLE
    accepted(tcb, seg, now)
    return NEXT


def accepted(tcb: Tcb, seg: Segment, now: float) -> None:
    """An acceptable segment: the connection is alive, and RFC 7323 §4.3 (R3) remembers
    the timestamp of a segment at the left edge."""
    tcb._last_rcv = now
    tcb._keepalive_probes = 0
    ts_val = seg.opts.ts_val
    if ts_val is not None and acceptance.keeps_ts(ts_val, tcb.ts_recent, seg.seq,
                                                  tcb.last_ack_sent):
        tcb.ts_recent = ts_val


def second_check_rst(tcb: Tcb, seg: Segment, now: float) -> Verdict:
    """Second, check the RST bit (with RFC 5961 §3.2)."""
    if not seg.flags & RST:
        return NEXT
    if seg.seq != tcb.rcv_nxt:
        challenge_ack(tcb, now)
        return DropReason.TCP_NOT_ACCEPTABLE
    state = tcb.state
    if state is State.SYN_RCVD:
        # Passive: back to LISTEN, i.e. this embryonic TCB just goes away.
        tcb._close(None if tcb.passive
                   else ConnectionRefusedError(errno.ECONNREFUSED, "connection refused"))
    elif state in (State.CLOSING, State.LAST_ACK):
        tcb._close(None)
    else:
        tcb._close(ConnectionResetError("connection reset by peer"))
    tcb.counters["tcp_rst_in"] += 1
    return None


def fourth_check_syn(tcb: Tcb, seg: Segment, now: float) -> Verdict:
    """Fourth, check the SYN bit (third, security, does not apply)."""
    if not seg.flags & SYN:
        return NEXT
    if tcb.state is State.SYN_RCVD and tcb.passive:
        tcb._close(None)  # "return this connection to the LISTEN state"
        return None
    challenge_ack(tcb, now)  # RFC 5961 §4.2
    return DropReason.TCP_NOT_ACCEPTABLE


def fifth_check_ack(tcb: Tcb, seg: Segment, now: float,
                    accept_queue_full: bool = False) -> Verdict:
    """Fifth, check the ACK field: SYN-RECEIVED's handshake, an ACK of nothing sent or
    too old (RFC 5961 §5.2), then what it tells loss recovery, the window update rule,
    and the states a FIN's ACK ends."""
    if not seg.flags & ACK:
        return DropReason.TCP_NO_ACK
    if tcb.state is State.SYN_RCVD:
        if not (seq.lt(tcb.snd_una, seg.ack) and seq.le(seg.ack, tcb.snd_nxt)):
            tcb._outbox.append(output.segment(tcb, RST, seq_no=seg.ack))  # <SEQ=SEG.ACK><CTL=RST>
            return DropReason.TCP_BAD_ACK
        if accept_queue_full:
            return DropReason.TCP_LISTEN_OVERFLOW  # valid, but no room: stay (Linux)
        set_send_window(tcb, seg)
        tcb._set_state(State.ESTABLISHED)
        if tcb._fin_queued:
            tcb._set_state(State.FIN_WAIT_1)
    if seq.gt(seg.ack, tcb.snd_nxt):
        tcb._ack_now = True  # it acknowledges something not yet sent
        return DropReason.TCP_BAD_ACK
    if seq.lt(seg.ack, seq.sub(tcb.snd_una, tcb.max_snd_wnd)):
        tcb._ack_now = True  # RFC 5961 §5.2: too old to be acceptable
        return DropReason.TCP_BAD_ACK
    recovery.ack_arrived(tcb, seg, now)
    window_update_rule(tcb, seg)
    if tcb._fin_acked() and tcb.state in ON_FIN_ACKED:
        tcb._set_state(ON_FIN_ACKED[tcb.state])
        if tcb.state is State.CLOSED:
            return None  # LAST-ACK: "delete the TCB, and return"
        if tcb.state is State.TIME_WAIT:
            timewait.enter(tcb, now)
    return NEXT


def window_update_rule(tcb: Tcb, seg: Segment) -> None:
    """§3.10.7.4 fifth: the send window from a segment not older than the last one that
    set it (SND.WL1 < SEG.SEQ, or SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK)."""
    wl1 = tcb.snd_wl1
    if seq.le(tcb.snd_una, seg.ack) and (
            seq.lt(wl1, seg.seq) or (wl1 == seg.seq and seq.le(tcb.snd_wl2, seg.ack))):
        set_send_window(tcb, seg)


def eighth_check_fin(tcb: Tcb, now: float) -> None:
    """Eighth, check the FIN bit: it may have waited beyond a gap until now."""
    if tcb._fin_seq is None or tcb._fin_seq != tcb.rcv_nxt or tcb.fin_received:
        return
    tcb.rcv_nxt = seq.add(tcb.rcv_nxt, 1)
    if seq.lt(tcb._rcv_adv, tcb.rcv_nxt):
        tcb._rcv_adv = tcb.rcv_nxt  # a FIN at the right edge: the window is 0
    tcb._ack_now = True
    tcb.fin_received = True
    tcb.events |= events.EOF
    if tcb.state in ON_FIN_RECEIVED:
        tcb._set_state(ON_FIN_RECEIVED[tcb.state])
        if tcb.state is State.TIME_WAIT:
            timewait.enter(tcb, now)


def time_wait(tcb: Tcb, seg: Segment, now: float) -> DropReason | None:
    """RFC 9293 §3.10.7.4 in TIME-WAIT, by the compact record's rules (`timewait`). A
    lone TCB has no listener to hand a new incarnation's SYN to (the host does)."""
    tw = tcb.time_wait
    if tw is None:
        return DropReason.TCP_UNEXPECTED  # handed over to the host's table
    outcome, reply, reason = timewait.on_segment(tw, seg, now, tcb.counters, None)
    if reply is not None:
        tcb._outbox.append(reply)
    if outcome is timewait.Outcome.CLOSE:
        tcb._close(None)
    return reason


def seventh_segment_text(tcb: Tcb, seg: Segment) -> DropReason | None:
    """§3.10.7.4 seventh: deliver in-order text, hold out-of-order text (SHLD-31)."""
    payload, fin, start = delivery.trim(tcb, seg)
    if not payload and not fin:
        return None
    if tcb.state not in RECEIVING:
        return None  # after the peer's FIN there is no more text
    if fin and tcb._fin_seq is None:
        tcb._fin_seq = seq.add(start, len(payload))
    if not payload:
        return None
    if tcb.orphaned:
        # Data after the user's close has no reader: reset, as Linux does.
        tcb._outbox.append(output.segment(tcb, RST | ACK, seq_no=tcb.snd_nxt))
        tcb._close(None)
        return None
    if start != tcb.rcv_nxt:
        return delivery.hold_out_of_order(tcb, seg, payload, start)
    delivery.deliver(tcb, seg, payload, start)
    return None


def disordered_ack(tcb: Tcb, seg: Segment, ts_val: int) -> bool:
    """A duplicate ACK the path reordered, exempt from PAWS (a deviation from RFC 7323
    §5.3, as Linux tcp_disordered_ack): a pure ACK at RCV.NXT for SND.UNA that would
    not update the window, its TSval less than an RTO behind TS.Recent. Dropping it
    would lose the SACK blocks it carries, which recovery needs."""
    nwin = seg.wnd << tcb.snd_wscale
    return (seg.flags & (ACK | SYN | FIN) == ACK and not seg.payload
            and seg.seq == tcb.rcv_nxt and seg.ack == tcb.snd_una
            and seg.seq == tcb.snd_wl1 and 0 < nwin <= tcb.snd_wnd
            and seq.sub(tcb.ts_recent, ts_val) <= tcb.rtt.rto * 1000)


def challenge_ack(tcb: Tcb, now: float) -> None:
    """RFC 5961 §3.2, §4.2: a challenge ACK, throttled per §7."""
    tcb._challenge_second, tcb._challenge_count, allowed = challenge.throttle(
        tcb._challenge_second, tcb._challenge_count, now, tcb.counters)
    if allowed:
        tcb._ack_now = True


def set_send_window(tcb: Tcb, seg: Segment) -> None:
    # RFC 7323 §2.3: the window field of a SYN is never scaled.
    reopened = tcb.snd_wnd == 0
    tcb.snd_wnd = seg.wnd if seg.flags & SYN else seg.wnd << tcb.snd_wscale
    if reopened and tcb.snd_wnd and tcb.snd_una != tcb.snd_nxt:
        # What we sent into the zero window (probes) was not accepted: resend it now.
        tcb._flight.lose_range(tcb.snd_una, tcb.snd_nxt)
    tcb.snd_wl1 = seg.seq
    tcb.snd_wl2 = seg.ack
    tcb.max_snd_wnd = max(tcb.max_snd_wnd, tcb.snd_wnd)

