"""Tail loss probes (RFC 8985 §7; Linux tcp_schedule_loss_probe, tcp_send_loss_probe,
tcp_process_tlp_ack).

When the last segments of a flight are lost, no ACK comes back to show it, and without a
probe the sender waits for the retransmission timer, at least 200 ms and often much more.
About two RTTs after the last transmission, a probe (one new segment, or the last one
again) draws an ACK whose SACK blocks let RACK find the loss and recover fast. One probe
per episode; the episode ends when an ACK covers the probe, and shows whether the probe
repaired a loss (then the congestion window is reduced, as for any loss) or the original
arrived too (a D-SACK of the probe, or a pure duplicate ACK).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import output, recovery, seq
from ustack.tcp.segment import ACK, FIN, PSH, Segment
from ustack.tcp.states import State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

# Where a tail loss probe may go: synchronized, with our data or FIN possibly in flight.
PROBING = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING,
                     State.LAST_ACK})
WORST_CASE_DELAYED_ACK = 0.2  # RFC 8985 §7.2 WCDelAckT
NO_RTT_PTO = 1.0  # RFC 8985 §7.2: before the first RTT sample


def probe_timeout(srtt: float | None, flight: int, mss: int, rto: float) -> float:
    """RFC 8985 §7.2 TLP_calc_PTO: two smoothed RTTs, plus the peer's worst-case delayed
    ACK when one segment is in flight (its ACK may be held), never beyond the RTO."""
    if srtt is None:
        pto = NO_RTT_PTO
    else:
        pto = 2 * srtt
        if flight <= mss:
            pto += WORST_CASE_DELAYED_ACK
    return min(pto, rto)


class Episode:
    """The probe sent and not yet judged: TLP.end_seq and TLP.is_retrans."""

    __slots__ = ("end_seq", "is_retrans")

    def __init__(self, end_seq: int, is_retrans: bool) -> None:
        self.end_seq = end_seq
        self.is_retrans = is_retrans


def timeout_for(tcb: Tcb) -> float | None:
    """RFC 8985 §7.2: the time to the tail loss probe, or None if none may go: only
    with RACK, in the open state (not in a recovery, nor a timeout's), with data in
    flight, nothing presumed lost, and no probe of an earlier episode unjudged."""
    if (not recovery.uses_rack(tcb) or tcb.in_recovery or tcb._tlp is not None
            or tcb.state not in PROBING or tcb.snd_una == tcb.snd_nxt
            or seq.lt(tcb.snd_una, tcb._recover) or tcb._flight.lost_bytes):
        return None
    return probe_timeout(tcb.rtt.srtt, seq.sub(tcb.snd_nxt, tcb.snd_una),
                         tcb.snd_mss, tcb.rtt.rto)


def send_probe(tcb: Tcb, out: list[Segment], now: float, buf_end: int) -> None:
    """RFC 8985 §7.3 TLP_send_probe: one new segment if the window allows it, else the
    last segment again; the congestion window is not consulted or changed."""
    tcb._tlp_owed = False
    if tcb.snd_una == tcb.snd_nxt:
        return
    max_payload = output.mss_payload(tcb)
    wnd_end = seq.add(tcb.snd_una, tcb.snd_wnd)
    pending = seq.sub(buf_end, tcb.snd_nxt) if seq.lt(tcb.snd_nxt, buf_end) else 0
    room = seq.sub(wnd_end, tcb.snd_nxt) if seq.lt(tcb.snd_nxt, wnd_end) else 0
    if pending and room:
        n = min(max_payload, pending, room)
        flags = ACK
        if n == pending:
            flags |= PSH | (FIN if tcb._fin_queued else 0)
        output.transmit(tcb, out, flags, tcb.snd_nxt,
                        output.payload(tcb, tcb.snd_nxt, n), now)
        is_retrans = False
    else:
        end = tcb.snd_nxt
        start = seq.sub(end, max_payload + (1 if tcb._fin_sent() else 0))
        if seq.lt(start, tcb.snd_una):
            start = tcb.snd_una
        output.retransmit(tcb, out, start, seq.sub(end, start), buf_end, now)
        is_retrans = True
    tcb._note("loss_probe", "the last segment again" if is_retrans else "new data")
    tcb._tlp = Episode(tcb.snd_nxt, is_retrans)
    tcb._tlp_due = False  # the probe itself does not rearm the probe timer
    tcb.counters["tcp_tlp_probes"] += 1


def judge(tcb: Tcb, seg: Segment, dsack: bool, news: bool) -> None:
    """RFC 8985 §7.4.2 (as Linux tcp_process_tlp_ack): once an ACK covers the probe,
    say whether it repaired a loss. A probe of new data needs no judging; a D-SACK of
    the probe, or a pure duplicate, says the original arrived too; an ACK beyond it
    without either says the probe repaired a loss, which the window pays for."""
    episode = tcb._tlp
    if episode is None or seq.lt(seg.ack, episode.end_seq):
        return
    if not episode.is_retrans or dsack:
        tcb._tlp = None
    elif seq.gt(seg.ack, episode.end_seq):
        tcb._tlp = None
        tcb.counters["tcp_tlp_recovered"] += 1
        tcb._note("probe_repaired")
        flight = seq.sub(tcb.snd_nxt, tcb.snd_una)
        tcb.cc.on_loss(flight, tcb._now)  # Linux: CWR, straight to ssthresh
        tcb.cc.on_recovery_exit(flight)
    elif not news and not seg.payload:
        tcb._tlp = None
