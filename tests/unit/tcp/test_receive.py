"""Receiving: acceptability (RFC 9293 §3.10.7.4 Table 6), text, window, RST and SYN checks."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, MSS, brief, established, peer, recv, send
from ustack.tcp.config import DELAYED_ACK, TcpConfig
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN
from ustack.tcp.states import State


def test_small_in_order_data_gets_a_delayed_ack() -> None:
    tcb = established()
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"abc"), 1.0)
    send(tcb, peer(ACK | PSH, IRS + 4, ISS + 1, payload=b"def"), 1.0)
    assert tcb.read() == b"abcdef"
    assert recv(tcb, 1.0) == []  # MUST-40: the ACK may wait, less than 0.5 s
    assert tcb.next_deadline == pytest.approx(1.0 + DELAYED_ACK)
    tcb.on_timer(1.0 + DELAYED_ACK)
    assert brief(recv(tcb, 1.0 + DELAYED_ACK)) == [(ACK, ISS + 1, IRS + 7, b"")]  # one ACK


def test_every_second_full_sized_segment_is_acked_at_once() -> None:
    tcb = established()
    full = b"f" * MSS
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=full))
    assert recv(tcb) == []
    send(tcb, peer(ACK, IRS + 1 + MSS, ISS + 1, payload=full))
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1 + 2 * MSS, b"")]  # RFC 5681 §4.2


def test_delayed_ack_rides_on_outgoing_data() -> None:
    tcb = established()
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 1, payload=b"ping"))
    tcb.send(b"pong")
    assert brief(recv(tcb)) == [(ACK | PSH, ISS + 1, IRS + 5, b"pong")]
    assert tcb.next_deadline == pytest.approx(tcb.rtt.rto)  # only the retransmission timer


def test_duplicate_and_overlapping_data_is_delivered_once() -> None:
    tcb = established()
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"abcd"))
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"abcd"))  # duplicate
    send(tcb, peer(ACK, IRS + 3, ISS + 1, payload=b"cdef"))  # overlaps by two
    assert tcb.read() == b"abcdef"


def test_out_of_order_segment_gets_duplicate_ack() -> None:
    tcb = established()
    send(tcb, peer(ACK, IRS + 11, ISS + 1, payload=b"later"))
    assert tcb.read() == b""
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_every_out_of_order_segment_and_a_filled_gap_get_an_ack_at_once() -> None:
    # RFC 5681 §4.2: an immediate duplicate ACK for each, with the SACK blocks as they
    # stood after it, and one for the segment that fills the gap before anything that
    # follows it: from their order a sender learns whether the path reorders.
    tcb = established(config=TcpConfig(nodelay=True))
    tcb.sack_ok = True
    for i in range(5):  # behind a hole of 100 bytes
        send(tcb, peer(ACK, IRS + 101 + 50 * i, ISS + 1, payload=b"x" * 50))
    acks = recv(tcb)
    assert [a.ack for a in acks] == [IRS + 1] * 5
    assert [a.opts.sack[0] for a in acks] == [(IRS + 101, IRS + 151 + 50 * i)
                                              for i in range(5)]
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"y" * 100))  # the hole
    send(tcb, peer(ACK, IRS + 401, ISS + 1, payload=b"z" * 50))  # beyond a new one
    acks = recv(tcb)
    assert [(a.ack, tuple(a.opts.sack or ())) for a in acks] == [
        (IRS + 351, ()), (IRS + 351, ((IRS + 401, IRS + 451),))]


def test_segment_outside_window_is_not_acceptable_and_acked() -> None:
    tcb = established()
    send(tcb, peer(ACK, IRS + 1 + 70000, ISS + 1, payload=b"far"))
    assert tcb.read() == b""
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_old_duplicate_segment_is_acked() -> None:
    tcb = established()
    send(tcb, peer(ACK, IRS - 100, ISS + 1, payload=b"old"))
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_exact_rst_resets() -> None:
    tcb = established()
    send(tcb, peer(RST, IRS + 1))
    assert tcb.state is State.CLOSED
    assert isinstance(tcb.error, ConnectionResetError)


def test_in_window_inexact_rst_gets_challenge_ack() -> None:
    tcb = established()
    send(tcb, peer(RST, IRS + 100))
    assert tcb.state is State.ESTABLISHED  # RFC 5961 §3.2
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_out_of_window_rst_is_dropped_silently() -> None:
    tcb = established()
    send(tcb, peer(RST, IRS + 1 + 100000))
    assert tcb.state is State.ESTABLISHED
    assert recv(tcb) == []


def test_syn_in_established_gets_challenge_ack() -> None:
    tcb = established()
    send(tcb, peer(SYN, IRS + 10))
    assert tcb.state is State.ESTABLISHED  # RFC 5961 §4.2
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_ack_of_unsent_data_is_answered_and_dropped() -> None:
    tcb = established()
    send(tcb, peer(ACK, IRS + 1, ISS + 500, payload=b"x"))
    assert tcb.read() == b""
    assert tcb.snd_una == ISS + 1
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_segment_without_ack_is_dropped() -> None:
    tcb = established()
    send(tcb, peer(PSH, IRS + 1, payload=b"noack"))
    assert tcb.read() == b""


def test_window_closes_as_buffer_fills_and_reopens_on_read() -> None:
    tcb = established(config=TcpConfig(rcv_buf=4000, nodelay=True))
    chunk = b"z" * 1000
    for i in range(4):
        send(tcb, peer(ACK, IRS + 1 + 1000 * i, ISS + 1, payload=chunk))
    acks = recv(tcb)  # one for every second full-sized segment (RFC 5681 §4.2)
    assert [(a.ack, a.wnd) for a in acks] == [(IRS + 2001, 2000), (IRS + 4001, 0)]
    # Zero window: data at RCV.NXT is trimmed away, and the ACK tells the window again.
    send(tcb, peer(ACK, IRS + 4001, ISS + 1, payload=b"more"))
    assert tcb.readable == 4000
    assert [s.wnd for s in recv(tcb)] == [0]
    assert len(tcb.read()) == 4000
    (update,) = recv(tcb)
    assert update.wnd == 4000 and update.ack == IRS + 4001  # window update after reading


def test_a_read_before_the_poll_updates_the_ack_not_adds_one() -> None:
    # The driver hands data to the application before it polls: the ACK the data drew
    # (for every second full-sized segment) has not left yet, and takes the window the
    # read opened, rather than a second ACK for the same RCV.NXT following it (MUST-58).
    tcb = established(config=TcpConfig(rcv_buf=8000, nodelay=True))
    for i in range(2):
        send(tcb, peer(ACK, IRS + 1 + 1000 * i, ISS + 1, payload=b"d" * 1000))
    assert tcb.read() == b"d" * 2000
    (ack,) = recv(tcb)
    assert (ack.ack, ack.wnd) == (IRS + 2001, 8000)


def test_text_and_fin_that_arrive_together_draw_one_ack() -> None:
    tcb = established(config=TcpConfig(nodelay=True))
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"e" * 1000))  # one full segment: delayed
    send(tcb, peer(ACK | FIN, IRS + 1001, ISS + 1, payload=b"f" * 1000))
    assert tcb.state is State.CLOSE_WAIT
    (ack,) = recv(tcb)
    assert ack.ack == IRS + 2002  # the text and the FIN


def test_a_fast_flow_is_acked_every_eighth_of_its_round_trip_a_slow_one_every_second() -> None:
    # RFC 5681 §4.2's every second full-sized segment, stretched as Linux's GRO stretches
    # it under load, to an eighth of what the application took in one RTT: 64 segments
    # per RTT → an ACK per 8 (delivery.ack_stride).
    for per_rtt, acks in ((10, 8), (64, 2)):
        tcb = established(config=TcpConfig(rcv_buf=1 << 20, nodelay=True))
        tcb._rcv_space.space = per_rtt * MSS
        for i in range(16):
            send(tcb, peer(ACK, IRS + 1 + MSS * i, ISS + 1, payload=b"s" * MSS))
        assert len(recv(tcb)) == acks, per_rtt
