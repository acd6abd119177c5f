"""What an acceptable ACK means for the data in flight, and loss recovery: new data
acknowledged (RTT samples, congestion control), SACK news (RFC 2018, RFC 6675), duplicate
ACKs and fast retransmit (RFC 5681 §3.2, NewReno RFC 6582), RACK-TLP (RFC 8985), PRR's
window through a recovery (RFC 6937), the retransmission timeout (RFC 6298), and undoing
a recovery that was spurious (Eifel RFC 3522, D-SACK RFC 3708). The congestion
controller's window is written here and in nothing else of the TCB."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import buffers, events, output, sack, seq, timers, tlp
from ustack.tcp.eifel import DsackUndo, Eifel
from ustack.tcp.flight import END, RETRANS, SENT_AT
from ustack.tcp.rtt import MAX_RTO
from ustack.tcp.sack import DUP_THRESH
from ustack.tcp.segment import FIN, SYN, Segment
from ustack.tcp.states import State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

# The longest RTT a TSecr may claim: the longest RTO (RFC 6298 (2.5)); an ACK can take no
# longer without a retransmission, which Karn excludes anyway. Linux's bound is ~35 min
# (tcp_rtt_tsopt_us); ours is tighter. We could also demand that the echo be no older than
# the TSval of the oldest unacknowledged segment (RFC 7323 §4.1 does not ask for it): that
# needs per-segment send times, which the sender does not keep yet.
MAX_TS_RTT_MS = int(MAX_RTO * 1000)
REORDER_SLACK = 0.001  # the reordering timer fires this much after RACK's deadline


def ack_arrived(tcb: Tcb, seg: Segment, now: float) -> None:
    """An acceptable ACK (§3.10.7.4 fifth): D-SACK, SACK news, a loss probe's verdict,
    new data acknowledged or a duplicate ACK, RACK's loss marking, PRR's window."""
    dsack = tcb.sack_ok and sack.is_dsack(seg.opts.sack, seg.ack)
    if dsack:
        tcb.counters["tcp_dsack_received"] += 1  # the peer got something twice
        if tcb._dsack_undo is not None and tcb._dsack_undo.dsacked(
                *seg.opts.sack[0], output.mss_payload(tcb)):
            undo_recovery(tcb, "D-SACKs: every retransmission was received twice")
        if uses_rack(tcb) and tcb._rack.on_dsack(tcb.snd_una, tcb.snd_nxt):
            tcb.counters["tcp_rack_reo_wnd_changes"] += 1
            tcb._note("reo_wnd", f"{tcb._rack.reo_wnd_mult} x min RTT / 4, D-SACK")
    if tcb.scoreboard and tcb.scoreboard.reneged(seg.ack):
        # The peer dropped data it had SACKed: resend it like the rest (RFC 2018 §8).
        tcb.counters["tcp_sack_reneging"] += 1
        tcb.scoreboard.clear()
        tcb._flight.unsack_all()
    una, sacked = tcb.snd_una, tcb.scoreboard.sacked
    new_blocks = (tcb.scoreboard.update(seg.opts.sack, tcb.snd_una, tcb.snd_nxt)
                  if tcb.sack_ok else None)
    new_sack = bool(new_blocks)
    if new_blocks:
        on_sacked(tcb, new_blocks, seg.opts.ts_ecr, now)
    advanced = seq.lt(tcb.snd_una, seg.ack)
    if tcb._tlp is not None:
        tlp.judge(tcb, seg, dsack, advanced or new_sack)
    if advanced:
        ack_advanced(tcb, seg.ack, seg.opts.ts_ecr, now)
    elif is_duplicate_ack(tcb, seg, new_sack):
        on_duplicate_ack(tcb, now)
    if tcb.sack_ok and (tcb.in_recovery or tcb.scoreboard):
        if uses_rack(tcb) and (advanced or new_sack):
            # Only news of delivery moves RACK's verdicts (time alone is the
            # reordering timer's): a walk of the flight per duplicate ACK was
            # a good part of the cost of a reordering path.
            detect_loss(tcb, now)
        undo_if_nothing_resent(tcb)
        if tcb.in_recovery:
            # RFC 6937: what this ACK delivered, the advance of SND.UNA and the change
            # in SACKed bytes, sets what the recovery may send.
            newly = max(0, seq.sub(tcb.snd_una, una) + tcb.scoreboard.sacked - sacked)
            tcb.cc.cwnd = tcb._prr.on_ack(newly, output.pipe(tcb), tcb.cc.ssthresh,
                                          tcb.snd_mss)


def ack_advanced(tcb: Tcb, ack: int, ts_ecr: int, now: float) -> None:
    """SND.UNA < SEG.ACK =< SND.NXT: drop acknowledged data, feed RTT and cwnd."""
    if tcb._eifel is not None:
        check_spurious_retransmit(tcb, ack, ts_ecr)
    acked = seq.sub(ack, tcb.snd_una)
    tcb.snd_una = ack
    tcb.bytes_acked += acked
    buf = tcb._snd_buf
    into_buf = seq.ahead(ack, tcb._snd_buf_seq)
    if into_buf and buf:
        drop = min(into_buf, len(buf))
        buf.drop(drop)
        tcb._snd_buf_seq = seq.add(tcb._snd_buf_seq, drop)
        tcb.events |= events.WRITABLE
    if tcb.scoreboard:
        tcb.scoreboard.advance(ack)
    sample = delivered(tcb, ack, ts_ecr, now)
    tcb._retries = 0
    tcb._persist_backoff = 0
    tcb._dupacks = 0
    tcb._consecutive_rtos = 0
    window_on_ack(tcb, ack, acked, sample, now)
    # RFC 6298 (5.2)/(5.3): stop the timer when all is acknowledged, else restart it
    # (or the probe timer in its place, RFC 8985 §7.2: `timeouts.rearm`).
    if tcb.timers.kind in (timers.RETRANSMIT, timers.LOSS_PROBE):
        if tcb.snd_una == tcb.snd_nxt:
            tcb.timers.disarm()
        else:
            tcb.timers.arm(timers.RETRANSMIT, now + tcb.rtt.rto)
    tcb._tlp_due = True


def delivered(tcb: Tcb, ack: int, ts_ecr: int, now: float) -> float | None:
    """What the flight says of the data SEG.ACK covers: RACK's newest delivery, and the
    RTT sample taken (returned unless Karn's rule forbade timing by send time).

    The RTT: from the send time of the newest segment this ACK covers, unless any of
    them went out twice (Karn, MUST-18); only then from the echoed timestamp (RFC 7323
    §4.1), which has millisecond ticks: it dates the copy that reached the peer, so it
    times a retransmission too (Linux tcp_ack_update_rtt does the same; without it RTO
    stayed backed off through a long recovery, up to 60 s between two
    retransmissions). Not if it lies in our future or further back than any RTT can be
    (Linux tcp_rtt_tsopt_us): a peer echoing garbage must not pin RTO at 60 s."""
    sent_at, retransmitted, hole_end = tcb._flight.acked(ack)
    undo_if_nothing_resent(tcb)
    if sent_at is not None and uses_rack(tcb):
        rack = tcb._rack
        if hole_end is not None:
            rack.reached(hole_end, False)
        rack.reached(ack, True)
        rack.delivered(sent_at, ack, retransmitted, now, echo_older(tcb, ts_ecr, sent_at))
    if sent_at is not None and not retransmitted:
        sample = now - sent_at
        tcb.rtt.sample(sample)
        return sample
    if tcb.ts_ok and ts_ecr:
        delta = seq.sub(tcb._ts_now(now), ts_ecr)
        if delta <= MAX_TS_RTT_MS:
            tcb.rtt.sample(delta / 1000)
    return None


def window_on_ack(tcb: Tcb, ack: int, acked: int, sample: float | None,
                  now: float) -> None:
    """The congestion window for `acked` new bytes: grown outside a recovery, the
    recovery ended by a full acknowledgment, or a partial one's step (RFC 6675 marking
    without RACK; RFC 6582 §3.2 step 5 without SACK)."""
    flight = seq.sub(tcb.snd_nxt, tcb.snd_una)
    if not tcb.in_recovery:
        # Keep the recovery marks just behind SND.UNA, so that they never lag 2**31
        # behind and flip meaning.
        if seq.gt(ack, tcb._recover):
            tcb._recover = ack
        if seq.gt(ack, tcb._high_rxt):
            tcb._high_rxt = ack
        tcb.cc.on_ack(acked, now, tcb.rtt.srtt, ack, tcb.snd_nxt, sample,
                      output.is_cwnd_limited(tcb))
        if 2 * tcb.cc.cwnd > tcb.snd_buf_size < tcb._snd_buf_cap:
            buffers.grow_snd_buf(tcb, 2 * tcb.cc.cwnd)  # Linux tcp_sndbuf_expand
    elif seq.ge(ack, tcb._recover):
        # Full acknowledgment: recovery is over (RFC 6582 §3.2 step 3, RFC 6675 §5).
        tcb.in_recovery = False
        tcb.cc.on_recovery_exit(flight)
        if tcb._rack.on_recovery_exit():
            tcb.counters["tcp_rack_reo_wnd_changes"] += 1
            tcb._note("reo_wnd", "min RTT / 4 again")
    elif uses_rack(tcb):
        pass  # RACK looks at the flight after every ACK (`detect_loss`)
    elif tcb.sack_ok:
        mark_lost(tcb)  # RFC 6675: the scoreboard says what else is missing
    else:
        # RFC 6582 §3.2 step 5, partial acknowledgment: resend the next hole at once
        # and deflate the window by what was acknowledged (adding one SMSS back).
        tcb._flight.lose_range(tcb.snd_una, seq.add(tcb.snd_una, output.mss_payload(tcb)))
        tcb._force_one = True
        tcb.cc.cwnd = max(tcb.snd_mss, tcb.cc.cwnd - acked
                          + (tcb.snd_mss if acked >= tcb.snd_mss else 0))


def on_retransmission_timeout(tcb: Tcb) -> None:
    syn = tcb.state in (State.SYN_SENT, State.SYN_RCVD)
    # A peer that keeps answering with a zero window is alive (MUST-37): only
    # silence counts towards giving up.
    if syn or tcb.snd_wnd or tcb._now - tcb._last_rcv >= MAX_RTO:
        tcb._retries += 1
    if tcb._retries > (tcb.config.syn_retries if syn else tcb.config.max_retries):
        tcb._close(TimeoutError("connection timed out"))
        return
    # RFC 6298 (5.4)-(5.6): retransmit the earliest unacknowledged segment and
    # back off; Karn: the retransmitted segment gives no RTT sample (MUST-18).
    tcb.rtt.backoff()
    if syn:
        tcb._syn_owed = True
        tcb._syn_timed_out = True
    else:
        if tcb._consecutive_rtos == 0 and tcb.ts_ok and output.unacked_text(tcb):
            # RFC 3522: the first ACK after the retransmission tells whether it was
            # needed; keep what the reduction below would undo (RFC 4015). Not for a
            # lone FIN: a peer in TIME-WAIT answers its retransmission with the TSecr
            # of the first copy (Linux tcp_timewait_state_process echoes tw_ts_recent
            # to an out-of-window segment), so every lost ACK would look spurious; and
            # there is nothing left to send for an undo to help.
            tcb._eifel = Eifel(tcb.snd_una, tcb.cc.snapshot())
        # RFC 5681 §3.1: ssthresh is held when the same data times out again.
        tcb._consecutive_rtos += 1
        tcb.cc.on_rto(seq.sub(tcb.snd_nxt, tcb.snd_una), tcb._now,
                      repeated=tcb._consecutive_rtos > 1)
        # RFC 6582: after a timeout, recover = the highest sequence sent; everything
        # outstanding is resent but what the peer SACKed (Linux tcp_timeout_mark_lost
        # keeps those marks: resending them was most of the retransmissions on a
        # lossy, reordering path, all answered by D-SACKs). A peer that reneges is
        # caught by the next ACK (`Scoreboard.reneged`).
        tcb.in_recovery = False
        tcb._recover = tcb.snd_nxt
        tcb._dupacks = 0
        tcb._high_rxt = tcb.snd_una
        tcb._tlp = None
        tcb._dsack_undo = None
        tcb._flight.lose_range(tcb.snd_una, tcb.snd_nxt)
        # The earliest segment goes out even if the window has shrunk since (as Linux's
        # tcp_retransmit_timer): to a zero window it is the probe of MUST-36.
        tcb._force_one = True
    tcb.retransmits += 1
    tcb.counters["tcp_rto"] += 1


def check_spurious_retransmit(tcb: Tcb, ack: int, ts_ecr: int) -> None:
    """The first ACK since a retransmission timeout or a fast retransmit (RFC 3522):
    if it acknowledges the original transmission, undo the reduction: the window and
    ssthresh of before and no resending of what was never lost (new data goes next);
    after a timeout also the RTO without its backoff (RFC 4015), after a fast
    retransmit the end of the recovery. A fast recovery that resent several segments
    is judged by every ACK up to the last of them (Linux tcp_try_undo_recovery, at its
    end): each must echo an original; one that echoes a retransmission, or a hole
    still to resend, says a loss was real. Judged by the first ACK alone, reordering
    that RACK took for loss (two or three segments late) was never undone: a 10 MB
    download through 5 % reordering ran at 0.24 of the kernel's speed."""
    eifel = tcb._eifel
    if eifel is None:
        return
    if not eifel.spurious(ts_ecr):
        tcb._eifel = None
        return
    if not eifel.timeout and (seq.lt(ack, tcb._high_rxt) or tcb._flight.lost_bytes):
        return  # so far so good: the next ACKs tell the rest
    tcb._eifel = None
    tcb._dsack_undo = None
    tcb.cc.restore(eifel.cc_state)
    tcb._flight.clear_lost()
    tcb._note("undo", "timeout" if eifel.timeout else "fast retransmit")
    if eifel.timeout:
        tcb.counters["tcp_spurious_rto"] += 1
        tcb.rtt.undo_backoff()
        tcb._consecutive_rtos = 0
    else:
        tcb.counters["tcp_spurious_fast_retransmit"] += 1
        tcb.in_recovery = False


