"""What a TCB sends (RFC 9293 §3.10.4 SEND's effect, §3.8.6 windows): retransmissions
first, then new data and the FIN, within the peer's window (MUST-17) and what congestion
control and pacing allow (MUST-19), Nagle (MUST-42) and sender SWS avoidance; the
segments themselves with their options, window field and SACK blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import congestion, pacing, rcvwnd, seq, timeouts, timewait, tlp
from ustack.tcp.options import TIMESTAMP_SPACE, Options
from ustack.tcp.segment import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, Segment
from ustack.tcp.states import State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb


def poll(tcb: Tcb, now: float) -> list[Segment]:
    """`Tcb.poll`: what is owed now, in order: the outbox (the ACKs and RSTs that
    arriving segments drew at once), a SYN, data, a probe, or an ACK still owed (MUST-58:
    one for everything processed since the last)."""
    tcb._now = now
    out = tcb._outbox
    tcb._outbox = []
    state = tcb.state
    if state is State.CLOSED:
        tcb._ack_now = tcb._ack_delayed = tcb._probe_owed = False
        return out
    if state is State.SYN_SENT or state is State.SYN_RCVD:
        if tcb._syn_owed:
            tcb._syn_owed = False
            transmit(tcb, out, SYN if state is State.SYN_SENT else SYN | ACK, tcb.iss,
                     b"", now)
    elif state is State.TIME_WAIT:
        if tcb._ack_now and tcb.time_wait is not None:
            out.append(timewait.ack(tcb.time_wait, now))  # of the peer's FIN
        tcb._ack_now = tcb._ack_delayed = tcb._probe_owed = False
        timeouts.rearm(tcb, now)
        return out
    elif state is not State.FIN_WAIT_2:
        send_text(tcb, out, now)
    if tcb._probe_owed:
        tcb._probe_owed = False
        out.append(segment(tcb, ACK, seq_no=seq.sub(tcb.snd_una, 1)))
    elif tcb._ack_now:
        # Every segment built carries every ACK owed (`acked_all`): one still owed was
        # owed after them (a window opened by a read, a duplicate to report, a FIN).
        last = out[-1] if out else None
        if (last is not None and last.flags == ACK and not last.payload
                and last.ack == tcb.rcv_nxt and last.seq == tcb.snd_nxt
                and tcb._dsack is None):
            # The ACK that data drew before the application read it (the driver hands
            # data over, then polls) has not left yet: it takes the window as it is now
            # rather than a second ACK following it for the same RCV.NXT (MUST-58).
            last.wnd = rcvwnd.window(tcb)
            acked_all(tcb)
        else:
            out.append(segment(tcb, ACK, seq_no=tcb.snd_nxt))
    timeouts.rearm(tcb, now)
    return out


def unacked_text(tcb: Tcb) -> bool:
    """Whether data (not only the FIN) is still unacknowledged."""
    return seq.lt(tcb.snd_una, seq.add(tcb._snd_buf_seq, len(tcb._snd_buf)))


def unsent(tcb: Tcb) -> int:
    """Data bytes never sent yet (0 once SND.NXT has passed the FIN)."""
    return max(0, len(tcb._snd_buf) - seq.sub(tcb.snd_nxt, tcb._snd_buf_seq))


def send_text(tcb: Tcb, out: list[Segment], now: float) -> None:
    """Retransmissions first, then new data and the FIN: within SND.WND (MUST-17) and
    within what congestion control allows in the network (MUST-19, RFC 6675 pipe),
    paced, and no more per wake-up than `pacing.wakeup_cap` (see `release_allowance`)."""
    tcb._pace_wait = False
    buf_end = seq.add(tcb._snd_buf_seq, len(tcb._snd_buf))
    if tcb._tlp_owed:
        tlp.send_probe(tcb, out, now, buf_end)
    lost = tcb._flight.lost_bytes
    if not lost and tcb.snd_nxt == seq.add(buf_end, tcb._fin_queued):
        return  # all sent (the FIN too, if queued), nothing to resend: the common case
    wnd_end = seq.add(tcb.snd_una, tcb.snd_wnd)
    max_payload = mss_payload(tcb)
    # TSO: one segment of whole MSS-sized pieces, which the device cuts apart.
    burst = max_payload
    if tcb.tso_max > max_payload:
        burst = tcb.tso_max // max_payload * max_payload
    cap = pacing.wakeup_cap(burst)
    pace_rate = pacing_rate(tcb)
    if pace_rate is not None and not pacing.worth_pacing(pace_rate, cap):
        pace_rate = None
    allowance, base = release_allowance(tcb, pace_rate, now, max_payload, cap)
    if not allowance:
        return  # too early for the next release: the pacing timer comes back
    tcb._pace_backlog = False
    spent = 0
    while lost:
        # What is presumed lost goes first, lowest first, never what the peer SACKed
        # (RFC 6675 NextSeg rule 1; Linux tcp_xmit_retransmit_queue).
        start, end = tcb._flight.next_lost(max_payload)
        if not tcb._force_one and (tcb.cc.cwnd - pipe(tcb) < max_payload
                                   or not seq.lt(start, wnd_end)):
            break
        if not tcb._force_one and spent >= allowance:
            tcb._pace_wait = tcb._pace_backlog = True
            break
        tcb._force_one = False
        spent += retransmit(tcb, out, start, seq.sub(end, start), buf_end, now)
        lost = tcb._flight.lost_bytes
    tcb._force_one = False  # it only ever forces a retransmission
    if not tcb._pace_wait:
        spent = send_new(tcb, out, now, buf_end, wnd_end, max_payload, burst, allowance,
                         spent)
    limited = tcb.cc.cwnd - pipe(tcb) < max_payload
    if spent or limited:
        validate_cwnd(tcb, limited)
    if pace_rate is not None and spent:
        # The next release waits until these bytes have had their time at the rate.
        tcb._pace_at = base + spent / pace_rate
    elif tcb._pace_wait:
        # Not pacing, but the wake-up's share is spent: back on the loop's next turn.
        tcb._pace_at = now + pacing.NEXT_TURN


def validate_cwnd(tcb: Tcb, limited: bool) -> None:
    """After a send: remember, for the current window of data, whether the congestion
    window held sending back, else the most that was in flight (Linux
    tcp_cwnd_validate, which tracks the strongest signal of the window being used)."""
    flight = seq.sub(tcb.snd_nxt, tcb.snd_una)
    if (limited or not seq.lt(tcb.snd_una, tcb._cwnd_usage_seq)
            or (not tcb._cwnd_limited and flight > tcb._max_flight)):
        tcb._cwnd_limited = limited
        tcb._max_flight = flight
        tcb._cwnd_usage_seq = tcb.snd_nxt


def is_cwnd_limited(tcb: Tcb) -> bool:
    """Whether the congestion window may grow (Linux tcp_is_cwnd_limited; RFC 9438
    §5.8, RFC 7661): it held sending back in the current window, or, in slow start,
    it is less than twice what was in flight. A sender limited by the receiver's
    window, the application or pacing does not learn from its ACKs that the path
    could take more: without this its window grows without bound (to tens of
    thousands of segments in a long rwnd-limited transfer), its pacing rate with it,
    and pacing stops meaning anything."""
    if tcb._cwnd_limited:
        return True
    cc = tcb.cc
    return cc.cwnd < cc.ssthresh and cc.cwnd < 2 * tcb._max_flight


def pacing_rate(tcb: Tcb) -> float | None:
    """The pacing rate in bytes/s, or None when not pacing (switched off, no RTT yet,
    or the initial window still going out)."""
    srtt = tcb.rtt.srtt
    if (not tcb.config.pacing or srtt is None or seq.sub(tcb.snd_nxt, tcb.iss)
            < congestion.INITIAL_WINDOW_SEGMENTS * tcb.snd_mss + 1):  # + the SYN
        return None
    cc = tcb.cc
    return pacing.rate(cc.cwnd, seq.sub(tcb.snd_nxt, tcb.snd_una), cc.ssthresh, srtt)


def release_allowance(tcb: Tcb, pace_rate: float | None, now: float, max_payload: int,
                      cap: int) -> tuple[int, float]:
    """The bytes this wake-up may hand the device (at most `cap`) and the time they
    count from (`pacing.release`); 0 (and the pacing timer armed) if the next paced
    release is not due (or, unpaced, its share spent until the loop's next turn). A
    forced retransmission is never held."""
    if now < tcb._pace_at and not tcb._force_one:
        tcb._pace_wait = True
        return 0, now
    if pace_rate is None:
        return cap, now
    return pacing.release(tcb._pace_at, now, pace_rate, max_payload, cap,
                          tcb._pace_backlog)


def send_new(tcb: Tcb, out: list[Segment], now: float, buf_end: int, wnd_end: int,
             max_payload: int, burst: int, allowance: int, spent: int) -> int:
    """New data and the FIN, up to `allowance` bytes this wake-up; the bytes spent."""
    budget = tcb.cc.cwnd - pipe(tcb)
    wnd = -1  # one window field and one option list serve the whole burst: nothing
    opts = NO_OPTIONS  # that shapes them changes while it is built
    while True:
        cursor = tcb.snd_nxt
        pending = seq.sub(buf_end, cursor) if seq.lt(cursor, buf_end) else 0
        if not pending:
            if tcb._fin_queued and cursor == buf_end:
                transmit(tcb, out, FIN | ACK, cursor, b"", now)
            return spent
        if spent >= allowance:
            tcb._pace_wait = tcb._pace_backlog = True
            return spent
        room = seq.sub(wnd_end, cursor) if seq.lt(cursor, wnd_end) else 0
        n = min(burst, pending, room, max(0, budget), max(allowance - spent, max_payload))
        if n <= 0:
            return spent
        if n < max_payload and hold_small(tcb, n, pending):
            return spent
        tail = n % max_payload
        if n > max_payload and tail and (
                n < pending or (not tcb.nodelay and not tcb._fin_queued)):
            # Whole pieces only: no small piece in mid-stream (sender SWS,
            # §3.8.6.2.1), and a small last piece waits as Nagle would make it wait
            # behind the pieces now going out (§3.7.4; Linux tcp_mss_split_point).
            n -= tail
        flags = ACK
        if n == pending:
            flags |= PSH  # MUST-61: push when the buffer empties
            if tcb._fin_queued:
                flags |= FIN
        dsack = False
        if wnd < 0:
            wnd = rcvwnd.window(tcb)
            dsack = tcb._dsack is not None
            opts = options(tcb, ACK)
            acked_all(tcb)  # this burst carries every ACK we owed
        seg = Segment(tcb.local_port, tcb.remote_port, cursor, tcb.rcv_nxt, flags, wnd,
                      payload(tcb, cursor, n), opts)
        if n > max_payload:
            seg.gso = max_payload
        sent(tcb, out, seg, now)
        if dsack:
            opts = options(tcb, ACK)  # a D-SACK block goes in one segment only
        spent += n
        # Recovery state makes the pipe more than a sum: count it again then.
        budget = (budget - n if not tcb._flight.lost_bytes
                  else tcb.cc.cwnd - pipe(tcb))


def retransmit(tcb: Tcb, out: list[Segment], start: int, n: int, buf_end: int,
               now: float) -> int:
    """Send [start, start + n) again; the FIN rides along if it is next. Returns the
    bytes sent."""
    data = min(n, seq.sub(buf_end, start)) if seq.lt(start, buf_end) else 0
    flags = ACK
    end = seq.add(start, data)
    if tcb._fin_queued and end == buf_end and seq.lt(end, tcb.snd_nxt):
        flags |= FIN  # the FIN was sent before: it is lost with the data
    if data and end == buf_end:
        flags |= PSH
    if not data and not flags & FIN:
        tcb._flight.resent(start, seq.add(start, n), now)  # nothing there to send
        return 0
    transmit(tcb, out, flags, start, payload(tcb, start, data), now)
    if tcb._eifel is not None and tcb.ts_ok:
        tcb._eifel.on_retransmit(start, tcb._ts_now(now))
    if tcb._dsack_undo is not None and tcb.in_recovery:
        tcb._dsack_undo.on_retransmit()
    end = seq.add(end, 1 if flags & FIN else 0)
    if seq.gt(end, tcb._high_rxt):
        tcb._high_rxt = end
    return data


def payload(tcb: Tcb, start: int, n: int) -> bytes | memoryview:
    offset = seq.sub(start, tcb._snd_buf_seq)
    return tcb._snd_buf.slice(offset, n)  # a view of the user's bytes, mostly


def pipe(tcb: Tcb) -> int:
    """RFC 6675 §4 SetPipe, in effect: bytes sent and still believed in the network,
    i.e. outstanding minus SACKed minus what is presumed lost and not yet resent
    (Linux tcp_packets_in_flight, in bytes)."""
    flight = seq.sub(tcb.snd_nxt, tcb.snd_una)
    return max(0, flight - tcb.scoreboard.sacked - tcb._flight.lost_bytes)


def hold_small(tcb: Tcb, n: int, pending: int) -> bool:
    """Whether a new segment of `n` < MSS bytes should wait for an ACK."""
    if tcb.snd_una == tcb.snd_nxt:
        return False  # nothing in flight: no ACK is coming to trigger us
    if n < pending:
        # Window-limited: sender SWS avoidance (§3.8.6.2.1), send at least Fs = 1/2
        # of the largest window the peer offered.
        return n < tcb.max_snd_wnd // 2
    # All that is queued fits: Nagle (§3.7.4) unless no-delay, or the FIN goes too.
    return not tcb.nodelay and not tcb._fin_queued


def transmit(tcb: Tcb, out: list[Segment], flags: int, seq_no: int,
             payload: bytes | memoryview, now: float) -> None:
    sent(tcb, out, segment(tcb, flags, seq_no=seq_no, payload=payload), now)


def sent(tcb: Tcb, out: list[Segment], seg: Segment, now: float) -> None:
    """`seg` goes out: SND.NXT advances past new data; the flight records when."""
    start, end = seg.seq, seq.add(seg.seq, seg.seg_len)
    nxt = tcb.snd_nxt
    if seq.gt(end, nxt):
        if seq.lt(start, nxt):  # old data and new in one segment
            tcb._flight.resent(start, nxt, now)
            start = nxt
        tcb._flight.sent(start, end, now)
        tcb.snd_nxt = end
        tcb._tlp_due = True
    else:
        tcb._flight.resent(start, end, now)
        tcb.counters["tcp_retransmitted_segments"] += 1
    if tcb.in_recovery:
        tcb._prr.sent(seg.seg_len)
    out.append(seg)


def segment(tcb: Tcb, flags: int, *, seq_no: int, payload: bytes | memoryview = b"") -> Segment:
    if flags & RST:
        ack = tcb.rcv_nxt if flags & ACK else 0
        return Segment(tcb.local_port, tcb.remote_port, seq_no, ack, flags, 0)
    if tcb.state is not State.SYN_SENT:
        flags |= ACK
    seg = Segment(tcb.local_port, tcb.remote_port, seq_no, tcb.rcv_nxt if flags & ACK
                  else 0, flags, rcvwnd.window(tcb, syn=bool(flags & SYN)), payload,
                  options(tcb, flags))
    if flags & ACK:
        acked_all(tcb)  # this segment carries every ACK we owed
    return seg


def acked_all(tcb: Tcb) -> None:
    tcb.last_ack_sent = tcb.rcv_nxt
    tcb._ack_now = tcb._ack_delayed = False
    tcb._full_segments_unacked = 0
    tcb.timers.delack_at = None


def options(tcb: Tcb, flags: int) -> Options:
    opts = Options()
    if flags & SYN:
        # RFC 9293 §3.7.1 (MUST-14) MSS; RFC 7323 §2.2 WS and RFC 2018 §2 SACK-permitted
        # in a SYN-ACK only if the SYN had them (our SYN offers what is configured).
        opts.mss = tcb.rcv_mss
        syn_ack = bool(flags & ACK)
        if tcb.wscale_ok if syn_ack else tcb.config.window_scaling:
            opts.wscale = tcb.rcv_wscale
        opts.sack_permitted = tcb.sack_ok if syn_ack else tcb.config.sack
        if tcb.ts_ok if syn_ack else tcb.config.timestamps:
            opts.ts_val, opts.ts_ecr = tcb._ts_now(tcb._now), tcb.ts_recent
        return opts
    if tcb.ts_ok:
        opts.ts_val, opts.ts_ecr = tcb._ts_now(tcb._now), tcb.ts_recent
    if tcb.sack_ok and (tcb._ooo or tcb._dsack is not None):
        opts.sack = sack_blocks(tcb)
        if tcb._dsack is not None:
            tcb._dsack = None  # RFC 2883 §4: in one segment only (Linux too)
            tcb.counters["tcp_dsack_sent"] += 1
    return opts


def sack_blocks(tcb: Tcb) -> tuple[tuple[int, int], ...]:
    """RFC 2018 §3-4: up to 4 blocks, 3 beside a timestamp, the newest first; RFC 2883:
    a duplicate range first of all."""
    limit = 3 if tcb.ts_ok else 4
    if tcb._dsack is None:
        return tuple(tcb._ooo.sack_blocks(limit))
    return (tcb._dsack, *tcb._ooo.sack_blocks(limit - 1))


def mss_payload(tcb: Tcb) -> int:
    """Data per segment: the MSS less the options we send (RFC 9293 §3.7.1)."""
    return tcb.snd_mss - option_space(tcb)


def option_space(tcb: Tcb) -> int:
    space = TIMESTAMP_SPACE if tcb.ts_ok else 0
    if tcb.sack_ok and (tcb._ooo or tcb._dsack is not None):
        space += 4 + 8 * len(sack_blocks(tcb))
    return space

