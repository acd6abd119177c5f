"""Buffers that grow with the connection's needs, within a budget for the whole host.

- Receive side: dynamic right-sizing (Linux tcp_rcv_space_adjust; Fisk and Feng,
  "Dynamic Right-Sizing in TCP"). Once per receiver RTT, the bytes the application read
  in that RTT are what the sender could send in one; the buffer (and so the window) is
  made about twice that, so a window-limited sender can double its rate each RTT, up to
  the connection's maximum (`TcpConfig.rcv_buf_max`, 6 MB as Linux's tcp_rmem[2]).
- Send side (the TCB's `snd_buf_size`, what it accepts before the application is told
  to wait): as Linux's tcp_sndbuf_expand, twice the congestion window, so the sender is
  never short of data to fill it; and, while the peer's window is closed, by what the
  application queued (where Linux would block the writer), so that a peer which writes
  everything before it reads (and an echo between them) does not deadlock with both
  windows at zero. Up to `TcpConfig.snd_buf_max` (4 MB as Linux's tcp_wmem[2]).
- The host's budget (Linux tcp_mem): growth beyond the initial sizes is claimed from
  one pool; once it is spent no buffer grows any more (counted as
  tcp_buffer_growth_denied) and connections keep the sizes they have.

Sizes are limits, not allocations: an idle connection costs nothing more.
"""

from ustack.stats import Counters

DEFAULT_BUDGET = 1 << 30  # bytes of growth beyond the initial sizes, for the whole host


class BufferBudget:
    """The bytes of buffer growth every connection of a host may claim together."""

    __slots__ = ("claimed", "counters", "limit")

    def __init__(self, limit: int = DEFAULT_BUDGET, counters: Counters | None = None) -> None:
        self.limit = limit
        self.claimed = 0
        self.counters = counters if counters is not None else Counters()

    def claim(self, n: int) -> bool:
        """Reserve `n` more bytes; False (counted) when that would pass the limit."""
        if self.claimed + n > self.limit:
            self.counters["tcp_buffer_growth_denied"] += 1
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
        # tcp_rcv_space_adjust: twice what was read, plus room for 16 segments; if the rate
        # grew by a quarter or more, more again in proportion (the sender is in slow start).
        want = 2 * copied + 16 * mss
        if 4 * (copied - space) >= space:
            want += 2 * want * (copied - space) // space
        return want
