"""Proportional Rate Reduction (RFC 6937; Linux tcp_cwnd_reduction): how much to send on
each ACK of a fast recovery.

Rather than cut the window to ssthresh at once (a silence of half an RTT, then a burst)
or inflate it per duplicate (RFC 6582), PRR spreads the reduction over the recovery: while
more than ssthresh is in the network it sends in proportion to what was delivered,
ssthresh / RecoverFS of it; below ssthresh it grows back towards it like slow start, but
no faster than what was delivered (the slow start reduction bound, PRR-SSRB).
"""


class Prr:
    __slots__ = ("delivered", "out", "recover_fs")

    def __init__(self) -> None:
        self.recover_fs = 0  # RecoverFS: bytes in flight when the recovery began
        self.delivered = 0  # prr_delivered: bytes delivered to the peer since then
        self.out = 0  # prr_out: bytes sent since then

    def start(self, flight: int) -> None:
        """Fast recovery begins (RFC 6937 §3, "on entering recovery")."""
        self.recover_fs = max(flight, 1)
        self.delivered = 0
        self.out = 0

    def on_ack(self, delivered: int, pipe: int, ssthresh: int, mss: int) -> int:
        """An ACK during recovery delivered `delivered` bytes (the advance of SND.UNA plus
        the change in SACKed bytes); `pipe` is what is in the network after it. Returns
        the congestion window: pipe + sndcnt (RFC 6937 §3, with PRR-SSRB)."""
        self.delivered += delivered
        if pipe > ssthresh:
            # Proportional: CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
            sndcnt = -(-self.delivered * ssthresh // self.recover_fs) - self.out
        else:
            # PRR-SSRB: towards ssthresh, at most one MSS more than was delivered.
            sndcnt = min(ssthresh - pipe, max(self.delivered - self.out, delivered) + mss)
        return pipe + max(sndcnt, 0)

    def sent(self, n: int) -> None:
        """`n` bytes (new or retransmitted) went out during the recovery."""
        self.out += n
