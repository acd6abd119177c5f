"""Congestion control (RFC 5681): slow start, congestion avoidance, reaction to RTO.

Fast retransmit/recovery and CUBIC come with the loss-recovery work; this is the
part every sender MUST have (MUST-19).
"""

INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928


class Reno:
    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = 1 << 30  # RFC 5681 §3.1: "arbitrarily high"

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss

    def on_ack(self, acked: int) -> None:
        if self.cwnd < self.ssthresh:
            # RFC 5681 (2): slow start, growth capped at one SMSS per ACK.
            self.cwnd += min(acked, self.mss)
        else:
            # RFC 5681 (3): congestion avoidance, about one SMSS per RTT.
            self.cwnd += max(1, self.mss * self.mss // self.cwnd)

    def on_rto(self, flight_size: int) -> None:
        # RFC 5681 (4) and §3.1: ssthresh to half the flight, cwnd to one segment.
        self.ssthresh = max(flight_size // 2, 2 * self.mss)
        self.cwnd = self.mss
