"""RACK, loss detection by time (RFC 8985 §6; Linux tcp_recovery.c).

A segment is lost when a segment sent after it has been delivered (ACKed or SACKed) and
more than one RTT plus a reordering window has passed since it was sent. Unlike counting
duplicate ACKs (RFC 6675), this also finds a lost retransmission, a loss in a flight too
short for three duplicates, and tolerates reordering up to the window. The window starts
at a quarter of the minimum RTT, is 0 in recovery or once DupThresh segments are SACKed
while no reordering has been seen, and widens by a quarter of the minimum RTT for each
round trip that brings a D-SACK (RFC 8985 §6.2 step 4), for 16 recoveries.

Sans-IO: the TCB feeds it delivered segments and asks which entries of its flight
(`ustack.tcp.flight`) are lost now, and when to look again.
"""

from ustack.tcp import seq
from ustack.tcp.flight import END, LOST, RETRANS, SACKED, SENT_AT, Flight

REO_WND_PERSIST = 16  # recoveries a widened window lasts (RFC 8985 §6.2 step 4)
MAX_REO_WND_MULT = 255  # Linux keeps the steps in a byte
_DUE = 1e-6  # the clock's resolution: a segment due within it is due now


def sent_after(t1: float, end1: int, t2: float, end2: int) -> bool:
    """RFC 8985 §6.2 RACK_sent_after: sent later, or at the same time but further on (the
    segments of one burst share a send time)."""
    return t1 > t2 or (t1 == t2 and seq.gt(end1, end2))


class Rack:
    __slots__ = ("dsack_round", "end_seq", "fack", "min_rtt", "reo_wnd_mult",
                 "reo_wnd_persist", "reordering_seen", "rtt", "xmit_ts")

    def __init__(self) -> None:
        self.xmit_ts = -1.0  # RACK.xmit_ts: send time of the newest delivered segment
        self.end_seq = 0  # RACK.end_seq: its end
        self.rtt = 0.0  # RACK.rtt: the RTT it gave
        self.min_rtt = float("inf")  # RACK.min_RTT
        self.fack: int | None = None  # RACK.fack: the highest delivered sequence
        self.reordering_seen = False  # RACK.reordering_seen
        self.reo_wnd_mult = 1  # RACK.reo_wnd_mult
        self.reo_wnd_persist = 0  # RACK.reo_wnd_persist
        self.dsack_round: int | None = None  # RACK.dsack_round

    def reached(self, end: int, retransmitted: bool) -> None:
        """Data up to `end` was delivered (RFC 8985 §6.2 step 2): below the highest
        delivered so far, and never retransmitted, it was overtaken on the way."""
        if self.fack is None or seq.gt(end, self.fack):
            self.fack = end
        elif not retransmitted and seq.lt(end, self.fack):
            self.reordering_seen = True

    def delivered(self, sent_at: float, end: int, retransmitted: bool, now: float,
                  echo_older: bool) -> None:
        """A segment [.., end) sent at `sent_at` was ACKed or SACKed (RFC 8985 §6.2 step
        1; Linux tcp_rack_advance). `echo_older`: the ACK's TSecr predates the last
        transmission, so it is for an earlier copy."""
        rtt = now - sent_at
        if retransmitted and (echo_older or rtt < self.min_rtt):
            return  # the ACK may be for the original: no sample (Karn's rule, for RACK)
        self.rtt = rtt
        if rtt < self.min_rtt:
            self.min_rtt = rtt
        if sent_after(sent_at, end, self.xmit_ts, self.end_seq):
            self.xmit_ts = sent_at
            self.end_seq = end

    def on_dsack(self, snd_una: int, snd_nxt: int) -> bool:
        """A D-SACK arrived: widen the window, once per round trip (RFC 8985 §6.2 step 4).
        True if it widened."""
        if self.dsack_round is not None and seq.ge(snd_una, self.dsack_round):
            self.dsack_round = None
        if self.dsack_round is not None:
            return False
        self.dsack_round = snd_nxt
        self.reo_wnd_mult = min(self.reo_wnd_mult + 1, MAX_REO_WND_MULT)
        self.reo_wnd_persist = REO_WND_PERSIST
        return True

    def on_recovery_exit(self) -> bool:
        """A recovery ended: after 16 without a D-SACK the window is narrow again. True if
        it narrowed."""
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0 and self.reo_wnd_mult > 1:
            self.reo_wnd_mult = 1
            return True
        return False

    def reo_wnd(self, recovering: bool, dupthresh_sacked: bool, srtt: float | None) -> float:
        """RFC 8985 §6.2 RACK_update_reo_wnd, the reordering window in seconds."""
        if not self.reordering_seen and (recovering or dupthresh_sacked):
            return 0.0
        if self.min_rtt == float("inf"):
            return 0.0
        wnd = self.reo_wnd_mult * self.min_rtt / 4
        return wnd if srtt is None else min(wnd, srtt)

    def detect(self, flight: Flight, now: float, reo_wnd: float) -> tuple[int, float]:
        """RFC 8985 §6.2 step 5, RACK_detect_loss: mark lost each segment sent before the
        newest delivered one and older than RACK.rtt + reo_wnd. Returns how many were
        newly marked and, if others will be once their time is up, in how long (else 0).
        A retransmitted segment is judged by its last transmission: a lost retransmission
        is found too."""
        if self.xmit_ts < 0:
            return 0, 0.0
        xmit_ts, end_seq = self.xmit_ts, self.end_seq
        limit = self.rtt + reo_wnd
        marked = 0
        timeout = 0.0
        for entry in flight:
            if entry[SACKED] or entry[LOST]:
                continue
            sent_at = entry[SENT_AT]
            if not sent_after(xmit_ts, end_seq, sent_at, entry[END]):
                if not entry[RETRANS]:
                    break  # sent after the newest delivered: so was every later original
                continue
            remaining = sent_at + limit - now
            if remaining <= _DUE:
                marked += flight.lose(entry)
            elif remaining > timeout:
                timeout = remaining  # RFC 8985 takes the largest (Linux too)
        return marked, timeout
