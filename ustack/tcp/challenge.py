"""RFC 5961 §7: challenge ACKs are throttled, per connection (a live TCB or a TIME-WAIT
record), so that a flood of in-window RSTs or SYNs cannot turn the host into a reflector.
"""

from ustack.stats import Counters

CHALLENGE_ACKS_PER_SECOND = 10


def throttle(second: float, count: int, now: float,
             counters: Counters) -> tuple[float, int, bool]:
    """Whether one more challenge ACK may go now. Takes and returns the throttle's state:
    the second being counted and the challenge ACKs sent in it. Counted either way."""
    current = float(int(now))
    if current != second:
        second, count = current, 0
    if count < CHALLENGE_ACKS_PER_SECOND:
        counters["tcp_challenge_acks"] += 1
        return second, count + 1, True
    counters["tcp_challenge_acks_throttled"] += 1
    return second, count, False
