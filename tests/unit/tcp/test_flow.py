"""Flow control and timers: Nagle, sender SWS, persist backoff, keepalive, reassembly,
challenge-ACK throttling, give-up limits (RFC 9293 §3.7-3.8, RFC 5961 §7, RFC 1122)."""

import itertools

import pytest

from tests.unit.tcp.helpers import IRS, ISS, MSS, brief, established, peer, recv, send
from ustack.tcp import timers
from ustack.tcp.challenge import CHALLENGE_ACKS_PER_SECOND
from ustack.tcp.config import FIN_WAIT_2_TIMEOUT, TcpConfig
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN
from ustack.tcp.states import State

NAGLE = TcpConfig(nodelay=False)


def test_nagle_holds_a_small_segment_while_data_is_in_flight() -> None:
    tcb = established(config=NAGLE)
    tcb.send(b"a")
    assert brief(recv(tcb)) == [(ACK | PSH, ISS + 1, IRS + 1, b"a")]  # nothing in flight
    tcb.send(b"b")
    tcb.send(b"c")
    assert recv(tcb) == []  # RFC 9293 §3.7.4: wait for the ACK
    send(tcb, peer(ACK, IRS + 1, ISS + 2))
    assert brief(recv(tcb)) == [(ACK | PSH, ISS + 2, IRS + 1, b"bc")]  # coalesced


def test_nagle_still_sends_full_segments() -> None:
    tcb = established(config=NAGLE)
    tcb.send(b"a")
    recv(tcb)
    tcb.send(b"x" * (MSS + 10))
    assert [len(s.payload) for s in recv(tcb)] == [MSS]  # the 10-byte tail waits


def test_nodelay_sends_small_segments_at_once() -> None:
    tcb = established(config=TcpConfig(nodelay=True))
    tcb.send(b"a")
    recv(tcb)
    tcb.send(b"b")
    assert brief(recv(tcb)) == [(ACK | PSH, ISS + 2, IRS + 1, b"b")]


def test_fin_is_not_held_by_nagle() -> None:
    tcb = established(config=NAGLE)
    tcb.send(b"a")
    recv(tcb)
    tcb.send(b"b")
    tcb.shutdown()
    assert brief(recv(tcb)) == [(ACK | PSH | FIN, ISS + 2, IRS + 1, b"b")]


def test_sender_sws_avoidance_waits_for_a_useful_window() -> None:
    tcb = established(peer_wnd=4000)
    tcb.send(b"q" * 6000)
    # Two full segments; the 1080 bytes the window still allows are less than
    # Fs = 1/2 of the largest window offered, and an ACK is coming (§3.8.6.2.1).
    assert [len(s.payload) for s in recv(tcb)] == [MSS, MSS]
    send(tcb, peer(ACK, IRS + 1, ISS + 101, wnd=4000))  # 1180 usable: still silly
    assert recv(tcb) == []
    send(tcb, peer(ACK, IRS + 1, ISS + 2501, wnd=4000))  # 3580 usable
    assert [len(s.payload) for s in recv(tcb)] == [MSS, MSS, 6000 - 4 * MSS]


def test_persist_probes_back_off_exponentially() -> None:
    tcb = established(peer_wnd=0)
    tcb.send(b"data")
    recv(tcb, 0.0)
    intervals = []
    now = 0.0
    for _ in range(5):
        assert tcb.timer_kind == timers.PERSIST
        intervals.append(tcb.next_deadline - now)
        now = tcb.next_deadline
        tcb.on_timer(now)
        assert brief(recv(tcb, now)) == [(ACK, ISS, IRS + 1, b"")]  # MUST-36
        send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=0), now)  # still closed
    assert all(b == pytest.approx(2 * a) for a, b in itertools.pairwise(intervals))


