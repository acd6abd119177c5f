"""A TCB's timers (RFC 9293 §3.8, §3.10.8): what each does when it fires, and which
deadlines the connection's state calls for after every event (`rearm`). The deadlines
live in the TCB's `timers.Timers`; the host keeps one heap of TCBs by their earliest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import output, recovery, timers, tlp
from ustack.tcp.config import FIN_WAIT_2_TIMEOUT
from ustack.tcp.rtt import MAX_RTO
from ustack.tcp.states import State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

# The timers that stand for the RTO while data is in flight (RFC 8985 §6.3, §7.2: the
# reordering and probe timers take its place, and hand it back when they fire).
_RTO_LIKE = (timers.RETRANSMIT, timers.LOSS_PROBE, timers.REORDER)


def keepalive_timeout(tcb: Tcb) -> None:
    # RFC 9293 §3.8.4: a probe <SEQ=SND.NXT-1> makes a live peer answer with an ACK.
    if tcb._keepalive_probes >= tcb.config.keepalive_count:
        tcb._close(TimeoutError("connection timed out (keepalive)"))  # MUST-29 aside
        return
    tcb._keepalive_probes += 1
    tcb._probe_owed = True
    tcb.counters["tcp_keepalive_probes"] += 1


def fire(tcb: Tcb, now: float) -> None:
    """Whatever of the TCB's deadlines has passed (`Tcb.on_timer`)."""
    tcb._now = now
    t = tcb.timers
    if t.delack_at is not None and now >= t.delack_at:
        t.delack_at = None
        tcb._ack_now = tcb._ack_now or tcb._ack_delayed
        tcb._fired(timers.DELAYED_ACK)
    if t.keepalive_at is not None and now >= t.keepalive_at:
        t.keepalive_at = None
        tcb._fired(timers.KEEPALIVE)
        keepalive_timeout(tcb)
    if t.pace_at is not None and now >= t.pace_at:
        t.pace_at = None  # the next release is due: poll sends it (not an RFC timer)
        tcb._pace_wait = False
    if t.slot_at is not None and now >= t.slot_at:
        kind = t.kind
        t.disarm()
        if kind is not None:
            tcb._fired(kind)
        if kind in (timers.TIME_WAIT, timers.FIN_WAIT_2):
            tcb._close(None)
        elif kind == timers.PERSIST:
            # MUST-36: probe the zero window. Like Linux (tcp_xmit_probe_skb) the probe
            # is <SEQ=SND.UNA-1>, which the peer must answer with its current window.
            tcb._probe_owed = True
            tcb._persist_backoff += 1
            tcb.counters["tcp_window_probes"] += 1
        elif kind == timers.RETRANSMIT:
            recovery.on_retransmission_timeout(tcb)
        elif kind == timers.LOSS_PROBE:
            tcb._tlp_owed = True  # poll sends it; the RTO is armed behind it
        elif kind == timers.REORDER:
            tcb.counters["tcp_rack_reo_timeouts"] += 1
            if recovery.uses_rack(tcb) and tcb.snd_una != tcb.snd_nxt:
                recovery.detect_loss(tcb, now)
    rearm(tcb, now)


def rearm(tcb: Tcb, now: float) -> None:
    """Keep the deadlines consistent with what is outstanding (after every event)."""
    t = tcb.timers
    if tcb.state is State.TIME_WAIT:
        if tcb.time_wait is not None:
            t.arm(timers.TIME_WAIT, tcb.time_wait.deadline)
        return
    if tcb.state is State.CLOSED:
        return
    if tcb.snd_una != tcb.snd_nxt:
        if tcb._tlp_due:
            # RFC 8985 §7.2: after new data goes out or SND.UNA moves, the probe timer
            # in place of the RTO (which it never outlasts), where a probe may go.
            tcb._tlp_due = False
            pto = tlp.timeout_for(tcb)
            if pto is not None and t.kind != timers.REORDER:
                at = now + pto
                if t.kind == timers.RETRANSMIT and t.slot_at is not None:
                    at = min(at, t.slot_at)  # never later than the RTO would fire
                t.arm(timers.LOSS_PROBE, at)
        if t.kind not in _RTO_LIKE:
            t.arm(timers.RETRANSMIT, now + tcb.rtt.rto)  # RFC 6298 (5.1)
    elif output.unsent(tcb) and tcb.snd_wnd == 0:
        if t.kind != timers.PERSIST:
            backoff = 1 << min(tcb._persist_backoff, 10)
            t.arm(timers.PERSIST, now + min(MAX_RTO, tcb.rtt.rto * backoff))
    elif tcb.state is State.FIN_WAIT_2 and tcb.orphaned:
        if t.kind != timers.FIN_WAIT_2:
            t.arm(timers.FIN_WAIT_2, now + FIN_WAIT_2_TIMEOUT)
    elif t.kind is not None:
        t.disarm()
    if tcb._ack_delayed and not tcb._ack_now:
        if t.delack_at is None:
            t.delack_at = now + tcb.config.delayed_ack
    else:
        t.delack_at = None
    t.pace_at = tcb._pace_at if tcb._pace_wait else None
    if (tcb.config.keepalive and tcb.state in (State.ESTABLISHED, State.CLOSE_WAIT)
            and tcb.snd_una == tcb.snd_nxt):
        cfg = tcb.config
        t.keepalive_at = (tcb._last_rcv + cfg.keepalive_idle
                          + tcb._keepalive_probes * cfg.keepalive_interval)
    else:
        t.keepalive_at = None

