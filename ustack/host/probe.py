"""The host's probe: its segments, state changes, timers and recovery steps as the
events of `ustack.probe`, for a sink (the ladder's `feed`, a test's list). Sans-IO: the
host tells it the time (`now`) as it goes."""

from collections.abc import Callable

from ustack.addresses import ntop
from ustack.probe import Endpoint, Event, RecoveryEvent, SegmentEvent, StateEvent, TimerEvent
from ustack.tcp.segment import Segment
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb


def ignore(event: Event) -> None:
    """A probe's sink when there is none."""


class HostProbe:
    def __init__(self, local_for: Callable[[bytes], bytes],
                 sink: Callable[[Event], None]) -> None:
        self.local_for = local_for  # the host's: our address in a connection with a peer
        self.sink = sink
        self.now = 0.0

    def watch(self, tcb: Tcb) -> None:
        """Report `tcb`'s state changes, timers and recovery steps from now on."""
        tcb.on_state_change = self.state
        tcb.on_timer_fired = self.timer
        tcb.on_recovery = self.recovery

    def segment(self, src: bytes, dst: bytes, seg: Segment, outbound: bool) -> None:
        self.sink(SegmentEvent(
            self.now, Endpoint(ntop(src), seg.src_port),
            Endpoint(ntop(dst), seg.dst_port), outbound, seg.flags, seg.seq,
            seg.ack, seg.wnd, len(seg.payload), seg.opts))

    def _endpoints(self, tcb: Tcb) -> tuple[Endpoint, Endpoint]:
        return (Endpoint(ntop(self.local_for(tcb.remote_addr)), tcb.local_port),
                Endpoint(ntop(tcb.remote_addr), tcb.remote_port))

    def state(self, tcb: Tcb, old: State, new: State) -> None:
        # A passive TCB is born of a listener: its first transition leaves LISTEN.
        was = State.LISTEN if tcb.passive and old is State.CLOSED else old
        self.sink(StateEvent(self.now, *self._endpoints(tcb), str(was), str(new)))

    def time_wait_end(self, remote: bytes, remote_port: int, local_port: int,
                      timer: bool) -> None:
        """A TIME-WAIT record is gone: its timer expired, a RST or SYN ended it, or it
        never entered the full table."""
        ends = (Endpoint(ntop(self.local_for(remote)), local_port),
                Endpoint(ntop(remote), remote_port))
        if timer:
            self.sink(TimerEvent(self.now, *ends, "time_wait"))
        self.sink(StateEvent(self.now, *ends, str(State.TIME_WAIT), str(State.CLOSED)))

    def timer(self, tcb: Tcb, kind: str) -> None:
        self.sink(TimerEvent(self.now, *self._endpoints(tcb), kind))

    def recovery(self, tcb: Tcb, kind: str, detail: str) -> None:
        self.sink(RecoveryEvent(self.now, *self._endpoints(tcb), kind, detail))
