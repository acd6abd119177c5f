"""Spurious retransmissions: detected with timestamps (RFC 3522, the Eifel detection
algorithm) and answered by undoing what they did to the congestion window (RFC 4015, the
Eifel response, for a timeout; Linux tcp_try_undo_loss, and tcp_try_undo_recovery for a
fast retransmit that reordering set off).

A retransmission is spurious when the segment it resent had not been lost but delayed
or overtaken: the first ACK after the retransmission then echoes the timestamp of the
original transmission, older than the one the retransmission carried.
"""

from dataclasses import dataclass
from typing import Any

from ustack.tcp import seq


@dataclass(slots=True)
class Eifel:
    """What a timeout or a fast retransmit leaves to check: the segment it retransmits,
    the congestion state before its reduction, and the TSval its first retransmission
    carried."""

    una: int
    cc_state: dict[str, Any]
    retransmit_ts: int | None = None
    timeout: bool = True  # else a fast retransmit

    def on_retransmit(self, start: int, ts_val: int) -> None:
        """RFC 3522 §3.2 (2): remember the timestamp of the first retransmission (after a
        fast retransmit RACK may resend a later hole first: every original in flight was
        sent before it all the same)."""
        if self.retransmit_ts is None and (start == self.una or not self.timeout):
            self.retransmit_ts = ts_val

    def spurious(self, ts_ecr: int | None) -> bool:
        """RFC 3522 §3.2 (4): the first acceptable ACK echoes an older timestamp."""
        return (self.retransmit_ts is not None and ts_ecr is not None and ts_ecr != 0
                and seq.lt(ts_ecr, self.retransmit_ts))


@dataclass(slots=True)
class DsackUndo:
    """A fast recovery's retransmissions, to be proven needless one by one by D-SACKs
    (RFC 3708 §3; Linux's undo_marker and undo_retrans): when every segment it resent has
    come back reported as received twice, nothing was lost, the original segments were
    only reordered, and the window reduction is undone. Timestamps are not needed, and
    unlike the Eifel check it still works when the first ACK after the retransmission
    covers only part of what was resent."""

    una: int  # SND.UNA when the recovery began: D-SACKs below it are older news
    cc_state: dict[str, Any]
    retransmitted: int = 0  # segments resent in the recovery, not yet D-SACKed
    resent_any: bool = False  # whether the recovery resent anything at all

    def on_retransmit(self) -> None:
        self.retransmitted += 1
        self.resent_any = True

    def dsacked(self, left: int, right: int, mss: int) -> bool:
        """A D-SACK for [left, right): True once every retransmission is accounted for."""
        if not self.retransmitted or seq.lt(left, self.una):
            return False
        self.retransmitted = max(0, self.retransmitted - max(1, -(-seq.sub(right, left) // mss)))
        return self.retransmitted == 0