def test_out_of_order_fin_is_processed_when_the_gap_fills() -> None:
    tcb = established()
    send(tcb, peer(ACK | FIN, IRS + 6, ISS + 1, payload=b"world"))
    assert tcb.state is State.ESTABLISHED  # the FIN waits beyond the gap
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"hello"))
    assert tcb.state is State.CLOSE_WAIT and tcb.read() == b"helloworld"
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 12, b"")]  # data and FIN, at once


def test_duplicate_out_of_order_data_is_held_once() -> None:
    tcb = established()
    for _ in range(3):
        send(tcb, peer(ACK, IRS + 11, ISS + 1, payload=b"0123456789"))
    send(tcb, peer(ACK, IRS + 15, ISS + 1, payload=b"45678901234"))  # overlaps, extends
    assert tcb._ooo.held == 15
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"abcdefghij"))
    assert tcb.read() == b"abcdefghij0123456789" + b"01234"


def test_challenge_acks_are_throttled() -> None:
    tcb = established()
    for _ in range(CHALLENGE_ACKS_PER_SECOND + 5):
        send(tcb, peer(SYN, IRS + 50), 3.2)
    assert len(recv(tcb, 3.2)) == 1  # one ACK per batch in any case
    assert tcb.counters["tcp_challenge_acks"] == CHALLENGE_ACKS_PER_SECOND
    assert tcb.counters["tcp_challenge_acks_throttled"] == 5
    send(tcb, peer(RST, IRS + 50), 4.1)  # a new second: challenge again
    assert tcb.counters["tcp_challenge_acks"] == CHALLENGE_ACKS_PER_SECOND + 1


def test_retransmission_gives_up_after_the_configured_limit() -> None:
    tcb = established(config=TcpConfig(max_retries=3))
    tcb.send(b"x")
    recv(tcb, 0.0)
    for _ in range(3):
        tcb.on_timer(tcb.next_deadline)
        recv(tcb, 0.0)
    assert tcb.state is State.ESTABLISHED
    tcb.on_timer(tcb.next_deadline)
    assert tcb.state is State.CLOSED and isinstance(tcb.error, TimeoutError)


def test_keepalive_is_off_by_default() -> None:
    tcb = established()
    assert tcb.next_deadline is None  # MUST-25


def test_keepalive_probes_then_gives_up() -> None:
    cfg = TcpConfig(keepalive=True, keepalive_idle=100, keepalive_interval=10,
                    keepalive_count=2)
    tcb = established(config=cfg)
    assert tcb.next_deadline == 100  # idle time from the last segment received
    tcb.on_timer(100)
    assert brief(recv(tcb, 100)) == [(ACK, ISS, IRS + 1, b"")]  # <SEQ=SND.NXT-1>
    send(tcb, peer(ACK, IRS + 1, ISS + 1), 101)  # the peer is alive: idle starts again
    assert tcb.next_deadline == 201
    tcb.on_timer(201)
    recv(tcb, 201)
    assert tcb.next_deadline == 211
    tcb.on_timer(211)
    recv(tcb, 211)
    tcb.on_timer(221)
    assert tcb.state is State.CLOSED and isinstance(tcb.error, TimeoutError)


def test_fin_wait_2_of_a_closed_connection_times_out_after_60_s() -> None:
    tcb = established()
    tcb.close()
    recv(tcb, 0.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 2), 1.0)
    assert tcb.next_deadline == 1.0 + FIN_WAIT_2_TIMEOUT == 61.0
    tcb.on_timer(61.0)
    assert tcb.state is State.CLOSED


def test_window_update_after_reading_is_sent_at_once() -> None:
    tcb = established(config=TcpConfig(rcv_buf=2 * MSS, nodelay=True))
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"r" * MSS))
    send(tcb, peer(ACK, IRS + 1 + MSS, ISS + 1, payload=b"r" * MSS))
    (ack,) = recv(tcb)
    assert ack.wnd == 0
    tcb.read()
    (update,) = recv(tcb)
    assert update.wnd == 2 * MSS  # RFC 9293 §3.8.6.2.2: now a full MSS can be offered