def undo_if_nothing_resent(tcb: Tcb) -> None:
    """What RACK took for lost arrived before it could be resent (one ACK of a batch
    marks, the next ones SACK or ACK it): reordering, and nothing left to wait for
    (Linux may undo when undo_retrans is 0). The window cut used to stay."""
    undo = tcb._dsack_undo
    if (tcb.in_recovery and undo is not None and not undo.resent_any
            and not tcb._flight.lost_bytes):
        undo_recovery(tcb, "nothing resent: the segments came late")


def undo_recovery(tcb: Tcb, why: str) -> None:
    """Every segment the last fast recovery resent came back D-SACKed (RFC 3708), or
    it resent none: it was reordering, not loss. Put the window back, unless it has
    grown past that since (Linux tcp_try_undo_dsack, tcp_undo_cwnd_reduction), and end
    the recovery if it still runs."""
    undo, tcb._dsack_undo = tcb._dsack_undo, None
    assert undo is not None
    tcb.counters["tcp_dsack_undo" if undo.resent_any else "tcp_reorder_undo"] += 1
    tcb._note("undo", why)
    if tcb.cc.cwnd < undo.cc_state["cwnd"]:
        tcb.cc.restore(undo.cc_state)
    if tcb.in_recovery:
        tcb.in_recovery = False
        tcb._flight.clear_lost()
    tcb._eifel = None


