"""cwnd against the RFC formulas: RFC 5681 §3.1 (slow start, congestion avoidance,
timeout) and RFC 9438 (CUBIC, C = 0.4, beta = 0.7)."""

import pytest

from tests.unit.tcp import helpers as h
from ustack.tcp.config import TcpConfig
from ustack.tcp.congestion import Cubic, NewReno, make
from ustack.tcp.segment import ACK

MSS = 1000


def test_newreno_slow_start_then_congestion_avoidance() -> None:
    cc = NewReno(MSS)
    assert cc.cwnd == 10 * MSS  # RFC 6928 initial window
    cc.on_ack(3 * MSS, 0.0, None)
    # RFC 5681 (2) with RFC 9406's L: an ACK adds what it acknowledges, at most 8 SMSS
    # unpaced (RFC 5681 alone said 1 SMSS; Linux's tcp_slow_start takes no limit).
    assert cc.cwnd == 13 * MSS
    cc.on_ack(20 * MSS, 0.0, None)
    assert cc.cwnd == 21 * MSS
    paced = NewReno(MSS, paced=True)
    paced.on_ack(20 * MSS, 0.0, None)
    assert paced.cwnd == 30 * MSS  # paced: L = infinity
    cc.ssthresh = cc.cwnd = 11 * MSS
    for _ in range(10):
        cc.on_ack(MSS, 0.0, None)
    assert cc.cwnd == 11 * MSS
    cc.on_ack(MSS, 0.0, None)  # a window's worth acknowledged (RFC 5681 §3.1 counting)
    assert cc.cwnd == 12 * MSS
    for _ in range(6):  # delayed ACKs, two segments each: the same one SMSS per window
        cc.on_ack(2 * MSS, 0.0, None)
    assert cc.cwnd == 13 * MSS


def test_newreno_timeout() -> None:
    cc = NewReno(MSS)
    cc.on_rto(flight=30 * MSS, now=0.0)
    assert (cc.ssthresh, cc.cwnd) == (15 * MSS, MSS)  # RFC 5681 (4), loss window
    cc.on_rto(flight=MSS, now=0.0)
    assert cc.ssthresh == 2 * MSS


def cubic_after_loss(w: int = 100) -> Cubic:
    cc = Cubic(MSS)
    cc.cwnd = w * MSS
    cc._cwnd_seg = float(w)
    cc.ssthresh = 1  # in congestion avoidance
    cc.on_loss(flight=w * MSS, now=10.0)
    return cc


def test_cubic_multiplicative_decrease() -> None:
    cc = cubic_after_loss(100)
    # RFC 9438 §4.6: ssthresh = flight * beta; cwnd = ssthresh; W_max = cwnd before.
    assert cc.ssthresh == 70 * MSS and cc.cwnd == 70 * MSS
    assert cc.w_max == 100


def test_cubic_fast_convergence() -> None:
    cc = cubic_after_loss(100)
    cc.on_loss(flight=70 * MSS, now=11.0)  # a second loss below the old plateau
    assert cc.w_max == pytest.approx(70 * (1 + 0.7) / 2)  # RFC 9438 §4.7


def test_cubic_window_follows_w_cubic() -> None:
    cc = cubic_after_loss(100)
    rtt = 0.1
    k = ((100 - 70) / 0.4) ** (1 / 3)  # RFC 9438 Figure 2, cwnd_epoch = 70
    cc.on_ack(MSS, 20.0, rtt)  # the epoch starts here
    assert cc.k == pytest.approx(k)
    w = cc._cwnd_seg
    now = 20.0
    for _ in range(200):
        now += 0.01
        t = now - 20.0
        target = 0.4 * (t + rtt - k) ** 3 + 100  # RFC 9438 Figure 1 at t + RTT
        target = min(max(target, w), 1.5 * w)
        w_est_before = cc.w_est
        cc.on_ack(MSS, now, rtt)
        alpha = 3 * (1 - 0.7) / (1 + 0.7) if w_est_before < 100 else 1.0
        w_est = w_est_before + alpha / w  # RFC 9438 §4.3
        cubic_now = 0.4 * (t - k) ** 3 + 100
        w = w_est if cubic_now < w_est else w + (target - w) / w  # §4.3 vs §4.4/4.5
        assert cc._cwnd_seg == pytest.approx(w)
        assert cc.cwnd == int(w * MSS)
    assert cc.cwnd > 70 * MSS  # it grew back towards W_max


