"""The opening handshake's work on a TCB (RFC 9293 §3.5, §3.10.7.2–3): the initial
receive sequence, the options both SYNs agreed on (RFC 7323 §2.2, §3.2; RFC 2018 §2),
the peer's MSS (MUST-15/16), and the passive opens (from a SYN, from a SYN cookie)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import receive, seq
from ustack.tcp.options import DEFAULT_MSS, DEFAULT_MSS6, TIMESTAMP_SPACE
from ustack.tcp.rcvwnd import MAX_UNSCALED_WINDOW
from ustack.tcp.segment import Segment
from ustack.tcp.states import State

if TYPE_CHECKING:
    from ustack.tcp.tcb import Tcb

MIN_SND_MSS = 48 + 40  # Linux tcp_min_snd_mss (48 bytes of data) plus 40 of options


def passive_open(tcb: Tcb, syn: Segment, now: float) -> None:
    """A SYN reached a listener (RFC 9293 §3.10.7.2): enter SYN-RECEIVED."""
    tcb.passive = True
    tcb._last_rcv = now
    set_irs(tcb, syn.seq)
    negotiate(tcb, syn)
    receive.set_send_window(tcb, syn)
    tcb._set_state(State.SYN_RCVD)


def cookie_open(tcb: Tcb, ack: Segment, irs: int, mss: int, now: float) -> None:
    """The ACK that completes a SYN-cookie handshake (RFC 4987 §3.6): ESTABLISHED."""
    tcb.passive = True
    tcb._last_rcv = now
    tcb.rcv_wscale = 0  # a cookie carries no options but the MSS
    set_irs(tcb, irs)
    tcb._rcv_adv = seq.add(tcb.rcv_nxt, min(tcb.rcv_buf_size, MAX_UNSCALED_WINDOW))
    set_peer_mss(tcb, mss)
    tcb.snd_una = tcb.snd_nxt = seq.add(tcb.iss, 1)
    tcb._syn_owed = False
    receive.set_send_window(tcb, ack)
    tcb._set_state(State.ESTABLISHED)


def negotiate(tcb: Tcb, syn: Segment) -> None:
    """Keep the options both SYNs carried (RFC 7323 §2.2, §3.2; RFC 2018 §2)."""
    opts = syn.opts
    set_peer_mss(tcb, opts.mss)
    tcb.wscale_ok = opts.wscale is not None and tcb.config.window_scaling
    if tcb.wscale_ok:
        tcb.snd_wscale = opts.wscale or 0
    else:
        tcb.snd_wscale = tcb.rcv_wscale = 0
    tcb.sack_ok = opts.sack_permitted and tcb.config.sack
    tcb.ts_ok = opts.ts_val is not None and tcb.config.timestamps
    if tcb.ts_ok:
        tcb.ts_recent = opts.ts_val or 0
        tcb.cc.set_mss(tcb.snd_mss - TIMESTAMP_SPACE)  # >= 76: MIN_SND_MSS


def set_irs(tcb: Tcb, irs: int) -> None:
    """IRS and RCV.NXT from the peer's SYN; the window already offered keeps its size."""
    offered = seq.sub(tcb._rcv_adv, tcb.rcv_nxt)
    tcb.irs = irs
    tcb.rcv_nxt = seq.add(irs, 1)
    tcb._rcv_adv = seq.add(tcb.rcv_nxt, offered)
    tcb.last_ack_sent = tcb.rcv_nxt


def set_peer_mss(tcb: Tcb, mss: int | None) -> None:
    # MUST-15/16: 536 without the option (1220 over IPv6); never above what we can
    # receive in one piece, nor what a path MTU we learned allows (RFC 8201 §5.2).
    # A floor, as Linux's tcp_min_snd_mss: a tiny MSS (leaving no room for data next
    # to options) would stall the connection or split it into 1-byte segments.
    wanted = mss if mss is not None else (
        DEFAULT_MSS if len(tcb.remote_addr) == 4 else DEFAULT_MSS6)
    tcb.snd_mss = max(MIN_SND_MSS, min(wanted, tcb.rcv_mss, tcb.path_mss))
    tcb.cc.set_mss(tcb.snd_mss)