def is_duplicate_ack(tcb: Tcb, seg: Segment, new_sack: bool) -> bool:
    """RFC 5681 §2 DUPLICATE ACKNOWLEDGMENT (RFC 6675 §2: or one with new SACK data)."""
    if seg.ack != tcb.snd_una or tcb.snd_una == tcb.snd_nxt:
        return False
    if seg.flags & (SYN | FIN):
        return False
    if new_sack:
        return True  # RFC 6675 §2: new SACK information, even on a segment with data
    if seg.payload:
        return False
    # Unchanged window; a D-SACK (old data) brings no new SACK information, so a
    # duplicate of a spurious retransmission does not feed a retransmission storm.
    return not seg.opts.sack and (seg.wnd << tcb.snd_wscale) == tcb.snd_wnd


def on_duplicate_ack(tcb: Tcb, now: float) -> None:
    tcb._dupacks += 1
    if uses_rack(tcb):
        return  # RACK, not a count of duplicates, says what is lost (`detect_loss`)
    if tcb.in_recovery:
        if tcb.sack_ok:
            mark_lost(tcb)
        else:
            tcb.cc.cwnd += tcb.snd_mss  # RFC 6582 §3.2 step 4: inflate
        return
    sack_loss = tcb.sack_ok and tcb.scoreboard.lost_edge(tcb.snd_mss) is not None
    if tcb._dupacks < DUP_THRESH and not sack_loss:
        return
    # RFC 6582 §3.2 step 2, RFC 6675 §5.1: no new recovery until everything sent
    # before the last one (or the last timeout) is acknowledged.
    if seq.lt(tcb.snd_una, tcb._recover):
        return
    enter_recovery(tcb, now, f"{tcb._dupacks} duplicate ACKs")
    # RFC 6675 §5 (4.3) / RFC 5681 §3.2 step 2: resend the first unacknowledged segment,
    # whatever cwnd says.
    tcb._flight.lose_range(tcb.snd_una, seq.add(tcb.snd_una, output.mss_payload(tcb)))
    if tcb.sack_ok:
        mark_lost(tcb)
    else:
        tcb.cc.cwnd = tcb.cc.ssthresh + DUP_THRESH * tcb.snd_mss  # RFC 6582 step 2


