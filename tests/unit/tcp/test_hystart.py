"""HyStart++ (RFC 9406): slow start ends on a rising RTT, through Conservative Slow Start."""

import pytest

from ustack.tcp import hystart
from ustack.tcp.congestion import NO_SSTHRESH, Cubic, NewReno
from ustack.tcp.hystart import HyStart

MSS = 1000


def round_of(hs: HyStart, start: int, rtt: float, n: int = 8) -> int:
    """One round: `n` ACKs of one segment each with RTT `rtt`; returns the next start."""
    for i in range(1, n + 1):
        hs.on_ack(start + i * MSS, start + 100 * MSS, rtt)
    return start + 100 * MSS


def test_a_steady_rtt_keeps_slow_start() -> None:
    hs = HyStart(paced=True)
    start = 0
    for _ in range(5):
        start = round_of(hs, start, 0.050)
    assert not hs.in_css
    assert hs.growth(3 * MSS, MSS) == 3 * MSS  # L = infinity when paced


def test_an_rtt_rise_beyond_the_threshold_enters_css_then_congestion_avoidance() -> None:
    hs = HyStart(paced=True)
    start = round_of(hs, 0, 0.050)
    start = round_of(hs, start, 0.050 + 0.0063)  # + max(4 ms, min(50/8 ms, 16 ms))
    assert hs.in_css
    assert hs.growth(4 * MSS, MSS) == MSS  # a quarter of the growth (CSS_GROWTH_DIVISOR)
    for _ in range(hystart.CSS_ROUNDS - 1):
        assert not hs.css_over()
        start = round_of(hs, start, 0.0563)
    start = round_of(hs, start, 0.0563)
    assert hs.css_over()


def test_a_rise_below_the_threshold_is_jitter() -> None:
    hs = HyStart(paced=True)
    start = round_of(hs, 0, 0.050)
    round_of(hs, start, 0.050 + 0.0060)
    assert not hs.in_css


def test_an_rtt_back_below_the_baseline_resumes_slow_start() -> None:
    hs = HyStart(paced=True)
    start = round_of(hs, 0, 0.050)
    start = round_of(hs, start, 0.060)
    assert hs.in_css
    round_of(hs, start, 0.055)  # below cssBaselineMinRtt (60 ms): a false alarm
    assert not hs.in_css


def test_fewer_than_eight_samples_decide_nothing() -> None:
    hs = HyStart(paced=True)
    start = round_of(hs, 0, 0.050)
    round_of(hs, start, 0.100, n=hystart.N_RTT_SAMPLE - 1)
    assert not hs.in_css


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_the_controllers_leave_slow_start_when_css_is_over(cls) -> None:
    cc = cls(MSS, paced=True)
    start, rtt = 0, 0.050
    for r in range(12):
        for i in range(1, 9):
            cc.on_ack(MSS, 0.0, rtt, start + i * MSS, start + 100 * MSS, rtt)
        start += 100 * MSS
        if r == 1:
            rtt = 0.070  # the queue starts to fill
    assert cc.ssthresh == pytest.approx(cc.cwnd, abs=MSS)  # exited into avoidance
    assert cc.cwnd < 10 * MSS + 12 * 8 * MSS  # well short of plain slow start's growth


def test_a_low_rtt_in_a_round_the_window_did_not_limit_is_no_false_alarm() -> None:
    # The application sent less, the queue drained: that says nothing of the path.
    hs = HyStart(paced=True)
    start = round_of(hs, 0, 0.050)
    start = round_of(hs, start, 0.060)
    assert hs.in_css
    for i in range(1, 9):
        hs.on_ack(start + i * MSS, start + 100 * MSS, 0.050, cwnd_limited=False)
    assert hs.in_css


def test_an_rtt_rising_again_in_css_ends_it_at_once() -> None:
    hs = HyStart(paced=True)
    start = round_of(hs, 0, 0.050)
    start = round_of(hs, start, 0.060)
    assert hs.in_css and not hs.css_over()
    round_of(hs, start, 0.060 + 0.0076)  # + max(4 ms, min(60/8 ms, 16 ms))
    assert hs.css_over()


def test_a_queue_creeping_up_by_less_than_the_threshold_a_round_still_ends_it() -> None:
    # Each round 3 ms more than the last (under RttThresh's 4 ms), but 4 ms over the
    # connection's least RTT by the third: Linux's delay_min rule.
    hs = HyStart(paced=True)
    start = 0
    for rtt in (0.004, 0.007, 0.0075):
        start = round_of(hs, start, rtt)
        assert not hs.in_css
    round_of(hs, start, 0.008)
    assert hs.in_css


def test_a_round_at_twice_the_path_rtt_leaves_slow_start_without_css() -> None:
    # A 0.26 ms path behind a 30 ms queue: the first round past RttThresh is already at
    # 11.6 ms. The queue holds more than the path, so congestion avoidance keeps it full;
    # CSS's rounds would only have grown the queue until it overflowed.
    hs = HyStart(paced=True)
    start = 0
    for rtt in (0.00026, 0.0006, 0.0016, 0.0039):
        start = round_of(hs, start, rtt)
        assert not hs.in_css
    round_of(hs, start, 0.0116)
    assert hs.css_over()


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_after_css_a_slow_start_after_a_timeout_grows_at_the_full_rate(cls) -> None:
    # The controller leaves slow start on the doubled RTT (ssthresh = cwnd); after a
    # timeout, slow start up to the new ssthresh is RFC 5681's, not CSS's quarter.
    cc = cls(MSS, paced=True)
    start = 0
    for rtt in (0.00026, 0.0006, 0.0016, 0.0039, 0.0116):
        for i in range(1, 9):
            cc.on_ack(MSS, 0.0, rtt, start + i * MSS, start + 100 * MSS, rtt)
        start += 100 * MSS
    assert cc.ssthresh != NO_SSTHRESH and cc.ssthresh == pytest.approx(cc.cwnd, abs=MSS)
    cc.on_rto(cc.cwnd, 1.0)
    assert cc.cwnd == MSS < cc.ssthresh
    cc.on_ack(MSS, 1.1, 0.01, start + MSS, start + 100 * MSS, 0.01)
    assert cc.cwnd == 2 * MSS
