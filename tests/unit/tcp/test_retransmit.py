"""Retransmission timer (RFC 6298) and the zero-window probe (MUST-36)."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, brief, established, new_tcb, peer, recv, send
from ustack.tcp.config import SYN_RETRIES
from ustack.tcp.rtt import INITIAL_RTO, MAX_RTO, MIN_RTO, RttEstimator
from ustack.tcp.segment import ACK, PSH, SYN
from ustack.tcp.states import State


def test_unacked_data_is_retransmitted_with_backoff() -> None:
    tcb = established()
    rto = tcb.rtt.rto  # from the handshake's sample (0 s here, so the minimum)
    assert rto == MIN_RTO
    tcb.send(b"hello")
    first = brief(recv(tcb, 0.0))
    assert first == [(ACK | PSH, ISS + 1, IRS + 1, b"hello")]
    assert tcb.next_deadline == rto  # RFC 6298 (5.1)
    now = 0.0
    for _ in range(4):
        now += rto
        tcb.on_timer(now - 0.001)  # early: nothing happens
        assert recv(tcb, now - 0.001) == []
        tcb.on_timer(now)
        assert brief(recv(tcb, now)) == first  # (5.4) the earliest unacked segment
        rto *= 2
        assert tcb.next_deadline == pytest.approx(now + rto)  # (5.5) backoff, (5.6)
    send(tcb, peer(ACK, IRS + 1, ISS + 6), now + 0.5)
    assert tcb.next_deadline is None  # (5.2) all acknowledged: timer off


def test_rtt_estimator_follows_rfc_6298() -> None:
    rtt = RttEstimator()
    assert rtt.rto == INITIAL_RTO  # (2.1)
    rtt.sample(0.5)  # (2.2)
    assert (rtt.srtt, rtt.rttvar, rtt.rto) == (0.5, 0.25, 0.5 + 4 * 0.25)
    rtt.sample(0.1)  # (2.3): RTTVAR with the old SRTT, then SRTT
    assert rtt.rttvar == pytest.approx(0.75 * 0.25 + 0.25 * 0.4)
    assert rtt.srtt == pytest.approx(0.875 * 0.5 + 0.125 * 0.1)
    assert rtt.rto == pytest.approx(rtt.srtt + 4 * rtt.rttvar)
    for _ in range(50):
        rtt.sample(0.001)
    assert rtt.rto == MIN_RTO  # (2.4), with Linux's 200 ms (stated deviation)


def test_karn_ignores_samples_from_retransmitted_segments() -> None:
    tcb = established()
    tcb.send(b"a")
    recv(tcb, 10.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 2), 10.1)
    srtt = tcb.rtt.srtt
    assert srtt is not None and srtt > 0
    tcb.send(b"b")
    recv(tcb, 20.0)
    tcb.on_timer(tcb.next_deadline)
    recv(tcb, tcb.next_deadline)
    send(tcb, peer(ACK, IRS + 1, ISS + 3), 25.0)
    assert tcb.rtt.srtt == srtt  # MUST-18: no sample from a retransmitted segment


def test_rto_is_capped() -> None:
    tcb = established()
    tcb.send(b"x")
    recv(tcb, 0.0)
    for _ in range(10):
        tcb.on_timer(tcb.next_deadline)
        recv(tcb, tcb.next_deadline)
    assert tcb.rtt.rto == MAX_RTO


def test_go_back_n_after_timeout() -> None:
    tcb = established()
    tcb.send(b"a" * 3000)
    assert [s.seq for s in recv(tcb, 0.0)] == [ISS + 1, ISS + 1461, ISS + 2921]
    send(tcb, peer(ACK, IRS + 1, ISS + 1461), 0.1)  # the first arrived
    tcb.on_timer(tcb.next_deadline)
    # cwnd is one segment after a timeout (RFC 5681 §3.1): resend the oldest only.
    assert [s.seq for s in recv(tcb, 2.0)] == [ISS + 1461]


def test_syn_is_retransmitted_then_gives_up() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    assert brief(recv(tcb, 0.0)) == [(SYN, ISS, 0, b"")]
    assert tcb.next_deadline == INITIAL_RTO  # RFC 6298 (2.1): 1 s before any sample
    interval = INITIAL_RTO
    for _ in range(SYN_RETRIES):
        now = tcb.next_deadline
        tcb.on_timer(now)
        assert brief(recv(tcb, now)) == [(SYN, ISS, 0, b"")]
        interval = min(2 * interval, MAX_RTO)
        assert tcb.next_deadline == pytest.approx(now + interval)
    tcb.on_timer(tcb.next_deadline)
    assert tcb.state is State.CLOSED
    assert isinstance(tcb.error, TimeoutError)


def test_zero_window_is_probed() -> None:
    tcb = established(peer_wnd=0)
    tcb.send(b"data")
    assert recv(tcb, 0.0) == []
    assert tcb.timer_kind == "persist"
    tcb.on_timer(tcb.next_deadline)
    probe = recv(tcb, 1.0)
    assert brief(probe) == [(ACK, ISS, IRS + 1, b"")]  # <SEQ=SND.UNA-1>: forces an ACK
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=100), 1.1)  # the window opens
    assert brief(recv(tcb, 1.1)) == [(ACK | PSH, ISS + 1, IRS + 1, b"data")]
