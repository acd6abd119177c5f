"""Congestion control behind one small interface: NewReno (RFC 5681, RFC 6582) and
CUBIC (RFC 9438, the default). Windows are in bytes; `mss` is the sender's SMSS.

The TCB calls:
- `on_ack(acked, now, rtt, ack, snd_nxt, sample, cwnd_limited)` when new data is
  acknowledged outside loss recovery (the ACK, SND.NXT and this ACK's own RTT sample
  drive HyStart++ in slow start, `ustack.tcp.hystart`); the window grows only when
  `cwnd_limited` (the TCB's congestion window validation);
- `on_loss(flight, now)` when it enters fast recovery (3 duplicate ACKs or SACK loss);
- `on_recovery_exit(flight)` when the recovery point is acknowledged;
- `on_rto(flight, now)` when the retransmission timer expires.
Loss recovery itself (what to resend, window inflation) lives in the TCB.
"""

from collections.abc import Callable
from typing import Any, Protocol

from ustack.tcp.hystart import HyStart

INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928
NO_SSTHRESH = 1 << 62  # RFC 5681 §3.1: initially "arbitrarily high"


class Controller(Protocol):
    name: str
    mss: int
    cwnd: int
    ssthresh: int

    def set_mss(self, mss: int) -> None: ...
    def on_ack(self, acked: int, now: float, rtt: float | None, ack: int | None = None,
               snd_nxt: int = 0, sample: float | None = None,
               cwnd_limited: bool = True) -> None: ...
    def on_loss(self, flight: int, now: float) -> None: ...
    def on_recovery_exit(self, flight: int) -> None: ...
    def on_rto(self, flight: int, now: float, repeated: bool = False) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class _Undoable:
    """A controller's whole state can be kept and put back: a reduction that proves
    spurious is undone (RFC 4015; Linux tcp_undo_cwnd_reduction). The state is the
    subclass's `__slots__` (a controller per connection: no __dict__), named again in
    `_STATE` (a compiled class has no `__slots__` attribute to read)."""

    __slots__: tuple[str, ...] = ()
    _STATE: tuple[str, ...] = ()

    def snapshot(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def resize(cc: Controller, mss: int) -> None:
    """The segment size changed mid-connection (the path's MTU fell): the window and
    ssthresh keep their count of segments, as Linux's do (it counts them in packets,
    tcp_sync_mss), not their bytes, which in smaller segments would be a burst the path
    never carried. CUBIC's own state is in segments already."""
    cc.cwnd = max(mss, cc.cwnd * mss // cc.mss)
    if cc.ssthresh != NO_SSTHRESH:
        cc.ssthresh = max(2 * mss, cc.ssthresh * mss // cc.mss)
    cc.mss = mss


def _slow_start_growth(cc: "NewReno | Cubic", acked: int, ack: int | None, snd_nxt: int,
                       sample: float | None, cwnd_limited: bool) -> float:
    """Bytes this ACK adds in slow start; HyStart++ watches the initial one (RFC 9406)."""
    hystart = cc.hystart
    if cc.ssthresh == NO_SSTHRESH and ack is not None:
        hystart.on_ack(ack, snd_nxt, sample, cwnd_limited)
    return hystart.growth(acked, cc.mss)


_NEWRENO_STATE: tuple[str, ...] = ("bytes_acked", "cwnd", "hystart", "mss", "ssthresh")


class NewReno(_Undoable):
    name = "newreno"

    __slots__ = _NEWRENO_STATE
    _STATE = _NEWRENO_STATE

    def __init__(self, mss: int, paced: bool = False) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = NO_SSTHRESH
        self.hystart = HyStart(paced)
        self.bytes_acked = 0  # RFC 5681 §3.1: acknowledged in congestion avoidance

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss

    def on_ack(self, acked: int, now: float, rtt: float | None, ack: int | None = None,
               snd_nxt: int = 0, sample: float | None = None,
               cwnd_limited: bool = True) -> None:
        if self.cwnd < self.ssthresh:
            # RFC 5681 (2) slow start, with RFC 9406's L (what one ACK may add) and CSS.
            growth = _slow_start_growth(self, acked, ack, snd_nxt, sample, cwnd_limited)
            if cwnd_limited:
                self.cwnd += int(growth)
            if self.hystart.css_over():
                self.ssthresh = self.cwnd  # RFC 9406 §4.2: CSS done, congestion avoidance
        elif cwnd_limited:  # an unused window is not grown (Linux tcp_cong_avoid)
            # RFC 5681 §3.1, its RECOMMENDED byte counting: one SMSS each time a window's
            # worth of bytes is acknowledged (Linux tcp_cong_avoid_ai counts segments the
            # same way). Formula (3), SMSS*SMSS/cwnd per ACK, grows half as fast behind a
            # receiver that ACKs every second segment: 0.67 of Linux's Reno under loss.
            self.bytes_acked += acked
            if self.bytes_acked >= self.cwnd:
                self.bytes_acked -= self.cwnd
                self.cwnd += self.mss

    def on_loss(self, flight: int, now: float) -> None:
        # RFC 5681 (4) / RFC 6582 §3.2 step 2: ssthresh = max(FlightSize / 2, 2*SMSS).
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self.bytes_acked = 0

    def on_recovery_exit(self, flight: int) -> None:
        # RFC 6582 §3.2 step 3, option (1): cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
        self.cwnd = min(self.ssthresh, max(flight, self.mss) + self.mss)

    def on_rto(self, flight: int, now: float, repeated: bool = False) -> None:
        # RFC 5681 (4) and §3.1: the loss window is one segment; ssthresh is held when
        # a retransmission times out again.
        if not repeated:
            self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.bytes_acked = 0


CUBIC_C = 0.4  # RFC 9438 §5: C
CUBIC_BETA = 0.7  # RFC 9438 §4.6: beta_cubic
CUBIC_ALPHA = 3 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA)  # RFC 9438 §4.3: alpha_cubic
_CUBIC_STATE: tuple[str, ...] = ("_after_timeout", "_cwnd_prior", "_cwnd_seg", "cwnd",
                                 "cwnd_epoch", "epoch_start", "hystart", "k", "mss",
                                 "ssthresh", "w_est", "w_max")


class Cubic(_Undoable):
    """RFC 9438. Internally in segments (floats), as the RFC's formulas are."""

    name = "cubic"
    C = CUBIC_C
    BETA = CUBIC_BETA
    ALPHA = CUBIC_ALPHA

    __slots__ = _CUBIC_STATE
    _STATE = _CUBIC_STATE

    def __init__(self, mss: int, paced: bool = False) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = NO_SSTHRESH
        self.hystart = HyStart(paced)
        self.w_max = 0.0  # segments: the window before the last reduction
        self.k = 0.0
        self.epoch_start: float | None = None
        self.cwnd_epoch = 0.0
        self.w_est = 0.0
        self._cwnd_prior = 0.0
        self._after_timeout = False
        self._cwnd_seg = float(INITIAL_WINDOW_SEGMENTS)  # cwnd in segments, fractional

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self._cwnd_seg = float(INITIAL_WINDOW_SEGMENTS)
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss

    def w_cubic(self, t: float) -> float:
        """RFC 9438 Figure 1: W_cubic(t) = C * (t - K)**3 + W_max."""
        return self.C * (t - self.k) ** 3 + self.w_max

    def on_ack(self, acked: int, now: float, rtt: float | None, ack: int | None = None,
               snd_nxt: int = 0, sample: float | None = None,
               cwnd_limited: bool = True) -> None:
        segs_acked = acked / self.mss
        if self.cwnd < self.ssthresh:
            # RFC 9438 §4.10: slow start as RFC 5681, here with HyStart++ (RFC 9406).
            growth = _slow_start_growth(self, acked, ack, snd_nxt, sample, cwnd_limited)
            if cwnd_limited:
                self._cwnd_seg += growth / self.mss
                self._set_cwnd()
            if self.hystart.css_over():
                self.ssthresh = self.cwnd
            return
        if not cwnd_limited:
            return  # RFC 9438 §5.8: an application- or receiver-limited flow does not grow
        if self.epoch_start is None:
            # A congestion-avoidance stage begins (RFC 9438 §4.2).
            self.epoch_start = now
            self.cwnd_epoch = self._cwnd_seg
            self.w_est = self._cwnd_seg
            if self.w_max < self._cwnd_seg or self._after_timeout:
                # No loss yet, past the old plateau, or after a timeout (RFC 9438 §4.8):
                # W_max = cwnd at the start of the stage, so K = 0.
                self.w_max = self._cwnd_seg
            self._after_timeout = False
            self.k = ((self.w_max - self.cwnd_epoch) / self.C) ** (1 / 3)  # RFC 9438 Figure 2
        t = now - self.epoch_start
        # RFC 9438 §4.3: the Reno-friendly estimate, alpha_cubic until W_est reaches the
        # window before the reduction, then 1.
        alpha = self.ALPHA if self.w_est < self._cwnd_prior else 1.0
        self.w_est += alpha * segs_acked / self._cwnd_seg
        if self.w_cubic(t) < self.w_est:
            self._cwnd_seg = self.w_est  # Reno-friendly region
        else:
            # RFC 9438 §4.4-4.5: aim at W_cubic(t + RTT), between cwnd and 1.5 cwnd.
            target = self.w_cubic(t + (rtt or 0.0))
            target = min(max(target, self._cwnd_seg), 1.5 * self._cwnd_seg)
            self._cwnd_seg += (target - self._cwnd_seg) / self._cwnd_seg * segs_acked
        self._set_cwnd()

    def _reduce(self, flight: int) -> None:
        cwnd = self._cwnd_seg
        # RFC 9438 §4.7, fast convergence: release bandwidth when the plateau dropped.
        self.w_max = cwnd * (1 + self.BETA) / 2 if cwnd < self.w_max else cwnd
        self._cwnd_prior = cwnd
        # RFC 9438 Figure 5: ssthresh = flight_size * beta_cubic, at least 2 segments.
        self.ssthresh = max(int(flight * self.BETA), 2 * self.mss)
        self.epoch_start = None

    def on_loss(self, flight: int, now: float) -> None:
        self._reduce(flight)
        self._cwnd_seg = max(self.ssthresh / self.mss, 2.0)
        self._set_cwnd()

    def on_recovery_exit(self, flight: int) -> None:
        self._cwnd_seg = self.ssthresh / self.mss
        self._set_cwnd()

    def on_rto(self, flight: int, now: float, repeated: bool = False) -> None:
        # RFC 9438 §4.8: as for a loss (once per timeout sequence), then the RFC 5681 loss
        # window of one segment; the next congestion avoidance starts afresh, K = 0.
        if not repeated:
            self._reduce(flight)
        self._after_timeout = True
        self._cwnd_seg = 1.0
        self._set_cwnd()

    def _set_cwnd(self) -> None:
        self.cwnd = max(self.mss, int(self._cwnd_seg * self.mss))


CONTROLLERS: dict[str, Callable[[int, bool], Controller]] = {"newreno": NewReno,
                                                              "cubic": Cubic}


def make(name: str, mss: int, paced: bool = False) -> Controller:
    try:
        return CONTROLLERS[name](mss, paced)
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r} "
                         f"(expected one of: {', '.join(CONTROLLERS)})") from None
