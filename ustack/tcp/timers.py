"""A TCB's timers as absolute deadlines (RFC 9293 §3.8, §3.10.8). No clock, no tasks.

One slot is shared by the timers that exclude each other (smoltcp's `Timer`):
retransmission, with RACK's reordering timer and the tail loss probe standing in for it
(RFC 8985; Linux's icsk_retransmit_timer does the same), zero-window persist, FIN-WAIT-2
and TIME-WAIT. The delayed ACK and
keepalive have slots of their own, and so has pacing: the time the next release of data
may go (`ustack.tcp.pacing`). `next_deadline` is the earliest of them.
"""

from enum import StrEnum


class TimerKind(StrEnum):
    """Every timer a TCB has; the values are the names the ladder and counters show."""

    RETRANSMIT = "retransmit"  # the shared slot's kinds
    LOSS_PROBE = "loss_probe"
    REORDER = "reorder"
    PERSIST = "persist"
    TIME_WAIT = "time_wait"
    FIN_WAIT_2 = "fin_wait_2"
    DELAYED_ACK = "delayed_ack"  # slots of their own
    KEEPALIVE = "keepalive"


RETRANSMIT = TimerKind.RETRANSMIT
LOSS_PROBE = TimerKind.LOSS_PROBE
REORDER = TimerKind.REORDER
PERSIST = TimerKind.PERSIST
TIME_WAIT = TimerKind.TIME_WAIT
FIN_WAIT_2 = TimerKind.FIN_WAIT_2
DELAYED_ACK = TimerKind.DELAYED_ACK
KEEPALIVE = TimerKind.KEEPALIVE


class Timers:
    __slots__ = ("delack_at", "keepalive_at", "kind", "pace_at", "slot_at")

    def __init__(self) -> None:
        self.kind: TimerKind | None = None
        self.slot_at: float | None = None
        self.delack_at: float | None = None
        self.keepalive_at: float | None = None
        self.pace_at: float | None = None

    def arm(self, kind: TimerKind, at: float) -> None:
        self.kind = kind
        self.slot_at = at

    def disarm(self) -> None:
        self.kind = None
        self.slot_at = None

    def clear(self) -> None:
        self.disarm()
        self.delack_at = None
        self.keepalive_at = None
        self.pace_at = None

    @property
    def next_deadline(self) -> float | None:
        best = self.slot_at
        t = self.delack_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.keepalive_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.pace_at
        if t is not None and (best is None or t < best):
            best = t
        return best
