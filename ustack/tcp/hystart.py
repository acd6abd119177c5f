"""HyStart++ (RFC 9406): leave slow start when the round trip starts to grow, before the
window overshoots the path and fills its queue to overflowing.

Slow start runs in rounds (a round ends when the data sent at its start is
acknowledged). Once a round has N_RTT_SAMPLE RTT samples and its minimum has risen by
RttThresh over the last round's, the sender enters Conservative Slow Start (CSS): growth
divided by CSS_GROWTH_DIVISOR for at most CSS_ROUNDS rounds; then congestion avoidance.
If the RTT falls back below where CSS began, the exit was a false alarm and slow start
resumes. It applies to the initial slow start (ssthresh still unset), as Linux's HyStart.

The controller asks `growth(acked)` how much one ACK may add to cwnd in slow start
(L = infinity when paced, 8 segments otherwise: RFC 9406 §4.2), and `css_over()` whether
CSS has run its course.
"""

import math

MIN_RTT_THRESH = 0.004
MAX_RTT_THRESH = 0.016
MIN_RTT_DIVISOR = 8
N_RTT_SAMPLE = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5
UNPACED_L = 8  # segments per ACK at most; a paced sender takes no limit


class HyStart:
    __slots__ = ("css_baseline", "css_rounds", "current_min", "in_css", "last_min", "limit",
                 "samples", "window_end")

    def __init__(self, paced: bool) -> None:
        self.limit = math.inf if paced else float(UNPACED_L)
        self.window_end: int | None = None  # SND.NXT when the round began
        self.last_min = math.inf  # lastRoundMinRTT
        self.current_min = math.inf  # currentRoundMinRTT
        self.samples = 0  # rttSampleCount
        self.in_css = False
        self.css_baseline = math.inf  # cssBaselineMinRtt
        self.css_rounds = 0

    def on_ack(self, ack: int, snd_nxt: int, sample: float | None) -> None:
        """An ACK in slow start: close the round it ends, take its RTT sample, and decide
        on entering (or leaving) CSS (RFC 9406 §4.2)."""
        end = self.window_end
        if end is None or (ack - end) & 0xFFFF_FFFF < 0x8000_0000:  # SND.UNA >= windowEnd
            self.last_min = self.current_min
            self.current_min = math.inf
            self.samples = 0
            self.window_end = snd_nxt
            if self.in_css:
                self.css_rounds += 1
        if sample is None:
            return
        self.current_min = min(self.current_min, sample)
        self.samples += 1
        if self.samples < N_RTT_SAMPLE or math.isinf(self.current_min):
            return
        if not self.in_css:
            if math.isinf(self.last_min):
                return
            thresh = max(MIN_RTT_THRESH, min(self.last_min / MIN_RTT_DIVISOR, MAX_RTT_THRESH))
            if self.current_min >= self.last_min + thresh:
                self.in_css = True
                self.css_baseline = self.current_min
                self.css_rounds = 1  # the round CSS begins in counts towards the limit
        elif self.current_min < self.css_baseline:
            self.in_css = False  # a false alarm: back to slow start
            self.css_baseline = math.inf
            self.css_rounds = 0

    def growth(self, acked: int, mss: int) -> float:
        """Bytes one ACK of `acked` bytes adds to cwnd: min(N, L * SMSS), a quarter in CSS."""
        grown = min(float(acked), self.limit * mss)
        return grown / CSS_GROWTH_DIVISOR if self.in_css else grown

    def css_over(self) -> bool:
        """CSS has lasted CSS_ROUNDS rounds: time for congestion avoidance."""
        return self.in_css and self.css_rounds > CSS_ROUNDS
