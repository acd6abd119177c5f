"""HyStart++ (RFC 9406): leave slow start when the round trip starts to grow, before the
window overshoots the path and fills its queue to overflowing.

Slow start runs in rounds (a round ends when the data sent at its start is
acknowledged). Once a round has N_RTT_SAMPLE RTT samples and its minimum has risen by
RttThresh over the last round's (or over the connection's least RTT, as in Linux), the
sender enters Conservative Slow Start (CSS): growth divided by CSS_GROWTH_DIVISOR for at
most CSS_ROUNDS rounds, or until the RTT rises by RttThresh again over where CSS began;
then congestion avoidance (at once, with no CSS rounds, when the RTT has already doubled).
If the RTT falls back below where CSS began, the exit was a false alarm and slow start
resumes, unless the round was not limited by the window (the application or the
receiver kept the sender short): its queue drained because less was sent, which says
nothing of the path. Through a 30 ms tail-drop queue an application-limited round in CSS
sent a sender back to slow start with a 1 MB window, and 200-500 segments were lost. It
applies to the initial slow start (ssthresh still unset), as Linux's HyStart.

The controller asks `growth(acked)` how much one ACK may add to cwnd in slow start
(L = infinity when paced, 8 segments otherwise: RFC 9406 §4.2), and `css_over()` whether
CSS has run its course.
"""

import math

from ustack.tcp import seq

MIN_RTT_THRESH = 0.004
MAX_RTT_THRESH = 0.016
MIN_RTT_DIVISOR = 8
N_RTT_SAMPLE = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5
UNPACED_L = 8  # segments per ACK at most; a paced sender takes no limit
QUEUE_OVER_PATH = 2  # a round's least RTT this many times the path's: the queue is long


def _rtt_thresh(base: float) -> float:
    """RFC 9406 §4.2 RttThresh: max(MIN_RTT_THRESH, min(base / 8, MAX_RTT_THRESH))."""
    return max(MIN_RTT_THRESH, min(base / MIN_RTT_DIVISOR, MAX_RTT_THRESH))


class HyStart:
    __slots__ = ("css_baseline", "css_rounds", "current_min", "in_css", "last_min", "limit",
                 "min_rtt", "round_limited", "samples", "window_end")

    def __init__(self, paced: bool) -> None:
        self.limit = math.inf if paced else float(UNPACED_L)
        self.window_end: int | None = None  # SND.NXT when the round began
        self.last_min = math.inf  # lastRoundMinRTT
        self.current_min = math.inf  # currentRoundMinRTT
        self.samples = 0  # rttSampleCount
        self.in_css = False
        self.css_baseline = math.inf  # cssBaselineMinRtt
        self.css_rounds = 0
        self.round_limited = True  # the window limited the sender all this round
        self.min_rtt = math.inf  # the least RTT of the connection so far (Linux delay_min)

    def on_ack(self, ack: int, snd_nxt: int, sample: float | None,
               cwnd_limited: bool = True) -> None:
        """An ACK in slow start: close the round it ends, take its RTT sample, and decide
        on entering (or leaving) CSS (RFC 9406 §4.2). `cwnd_limited`: whether the window
        limits the sender now (the TCB's congestion window validation)."""
        end = self.window_end
        if end is None or seq.ge(ack, end):  # SND.UNA >= windowEnd
            self.last_min = self.current_min
            self.current_min = math.inf
            self.samples = 0
            self.round_limited = True
            self.window_end = snd_nxt
            if self.in_css:
                self.css_rounds += 1
        if not cwnd_limited:
            self.round_limited = False
        if sample is None:
            return
        self.current_min = min(self.current_min, sample)
        self.min_rtt = min(self.min_rtt, sample)
        self.samples += 1
        if self.samples < N_RTT_SAMPLE or math.isinf(self.current_min):
            return
        if not self.in_css:
            if math.isinf(self.last_min):
                return
            # RFC 9406 compares with the last round only; Linux's HyStart (hystart_update)
            # with the connection's minimum (delay_min). Both, here: a queue that grows
            # by less than RttThresh a round (3.5, 4.9, 6.8, 8.2 ms ...) never trips the
            # first, and through a 30 ms tail-drop queue slow start overflowed it.
            if (self.current_min >= self.last_min + _rtt_thresh(self.last_min)
                    or self.current_min >= self.min_rtt + _rtt_thresh(self.min_rtt)):
                self.in_css = True
                self.css_baseline = self.current_min
                self.css_rounds = 1  # the round CSS begins in counts towards the limit
                if self.current_min >= QUEUE_OVER_PATH * self.min_rtt:
                    # A deviation (RFC 9406 §4.3 leaves CSS to tuning): the RTT is at
                    # least twice the path's, so the queue already holds more than the
                    # path does and cwnd is over twice what fills it. Leaving slow start
                    # now cannot leave the path idle, which is the cost CSS guards
                    # against; CSS's x3 would only grow the queue (BENCHMARKS.md, eighth
                    # session: it overflowed a 30 ms queue the kernel's CUBIC never
                    # filled). On a path under 4 ms (RttThresh's floor) every exit is of
                    # this kind: slow start ends at the first rise, as in Linux's
                    # HyStart, which has no CSS.
                    self._leave()
        elif self.current_min < self.css_baseline and self.round_limited:
            self.in_css = False  # a false alarm: back to slow start
            self.css_baseline = math.inf
            self.css_rounds = 0
        elif self.current_min >= self.css_baseline + _rtt_thresh(self.css_baseline):
            # A deviation (RFC 9406 §4.3 leaves the CSS constants to tuning): the RTT
            # rose by the threshold again within CSS, so the queue is still building and
            # the exit was no false alarm; congestion avoidance now, as Linux's HyStart
            # goes at the first rise. CSS's 5 rounds of x1.25 (3x in all) overflowed a
            # 30 ms tail-drop queue that the kernel's CUBIC never filled.
            self._leave()

    def _leave(self) -> None:
        """Congestion avoidance at the next `css_over()`, without more CSS rounds."""
        self.css_rounds = CSS_ROUNDS + 1

    def growth(self, acked: int, mss: int) -> float:
        """Bytes one ACK of `acked` bytes adds to cwnd: min(N, L * SMSS), a quarter in CSS."""
        grown = min(float(acked), self.limit * mss)
        return grown / CSS_GROWTH_DIVISOR if self.in_css else grown

    def css_over(self) -> bool:
        """CSS has lasted CSS_ROUNDS rounds, or was cut short: time for congestion
        avoidance (the controller sets ssthresh). CSS ends with it: a later slow start,
        after a timeout, grows at the full rate (RFC 9406 §4.3: HyStart++ is for the
        initial slow start)."""
        if self.in_css and self.css_rounds > CSS_ROUNDS:
            self.in_css = False
            return True
        return False
