"""Buffers that grow with the connection's needs, within a budget for the whole host.

- Receive side: dynamic right-sizing (Linux tcp_rcv_space_adjust; Fisk and Feng,
  "Dynamic Right-Sizing in TCP"). Once per receiver RTT, the bytes the application read
  in that RTT are what the sender could send in one; the buffer (and so the window) is
  made about twice that, so a window-limited sender can double its rate each RTT, up to
  the connection's maximum (`TcpConfig.rcv_buf_max`, 6 MB as Linux's tcp_rmem[2]), and
  no more than the window can express with the scale fixed at the handshake.
- Send side (the TCB's `snd_buf_size`, what it accepts before the application is told
  to wait): as Linux's tcp_sndbuf_expand, twice the congestion window, so the sender is
  never short of data to fill it; and by what the application queued when both ways are
  blocked (the peer's window closed, text waiting for the application, which waits for
  room to write before it reads): where Linux would keep the writer waiting, a peer that
  writes everything before it reads (and an echo between them) would deadlock with both
  windows at zero. Up to `TcpConfig.snd_buf_max` (4 MB as Linux's tcp_wmem[2]).
- The host's budget (Linux tcp_mem): growth beyond the initial sizes is claimed from
  one pool; once it is spent no buffer grows any more (counted as
  tcp_buffer_growth_denied) and connections keep the sizes they have.

Sizes are limits, not allocations: an idle connection costs nothing more.
"""

DEFAULT_BUDGET = 1 << 30  # bytes of growth beyond the initial sizes, for the whole host


class BufferBudget:
    """The bytes of buffer growth every connection of a host may claim together."""

    __slots__ = ("claimed", "limit")

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        self.limit = limit
        self.claimed = 0

    def claim(self, n: int) -> bool:
        """Reserve `n` more bytes; False when that would pass the limit."""
        if self.claimed + n > self.limit:
            return False
        self.claimed += n
        return True

    def release(self, n: int) -> None:
        self.claimed -= n


class ReceiveSpace:
    """The measurements behind receive-buffer autotuning (Linux tcp_sock.rcvq_space and
    rcv_rtt_est), one per connection."""

    __slots__ = ("copied", "rtt", "rtt_seq", "rtt_time", "space", "time")

    def __init__(self, space: int) -> None:
        self.space = space  # bytes read in the last measured RTT (rcvq_space.space)
        self.copied = 0  # bytes read since this measurement began
        self.time = 0.0  # when it began
        self.rtt: float | None = None  # the receiver's RTT estimate (rcv_rtt_est)
        self.rtt_seq: int | None = None  # the advertised right edge being timed ...
        self.rtt_time = 0.0  # ... since when

    def window_reached(self, rcv_adv: int, now: float) -> None:
        """RCV.NXT has reached the right edge that was advertised when timing began: the
        sender took one RTT to fill one window (Linux tcp_rcv_rtt_measure, the variant that
        needs no timestamps). The estimate is the minimum of such samples: a slow or idle
        sender only makes them longer."""
        if self.rtt_seq is not None:
            sample = max(now - self.rtt_time, 0.001)  # the clock may tick in milliseconds
            if self.rtt is None:
                # The first estimate: reading is measured from here, not from the start
                # of the connection (which would count many RTTs' worth as one).
                self.copied, self.time = 0, now
            if self.rtt is None or sample < self.rtt:
                self.rtt = sample
        self.rtt_seq, self.rtt_time = rcv_adv, now

    def on_read(self, n: int, now: float, mss: int) -> int | None:
        """The application read `n` bytes: once per RTT, the buffer size the rate of reading
        asks for, if it grew (else None)."""
        self.copied += n
        rtt = self.rtt
        if rtt is None or now - self.time < rtt:
            return None
        copied, space = self.copied, self.space
        self.copied, self.time = 0, now
        if copied <= space:
            return None
        self.space = copied
        # tcp_rcv_space_adjust (Linux 4.19 and later): twice what was read (against losses),
        # plus room for 16 segments, plus twice that again in the proportion the rate grew
        # (a sender in slow start doubles per RTT, and our ACK opens the next RTT's window).
        want = 2 * copied + 16 * mss
        return want + 2 * (want * (copied - space) // space)
