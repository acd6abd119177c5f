"""Scripted-peer helpers for sans-IO TCB tests (smoltcp's `send`/`recv` style).

The peer is at REMOTE_PORT with IRS; the TCB under test is at LOCAL_PORT with ISS.
Tests advance a virtual clock by passing `now` explicitly.
"""

from ustack.tcp import seq
from ustack.tcp.config import TcpConfig
from ustack.tcp.options import Options
from ustack.tcp.segment import ACK, SYN, Segment
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

LOCAL_PORT = 80
REMOTE_PORT = 40000
ISS = 1000
IRS = 5000
MSS = 1460
PEER_WND = 65535


def peer(flags: int, seq_no: int, ack: int = 0, wnd: int = PEER_WND, payload: bytes = b"",
         mss: int | None = None, **opts: object) -> Segment:
    """A segment from the scripted peer; `opts` are Options fields (wscale=7, ts_val=…)."""
    return Segment(REMOTE_PORT, LOCAL_PORT, seq_no, ack, flags, wnd, payload,
                   Options(mss=mss, **opts))  # type: ignore[arg-type]


# Nagle off unless a test is about Nagle: most scripts want every byte out at once.
CONFIG = TcpConfig(nodelay=True)


def new_tcb(iss: int = ISS, config: TcpConfig = CONFIG, **kw: object) -> Tcb:
    return Tcb(LOCAL_PORT, REMOTE_PORT, iss, mss=MSS, config=config,
               remote_addr=b"\x0a\x4d\x00\x01", **kw)  # type: ignore[arg-type]


def send(tcb: Tcb, seg: Segment, now: float = 0.0) -> None:
    tcb.on_segment(seg, now)


def recv(tcb: Tcb, now: float = 0.0) -> list[Segment]:
    return tcb.poll(now)


def brief(segs: list[Segment]) -> list[tuple[int, int, int, bytes]]:
    """(flags, seq, ack, payload) of each segment, ack 0 when the ACK bit is clear."""
    return [(s.flags, s.seq, s.ack if s.flags & ACK else 0, bytes(s.payload)) for s in segs]


def syn_received(now: float = 0.0, mss: int | None = MSS, iss: int = ISS, irs: int = IRS,
                 **kw: object) -> Tcb:
    tcb = new_tcb(iss, **kw)
    tcb.open_passive(peer(SYN, irs, mss=mss), now)
    return tcb


def established(now: float = 0.0, peer_wnd: int = PEER_WND, iss: int = ISS,
                irs: int = IRS, **kw: object) -> Tcb:
    """A passive TCB after a real three-way handshake (see the sanity test)."""
    tcb = syn_received(now, iss=iss, irs=irs, **kw)
    recv(tcb, now)  # the SYN-ACK
    send(tcb, peer(ACK, seq.add(irs, 1), seq.add(iss, 1), wnd=peer_wnd), now)
    assert tcb.state is State.ESTABLISHED
    assert recv(tcb, now) == []
    return tcb
