"""Pacing (ustack.tcp.pacing): the window spread over the RTT, a release at a time."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, MSS, established, peer, recv, send
from ustack.tcp import pacing, receive, seq
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import ACK

PACED = TcpConfig(nodelay=True, pacing=True)
UNPACED = TcpConfig(nodelay=True, pacing=False)


def test_the_rate_is_twice_the_window_per_rtt_in_slow_start_then_1_2() -> None:
    assert pacing.rate(100_000, 0, 1 << 62, 0.1) == pytest.approx(2.0 * 1_000_000)
    assert pacing.rate(100_000, 0, 150_000, 0.1) == pytest.approx(1.2 * 1_000_000)
    assert pacing.rate(100_000, 300_000, 150_000, 0.1) == pytest.approx(3.6 * 1_000_000)


def test_a_release_is_a_millisecond_of_data_but_never_under_two_segments() -> None:
    assert pacing.quantum(10_000_000, 1448, 65536) == 10_000  # 1 ms at 10 MB/s
    assert pacing.quantum(100_000, 1448, 65536) == 2 * 1448
    assert pacing.quantum(1e10, 1448, 65536) == 65536  # the wake-up's cap


def test_a_wake_up_hands_out_at_most_64_writes_and_4_mb() -> None:
    assert pacing.wakeup_cap(1448) == 64 * 1448
    burst = 45 * 1448  # a TSO write of whole segments
    assert pacing.wakeup_cap(burst) == (4 << 20) // burst * burst
    assert pacing.wakeup_cap(65483) == 64 * 65483  # MTU 65535, no TSO
    assert pacing.wakeup_cap(8 << 20) == 8 << 20  # one write always goes


def grown(config: TcpConfig, srtt: float = 0.010):
    """ESTABLISHED, the initial window sent and acknowledged after `srtt`, cwnd grown."""
    tcb = established(config=config)
    tcb.send(b"i" * 10 * MSS)
    recv(tcb, 1.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + 10 * MSS, wnd=65535), 1.0 + srtt)
    return tcb, 1.0 + srtt


def test_past_the_initial_window_data_leaves_a_release_at_a_time() -> None:
    tcb, now = grown(PACED)
    tcb.rtt.srtt = 0.1  # a long path: 2 x 16 KB per 100 ms is 2 segments per release
    rate = pacing.rate(tcb.cc.cwnd, 0, tcb.cc.ssthresh, tcb.rtt.srtt)
    assert pacing.quantum(rate, MSS, 65536) == 2 * MSS
    tcb.send(b"d" * 60_000)
    first = recv(tcb, now)
    sent = sum(len(s.payload) for s in first)
    assert sent == 2 * MSS
    # Nothing more before the release's time is up; then the next one.
    due = tcb.next_deadline
    assert due == pytest.approx(now + sent / rate)
    assert recv(tcb, due - 0.0001) == []
    tcb.on_timer(due)
    second = recv(tcb, due)
    assert second and second[0].seq == seq.add(first[-1].seq, len(first[-1].payload))


def test_the_initial_window_goes_out_unpaced() -> None:
    tcb = established(config=PACED)
    send(tcb, peer(ACK, IRS + 1, ISS + 1), 0.5)  # an RTT sample exists
    tcb.send(b"i" * 10 * MSS)
    assert sum(len(s.payload) for s in recv(tcb, 0.5)) == 10 * MSS


def test_unpaced_a_wake_up_hands_out_at_most_its_share_and_comes_back_at_once() -> None:
    tcb, now = grown(UNPACED)
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + 10 * MSS, wnd=65535), now)
    tcb.cc.cwnd = 1 << 20  # plenty of room: only the cap limits
    receive.set_send_window(tcb, peer(ACK, IRS + 1, ISS + 1 + 10 * MSS, wnd=65535))
    tcb.snd_wnd = 1 << 20
    tcb.send(b"d" * 200_000)
    first = recv(tcb, now)
    assert pacing.wakeup_cap(MSS) <= sum(len(s.payload) for s in first) < 100_000
    # The rest on the loop's next turn: not again in this one (where `now` stands still).
    assert tcb.next_deadline == now + pacing.NEXT_TURN
    tcb._ack_now = True  # anything that makes it poll again within the turn
    assert not any(s.payload for s in recv(tcb, now))
    tcb.on_timer(now + pacing.NEXT_TURN)
    assert recv(tcb, now + pacing.NEXT_TURN)


def test_a_retransmission_timeout_is_not_held_by_pacing() -> None:
    tcb, now = grown(PACED)
    tcb.send(b"d" * 20_000)
    recv(tcb, now)
    rto_at = now + tcb.rtt.rto
    tcb.on_timer(rto_at)
    again = recv(tcb, rto_at)
    assert again and again[0].seq == ISS + 1 + 10 * MSS


def test_a_release_served_late_makes_up_the_lost_time_up_to_the_cap() -> None:
    rate, cap = 10_000_000.0, 65536  # 10 KB per ms
    # On time, or late but not held by the pacer: one quantum, counted from its time.
    assert pacing.release(1.0, 1.0, rate, MSS, cap, backlogged=True) == (10_000, 1.0)
    assert pacing.release(1.0, 1.003, rate, MSS, cap, backlogged=False) == (10_000, 1.003)
    # Held by the pacer and served 3 ms late: those 3 ms too, counted from the due time,
    # so the next release is due a quantum's time after now.
    allowance, base = pacing.release(1.0, 1.003, rate, MSS, cap, backlogged=True)
    assert allowance == pytest.approx(40_000, abs=2)
    assert base + allowance / rate == pytest.approx(1.004)
    # Much later: a whole cap and no more (no burst beyond a wake-up's share).
    allowance, base = pacing.release(1.0, 1.5, rate, MSS, cap, backlogged=True)
    assert allowance == cap
    assert base + allowance / rate == pytest.approx(1.5 + 10_000 / rate)


def test_when_the_loop_is_late_every_backlogged_flow_gets_a_whole_share_a_turn() -> None:
    # Two flows, one with three times the other's window: once the loop serves them
    # late enough, their releases are equal (the process is shared evenly).
    big = pacing.release(0.0, 0.010, 3e7, MSS, 65536, backlogged=True)[0]
    small = pacing.release(0.0, 0.010, 1e7, MSS, 65536, backlogged=True)[0]
    assert big == small == 65536

