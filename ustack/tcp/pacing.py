"""Pacing: a sender spreads its window over the round trip instead of writing it back to
back whenever an ACK opens it (Linux's internal pacing, tcp_update_pacing_rate and
tcp_tso_autosize; the fq qdisc's job when there is one).

- The rate is `ratio` × cwnd / SRTT: 2 in slow start (while cwnd < ssthresh / 2, so the
  window can still double), 1.2 in congestion avoidance (sysctls tcp_pacing_ss_ratio
  and tcp_pacing_ca_ratio).
- Each release hands the device at most max(2 segments, rate × 1 ms) (tcp_tso_autosize's
  1 ms of data), and the next release waits until those bytes have had their time at the
  rate. A TSO super-segment counts as the wire segments it becomes: its bytes.
- The initial window goes out unpaced (there is nothing to pace it by that would help:
  RFC 6928 allows the burst), and so does a forced retransmission (RTO, fast retransmit).
- Whatever the rate, and with pacing off too, one wake-up hands the device at most 64
  writes and 4 MB (Linux TSQ, tcp_small_queue_check), so one bulk
  flow cannot keep the others (and the reading of the device) waiting; its next share
  comes on the loop's next turn (`NEXT_TURN`), so every flow gets one share a turn, as a
  round robin (fq) would give it.
- A release the loop serves late, while data waited for it, may make up the lost time,
  up to the wake-up's cap (`release`): when the process is the bottleneck, flows share it
  evenly rather than in the ratio of their windows.
- Pacing gaps below the loop's timer resolution (1 ms under uvloop) cannot be kept: at a
  rate where a wake-up's share goes out in less, a flow is not paced (a local link).
"""

SS_RATIO = 2.0
CA_RATIO = 1.2
QUANTUM_SECONDS = 0.001  # tcp_tso_autosize: 1 ms of data per release
MIN_QUANTUM_SEGMENTS = 2
# Per wake-up: at most 64 device writes (what the loop can afford before it reads the
# device again: 92 KB at MTU 1500) and at most Linux's tcp_limit_output_bytes (4 MB since
# Linux 6.16: 64 TSO super-segments or 64 KB segments). With 16 big writes (1 MB) a bulk
# download on the local TUN ran at 0.88-0.90 of the unpaced speed, with 64 at 0.99
# (BENCHMARKS.md, issue 13).
WAKEUP_CAP_WRITES = 64
WAKEUP_CAP_BYTES = 4 * 1024 * 1024


def rate(cwnd: int, flight: int, ssthresh: int, srtt: float) -> float:
    """Bytes per second (Linux tcp_update_pacing_rate; the window is max(cwnd, flight))."""
    ratio = SS_RATIO if cwnd < ssthresh // 2 else CA_RATIO
    return ratio * max(cwnd, flight) / max(srtt, 1e-6)


# The loop's timers tick in milliseconds (uvloop): a pacing gap shorter than that cannot be
# kept, only paid for in wake-ups.
TIMER_RESOLUTION = 0.001


def worth_pacing(pace_rate: float, cap: int) -> bool:
    """Whether pacing can do anything at `pace_rate`: a whole wake-up's share takes at least
    a timer tick to go out at it. Faster (a local link), each wake-up's share leaves as
    it is and the next comes at once; pacing would only add wake-ups."""
    return cap >= pace_rate * TIMER_RESOLUTION


# A flow whose wake-up share is spent comes back on the loop's next turn, after the device
# has been read and every other flow has had its share: a deadline just past `now`, which
# stands still within one step of the driver (so it is not due again in the same step,
# where an unpaced flow would otherwise take a share each round while a paced one waits).
NEXT_TURN = 1e-6


def wakeup_cap(burst: int) -> int:
    """What one wake-up may hand the device: bytes of whole `burst`-sized writes."""
    return max(1, min(WAKEUP_CAP_WRITES, WAKEUP_CAP_BYTES // burst)) * burst


def quantum(pace_rate: float, max_payload: int, cap: int) -> int:
    """What one release may hand the device at `pace_rate` (tcp_tso_autosize)."""
    return min(cap, max(MIN_QUANTUM_SEGMENTS * max_payload, int(pace_rate * QUANTUM_SECONDS)))


def release(pace_at: float, now: float, pace_rate: float, max_payload: int, cap: int,
            backlogged: bool) -> tuple[int, float]:
    """A release that is due: (the bytes it may hand the device, the time they count from;
    the next release is due when they have had their time at the rate after it).

    A flow that was held by the pacer (`backlogged`) and is served late gets the time the
    loop lost back, up to the wake-up's cap (Linux tcp_update_skb_after_send takes such
    lateness off the next gap, "to take into account OS jitter"). Without that credit, a
    loop that cannot keep up with the flows' rates (the process, not the path, is the
    bottleneck) serves each flow once a turn with a release of its own rate x 1 ms, and
    the flows share the process in the ratio of their windows, which nothing then
    evens out: no queue overflows and every flow sees the same delay. With it, each late
    flow gets a whole cap a turn, as fq's round robin would give it. A flow that stopped
    on its own (window, data) gets no credit for the time it had nothing to send."""
    q = quantum(pace_rate, max_payload, cap)
    if not backlogged or now <= pace_at:
        return q, max(pace_at, now)
    base = max(pace_at, now - (cap - q) / pace_rate)
    return min(cap, q + round((now - base) * pace_rate)), base