def enter_recovery(tcb: Tcb, now: float, cause: str) -> None:
    """Fast recovery begins (RFC 6582 §3.2 step 2, RFC 6675 §5, RFC 8985 §6.3): the
    window is reduced (RFC 6937 spreads the reduction), and the first retransmission
    goes whatever the window says."""
    flight = seq.sub(tcb.snd_nxt, tcb.snd_una)
    if tcb.ts_ok:
        # RFC 3522: the first ACK that covers the retransmission tells whether the
        # segment was lost or only overtaken (reordering); keep what to undo.
        tcb._eifel = Eifel(tcb.snd_una, tcb.cc.snapshot(), timeout=False)
    if tcb.sack_ok:
        tcb._dsack_undo = DsackUndo(tcb.snd_una, tcb.cc.snapshot())
    tcb.in_recovery = True
    tcb._recover = tcb.snd_nxt
    tcb._high_rxt = tcb.snd_una
    tcb.cc.on_loss(flight, now)
    tcb._prr.start(flight)
    tcb._tlp = None  # recovery takes over from a probe (Linux tcp_enter_recovery)
    tcb.counters["tcp_fast_retransmits"] += 1
    tcb.retransmits += 1
    tcb._force_one = True
    tcb._note("fast_recovery", cause)


def uses_rack(tcb: Tcb) -> bool:
    """RACK-TLP needs SACK; with timestamps it can also tell which copy of a
    retransmitted segment an ACK is for. Without them RFC 6675 stays in charge."""
    return tcb.sack_ok and tcb.ts_ok and tcb.config.rack


