"""The receive window a TCB offers (RFC 9293 §3.8.6.2.2 receiver SWS avoidance, RFC 7323
§2.3 scaling): never moving the right edge RCV.NXT + RCV.WND left, and grown only by
at least min(buffer / 2, MSS) at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.tcp.options import MAX_WSCALE

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

MAX_UNSCALED_WINDOW = 0xFFFF


def free_space(tcb: Tcb) -> int:
    return max(0, tcb.rcv_buf_size - tcb._rcv_len - tcb._ooo.held)


def window(tcb: Tcb, syn: bool = False) -> int:
    """The window field to send, with receiver SWS avoidance (RFC 9293 §3.8.6.2.2).

    The right edge RCV.NXT + RCV.WND never moves left; scaled windows are rounded up
    to the scale unit for that reason (as Linux does), never down.
    """
    shift = 0 if syn else tcb.rcv_wscale
    current = offered(tcb)
    grown = grown_window(tcb, MAX_UNSCALED_WINDOW << shift)
    if grown is not None:
        current = grown
    field = min(-(-current >> shift), MAX_UNSCALED_WINDOW)  # ceil(current / 2**shift)
    tcb._rcv_adv = seq.add(tcb.rcv_nxt, field << shift)
    return field


def window_update_due(tcb: Tcb) -> bool:
    return grown_window(tcb, MAX_UNSCALED_WINDOW << tcb.rcv_wscale) is not None


def offered(tcb: Tcb) -> int:
    """RCV.WND as last advertised (0 if RCV.NXT has passed the edge)."""
    return seq.ahead(tcb._rcv_adv, tcb.rcv_nxt)


def grown_window(tcb: Tcb, limit: int) -> int | None:
    """The larger window to offer, if free space has grown by at least
    min(buffer / 2, MSS) over what was offered (§3.8.6.2.2); else None."""
    free = min(free_space(tcb), limit)
    if free - offered(tcb) >= min(tcb.rcv_buf_size // 2, tcb.rcv_mss):
        return free
    return None


def wscale_for(buffer: int) -> int:
    """The smallest shift that lets the window cover `buffer` (RFC 7323 §2.3)."""
    shift = 0
    while (buffer >> shift) > MAX_UNSCALED_WINDOW and shift < MAX_WSCALE:
        shift += 1
    return shift
