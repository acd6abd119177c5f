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