def echo_older(tcb: Tcb, ts_ecr: int | None, sent_at: float) -> bool:
    """RFC 8985 §6.2 step 1: the ACK echoes a TSval older than a transmission at
    `sent_at` (it is for an earlier copy)."""
    return bool(tcb.ts_ok and ts_ecr and seq.lt(ts_ecr, tcb._ts_now(sent_at)))


def on_sacked(tcb: Tcb, blocks: list[tuple[int, int]], ts_ecr: int | None, now: float) -> None:
    """SACK blocks with news (as `Scoreboard.update` found them): mark what they cover
    in the flight; each segment newly SACKed is delivered, for RACK."""
    rack = tcb._rack if uses_rack(tcb) else None
    for left, right in blocks:
        for entry in tcb._flight.sack(left, right):
            if rack is not None:
                rack.reached(entry[END], entry[RETRANS])
                rack.delivered(entry[SENT_AT], entry[END], entry[RETRANS], now,
                               echo_older(tcb, ts_ecr, entry[SENT_AT]))


def detect_loss(tcb: Tcb, now: float) -> None:
    """RFC 8985 §6.2 RACK_detect_loss_and_arm_timer, after every ACK with SACK news or
    in recovery, and when the reordering timer fires: mark what is lost by now, start
    a fast recovery for it, and come back when more may be."""
    rack = tcb._rack
    recovering = tcb.in_recovery or seq.lt(tcb.snd_una, tcb._recover)
    reo_wnd = rack.reo_wnd(recovering,
                           tcb.scoreboard.sacked > (DUP_THRESH - 1) * tcb.snd_mss,
                           tcb.rtt.srtt)
    marked, timeout = rack.detect(tcb._flight, now, reo_wnd)
    if marked:
        tcb.counters["tcp_rack_lost"] += marked
        if not recovering:
            enter_recovery(tcb, now, f"RACK: {marked} lost")
        else:
            tcb._note("rack_lost", str(marked))
    if timeout > 0:
        # Linux adds TCP_TIMEOUT_MIN (2 jiffies) to this timer: a little late is
        # better than early and again.
        tcb.timers.arm(timers.REORDER, now + timeout + REORDER_SLACK)
    elif tcb.timers.kind == timers.REORDER:
        tcb.timers.arm(timers.RETRANSMIT, now + tcb.rtt.rto)


def mark_lost(tcb: Tcb) -> None:
    """RFC 6675 IsLost: unsacked data below the lost edge and above what was already
    resent in this recovery (HighRxt) is resent."""
    edge = tcb.scoreboard.lost_edge(tcb.snd_mss)
    start = tcb._high_rxt if seq.gt(tcb._high_rxt, tcb.snd_una) else tcb.snd_una
    if edge is not None and seq.lt(start, edge):
        tcb._flight.lose_range(start, edge)