def test_cubic_timeout() -> None:
    cc = cubic_after_loss(100)
    cc.on_rto(flight=70 * MSS, now=12.0)
    assert cc.cwnd == MSS and cc.ssthresh == 49 * MSS  # RFC 9438 §4.8


def test_unknown_controller_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown congestion control"):
        make("vegas", MSS)


def test_cubic_holds_its_state_on_repeated_timeouts_and_restarts_with_k_0() -> None:
    cc = cubic_after_loss(100)
    cc.on_rto(flight=70 * MSS, now=12.0)
    w_max, ssthresh = cc.w_max, cc.ssthresh
    cc.on_rto(flight=MSS, now=13.0, repeated=True)  # RFC 5681 §3.1: ssthresh held
    assert (cc.w_max, cc.ssthresh, cc.cwnd) == (w_max, ssthresh, MSS)
    cc.ssthresh = 1  # straight into congestion avoidance
    cc.on_ack(MSS, 14.0, 0.1)
    assert cc.k == 0 and cc.w_max == 1.0  # RFC 9438 §4.8: W_max = cwnd at the start


def test_newreno_holds_ssthresh_on_repeated_timeouts() -> None:
    cc = NewReno(MSS)
    cc.on_rto(flight=40 * MSS, now=0.0)
    cc.on_rto(flight=MSS, now=1.0, repeated=True)
    assert cc.ssthresh == 20 * MSS and cc.cwnd == MSS


def _receiver_limited(controller: str, rounds: int) -> "h.Tcb":
    """A bulk sender whose peer advertises 20 segments and acknowledges everything each
    round: the receiver's window, not the congestion window, limits it."""
    config = TcpConfig(nodelay=True, pacing=False, congestion=controller)
    tcb = h.established(peer_wnd=20 * h.MSS, config=config)
    tcb.send(b"x" * (rounds * 20 * h.MSS))
    now = 0.0
    for _ in range(rounds):
        h.recv(tcb, now)
        now += 0.01
        h.send(tcb, h.peer(ACK, h.IRS + 1, tcb.snd_nxt, wnd=20 * h.MSS), now)
    return tcb


@pytest.mark.parametrize("controller", ["newreno", "cubic"])
def test_a_window_the_sender_does_not_use_does_not_grow(controller: str) -> None:
    # RFC 9438 §5.8, Linux tcp_is_cwnd_limited: 20 segments in flight a round; slow start
    # may take the window to twice that, and no further however many ACKs come.
    tcb = _receiver_limited(controller, rounds=80)
    assert tcb.cc.cwnd <= 2 * 20 * h.MSS + 2 * h.MSS


@pytest.mark.parametrize("controller", ["newreno", "cubic"])
def test_a_window_the_sender_fills_still_grows_in_congestion_avoidance(
        controller: str) -> None:
    tcb = h.established(peer_wnd=1 << 16, config=TcpConfig(
        nodelay=True, pacing=False, congestion=controller))
    tcb.snd_wscale = 0
    tcb.cc.ssthresh = tcb.cc.cwnd  # congestion avoidance from the start
    start = tcb.cc.cwnd
    tcb.send(b"x" * (200 * h.MSS))
    now = 0.0
    for _ in range(5):
        assert h.recv(tcb, now)  # a window's worth: cwnd-limited
        now += 0.05
        h.send(tcb, h.peer(ACK, h.IRS + 1, tcb.snd_nxt, wnd=1 << 16), now)
    assert tcb.cc.cwnd > start
