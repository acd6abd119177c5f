"""A TCB's buffer sizes as they grow (Linux tcp_rcv_space_adjust and tcp_sndbuf_expand,
`ustack.tcp.autotune` for the arithmetic): growth beyond the configured sizes is claimed
from the host's budget and given back when the connection ends or the user fixes a size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import events
from ustack.tcp.rcvwnd import MAX_UNSCALED_WINDOW
from ustack.tcp.states import State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

_SYNCHRONIZED_SENDING = (State.ESTABLISHED, State.CLOSE_WAIT)


def grow_rcv_buf(tcb: Tcb, want: int) -> None:
    # No larger than the window can say with the scale the handshake fixed (Linux
    # window_clamp): a peer without window scaling sees at most 64 KB.
    cap = min(max(tcb.config.rcv_buf_max, tcb.config.rcv_buf),
              MAX_UNSCALED_WINDOW << tcb.rcv_wscale)
    new = grow(tcb, tcb.rcv_buf_size, want, cap)
    if new > tcb.rcv_buf_size:
        tcb._rcv_claimed += new - tcb.rcv_buf_size
        tcb.rcv_buf_size = new
        tcb.counters["tcp_rcvbuf_grown"] += 1


def grow_snd_buf_if_stuck(tcb: Tcb) -> None:
    """Both ways blocked: the peer's window is closed, text waits for our application,
    and it has queued more than the send buffer holds (so it waits for room before it
    reads). Linux would keep it waiting until the peer reads; a peer that writes
    everything before it reads (with an echo between them) would then wait for us as
    we wait for it, both windows at zero. Grow the send buffer by what was queued."""
    if (not tcb.snd_wnd and tcb._rcv_len and len(tcb._snd_buf) > tcb.snd_buf_size
            and tcb.state in _SYNCHRONIZED_SENDING):
        grow_snd_buf(tcb, len(tcb._snd_buf))


def grow_snd_buf(tcb: Tcb, want: int) -> None:
    """To at least `want` (doubling, so that growth is claimed a few times only)."""
    new = grow(tcb, tcb.snd_buf_size, max(want, 2 * tcb.snd_buf_size), tcb._snd_buf_cap)
    if new > tcb.snd_buf_size:
        tcb._snd_claimed += new - tcb.snd_buf_size
        tcb.snd_buf_size = new
        tcb.counters["tcp_sndbuf_grown"] += 1
        tcb.events |= events.WRITABLE  # room for a writer that waits for it


def grow(tcb: Tcb, current: int, want: int, cap: int) -> int:
    """What a buffer of `current` bytes grows to for `want` (at most `cap`), claimed
    from the host's budget; `current` when the budget has no room (counted once, until
    a growth succeeds again)."""
    new = min(want, cap)
    if new <= current:
        return current
    if not tcb._budget.claim(new - current):
        if not tcb._growth_refused:
            tcb._growth_refused = True
            tcb.counters["tcp_buffer_growth_denied"] += 1
        return current
    tcb._growth_refused = False
    return new


def release_growth(tcb: Tcb, rcv: bool = True, snd: bool = True) -> None:
    """Give the growth this connection claimed back to the host's budget."""
    if rcv and tcb._rcv_claimed:
        tcb._budget.release(tcb._rcv_claimed)
        tcb.rcv_buf_size -= tcb._rcv_claimed
        tcb._rcv_claimed = 0
    if snd and tcb._snd_claimed:
        tcb._budget.release(tcb._snd_claimed)
        tcb.snd_buf_size -= tcb._snd_claimed
        tcb._snd_claimed = 0

