"""Opening a connection: RFC 9293 §3.5, §3.10.7.2, §3.10.7.3."""

import pytest

from tests.unit.tcp.helpers import (
    IRS,
    ISS,
    MSS,
    brief,
    established,
    new_tcb,
    peer,
    recv,
    send,
    syn_received,
)
from ustack.tcp.options import DEFAULT_MSS
from ustack.tcp.segment import ACK, PSH, RST, SYN
from ustack.tcp.states import State


def test_listen_syn_gets_syn_ack_with_mss() -> None:
    tcb = syn_received()
    assert tcb.state is State.SYN_RCVD
    out = recv(tcb)
    assert brief(out) == [(SYN | ACK, ISS, IRS + 1, b"")]
    assert out[0].opts.mss == MSS


def test_syn_rcvd_ack_establishes() -> None:
    tcb = syn_received()
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1))
    assert tcb.state is State.ESTABLISHED
    assert tcb.snd_una == ISS + 1 and tcb.rcv_nxt == IRS + 1


def test_sanity_established_fixture_matches_real_exchange() -> None:
    tcb = established()
    expected = (ISS + 1, ISS + 1, IRS + 1, 65535)
    assert (tcb.snd_una, tcb.snd_nxt, tcb.rcv_nxt, tcb.snd_wnd) == expected


def test_syn_rcvd_bad_ack_gets_rst() -> None:
    tcb = syn_received()
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 77))
    assert brief(recv(tcb)) == [(RST, ISS + 77, 0, b"")]  # <SEQ=SEG.ACK><CTL=RST>
    assert tcb.state is State.SYN_RCVD


def test_syn_rcvd_retransmitted_syn_resends_syn_ack() -> None:
    tcb = syn_received()
    recv(tcb)
    send(tcb, peer(SYN, IRS, mss=MSS))
    assert brief(recv(tcb)) == [(SYN | ACK, ISS, IRS + 1, b"")]


def test_syn_rcvd_passive_rst_returns_to_listen() -> None:
    tcb = syn_received()
    recv(tcb)
    send(tcb, peer(RST, IRS + 1))
    assert tcb.state is State.CLOSED and tcb.error is None


def test_active_open_sends_syn_then_acks_syn_ack() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    out = recv(tcb)
    assert brief(out) == [(SYN, ISS, 0, b"")]
    assert out[0].opts.mss == MSS
    send(tcb, peer(SYN | ACK, IRS, ISS + 1, mss=1000))
    assert tcb.state is State.ESTABLISHED
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]
    assert tcb.snd_mss == 1000


@pytest.mark.parametrize("bad_ack", [ISS, ISS + 2, ISS - 10])
def test_syn_sent_unacceptable_ack_gets_rst(bad_ack: int) -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    recv(tcb)
    send(tcb, peer(SYN | ACK, IRS, bad_ack))
    assert brief(recv(tcb)) == [(RST, bad_ack, 0, b"")]
    assert tcb.state is State.SYN_SENT


def test_syn_sent_rst_ack_is_connection_refused() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    recv(tcb)
    send(tcb, peer(RST | ACK, 0, ISS + 1))
    assert tcb.state is State.CLOSED
    assert isinstance(tcb.error, ConnectionRefusedError)
    assert recv(tcb) == []


def test_syn_sent_rst_without_ack_is_ignored() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    recv(tcb)
    send(tcb, peer(RST, 0))
    assert tcb.state is State.SYN_SENT


def test_simultaneous_open() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    recv(tcb)
    send(tcb, peer(SYN, IRS, mss=MSS))
    assert tcb.state is State.SYN_RCVD
    assert brief(recv(tcb)) == [(SYN | ACK, ISS, IRS + 1, b"")]
    send(tcb, peer(SYN | ACK, IRS, ISS + 1))  # the peer's SYN-ACK: an old seq, not acceptable
    send(tcb, peer(ACK, IRS + 1, ISS + 1))
    assert tcb.state is State.ESTABLISHED


def test_peer_mss_is_honoured() -> None:
    tcb = syn_received(mss=500)
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1))
    tcb.send(b"x" * 1200)
    assert [len(s.payload) for s in recv(tcb)] == [500, 500, 200]


def test_default_mss_without_option() -> None:
    tcb = syn_received(mss=None)
    assert tcb.snd_mss == DEFAULT_MSS


def test_data_is_sent_only_within_peer_window() -> None:
    tcb = established(peer_wnd=1000)
    tcb.send(b"a" * 5000)
    out = recv(tcb)
    assert sum(len(s.payload) for s in out) == 1000
    assert out[-1].flags == ACK  # more is buffered: no PSH yet
    send(tcb, peer(ACK, IRS + 1, ISS + 1001, wnd=4000))
    out = recv(tcb)
    assert sum(len(s.payload) for s in out) == 4000
    assert out[-1].flags == ACK | PSH
