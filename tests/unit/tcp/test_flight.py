"""The segments in flight and the RTT samples they give (Karn, MUST-18)."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, established, peer, recv, send
from ustack.tcp.flight import Flight
from ustack.tcp.segment import ACK

WRAP = 0xFFFF_FF00  # sequence numbers that wrap inside the test


def test_an_ack_samples_the_newest_segment_it_covers() -> None:
    f = Flight()
    f.sent(WRAP, WRAP + 100, 1.0)
    f.sent(WRAP + 100, (WRAP + 300) & 0xFFFF_FFFF, 2.0)
    f.sent((WRAP + 300) & 0xFFFF_FFFF, (WRAP + 400) & 0xFFFF_FFFF, 3.0)
    assert f.acked((WRAP + 300) & 0xFFFF_FFFF)[:2] == (2.0, False)
    assert len(f) == 1
    assert f.acked((WRAP + 300) & 0xFFFF_FFFF)[:2] == (None, False)  # nothing new covered


def test_a_retransmitted_segment_among_those_covered_gives_no_clean_sample() -> None:
    f = Flight()
    f.sent(0, 100, 1.0)
    f.sent(100, 200, 1.1)
    f.resent(0, 100, 5.0)
    assert f.acked(200)[:2] == (5.0, True)  # the newest send: the retransmission


def test_a_partial_ack_of_a_super_segment_samples_it_and_keeps_the_rest() -> None:
    f = Flight()
    f.sent(0, 64_000, 1.0)
    assert f.acked(32_000)[:2] == (1.0, False)
    f.resent(0, 10, 2.0)  # before what is left: nothing to mark
    assert f.acked(64_000)[:2] == (1.0, False)


def test_a_retransmission_marks_only_what_it_overlaps() -> None:
    f = Flight()
    for i in range(4):
        f.sent(i * 100, (i + 1) * 100, float(i))
    f.resent(150, 250, 9.0)  # overlaps the second and the third
    assert f.acked(100)[:2] == (0.0, False)
    assert f.acked(300)[:2] == (9.0, True)
    assert f.acked(400)[:2] == (3.0, False)


def test_the_tcb_takes_its_rtt_from_the_newest_covered_segment() -> None:
    tcb = established()
    tcb.send(b"a" * 100)
    recv(tcb, 10.0)
    tcb.send(b"b" * 100)
    recv(tcb, 10.05)
    srtt = tcb.rtt.srtt
    send(tcb, peer(ACK, IRS + 1, ISS + 201), 10.1)  # one (delayed) ACK for both
    # 50 ms from the newest, not 100 ms from the oldest: 7/8 of the old SRTT + 1/8.
    assert tcb.rtt.srtt == pytest.approx(7 / 8 * srtt + 0.05 / 8)


def test_a_sack_edge_inside_a_super_segment_cuts_it() -> None:
    f = Flight()
    f.sent(0, 6000, 1.0)  # one TSO super-segment
    newly = f.sack(2000, 4000)
    assert [(e[0], e[1]) for e in newly] == [(2000, 4000)]
    assert [(e[0], e[1]) for e in f] == [(0, 2000), (2000, 4000), (4000, 6000)]
    assert f.sack(2000, 4000) == []  # known already
    assert f.lose_range(0, 6000) == 2  # never what the peer holds
    assert f.lost_bytes == 4000


def test_lost_runs_go_back_lowest_first_and_leave_the_count_when_resent() -> None:
    f = Flight()
    for i in range(5):
        f.sent(i * 100, (i + 1) * 100, float(i))
    f.sack(200, 300)
    f.lose_range(0, 500)
    assert f.lost_bytes == 400
    assert f.next_lost(150) == (0, 150)  # a run of lost entries, up to the limit
    f.resent(0, 150, 9.0)
    assert f.lost_bytes == 250
    assert f.next_lost(1000) == (150, 200)  # stops at the SACKed entry
    f.resent(150, 200, 9.0)
    assert f.next_lost(1000) == (300, 500)
    f.acked(400)
    assert f.lost_bytes == 100
    f.clear_lost()
    assert f.lost_bytes == 0
