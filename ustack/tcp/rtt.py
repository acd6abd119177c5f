"""Retransmission timeout estimator (RFC 6298), with Karn's algorithm (MUST-18)."""

INITIAL_RTO = 1.0  # RFC 6298 (2.1)
# RFC 6298 (2.4) says 1 s; like Linux (TCP_RTO_MIN) we allow 200 ms once measured,
# a stated deviation: on a TUN link a lost segment would otherwise cost a full second.
MIN_RTO = 0.2
MAX_RTO = 60.0  # RFC 6298 (2.5): a maximum of at least 60 s may be placed on RTO
CLOCK_G = 0.001  # clock granularity G: uvloop timers tick in 1 ms
ALPHA = 1 / 8
BETA = 1 / 4
K = 4


class RttEstimator:
    __slots__ = ("rto", "rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO

    def sample(self, r: float) -> None:
        """A new RTT measurement R from a segment that was not retransmitted (Karn)."""
        if self.srtt is None:
            # RFC 6298 (2.2)
            self.srtt = r
            self.rttvar = r / 2
        else:
            # RFC 6298 (2.3): RTTVAR first, using the old SRTT.
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - r)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * r
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + max(CLOCK_G, K * self.rttvar)))

    def backoff(self) -> None:
        """RFC 6298 (5.5): the timer expired, double RTO (up to the maximum)."""
        self.rto = min(MAX_RTO, self.rto * 2)

    def undo_backoff(self) -> None:
        """The timeout was spurious (RFC 4015): RTO from the estimate again, not doubled."""
        if self.srtt is not None:
            self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + max(CLOCK_G, K * self.rttvar)))
