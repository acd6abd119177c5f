"""What the stack's probe reports, for whoever watches (`--trace`, the test kit, a
user's own callback on `Host.probe`): each segment in or out, each state change, timer
and loss-recovery step of a connection, and what the fault injector did. The core
builds these and knows nothing of how they are shown (`ustack.ladder`)."""

from dataclasses import dataclass

from ustack.addresses import endpoint
from ustack.tcp.options import Options


@dataclass(frozen=True, slots=True)
class Endpoint:
    addr: str
    port: int

    def __str__(self) -> str:
        """`10.77.0.2:80`, or `[fd77::2]:80`."""
        return endpoint(self.addr, self.port)


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """One TCP segment seen by ustack (`outbound` True when ustack sent it)."""

    time: float  # seconds, any origin (live: the loop clock; capture: pcap time stamps)
    src: Endpoint
    dst: Endpoint
    outbound: bool
    flags: int
    seq: int
    ack: int
    wnd: int
    length: int
    opts: Options


@dataclass(frozen=True, slots=True)
class StateEvent:
    """ustack's TCB for (local, remote) moved from `old` to `new` (State names)."""

    time: float
    local: Endpoint
    remote: Endpoint
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class TimerEvent:
    """A timer of ustack's TCB fired: retransmit, persist, delayed_ack, keepalive,
    time_wait, fin_wait_2."""

    time: float
    local: Endpoint
    remote: Endpoint
    kind: str


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """A step of ustack's loss recovery (RECOVERY_NAMES), with what it concerns: a fast
    recovery begun, segments RACK found lost, a tail loss probe and its verdict, a
    reduction undone, the reordering window changed."""

    time: float
    local: Endpoint
    remote: Endpoint
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """The fault injector (`ustack.link.FaultInjector`) dropped, duplicated or corrupted
    a segment between the TUN and the stack (`outbound` True: one ustack sent)."""

    time: float
    src: Endpoint
    dst: Endpoint
    outbound: bool
    kind: str  # "dropped", "duplicated", "corrupted"
    flags: int
    seq: int
    length: int


@dataclass(frozen=True, slots=True)
class ToxicEvent:
    """A proxy's toxic (`ustack.services.toxics`) was drawn for a connection: `local` and
    `remote` are the client's connection to the proxy, `kind` the toxic, `detail` its
    settings and stream."""

    time: float
    local: Endpoint
    remote: Endpoint
    kind: str
    detail: str = ""


Event = SegmentEvent | StateEvent | TimerEvent | RecoveryEvent | FaultEvent | ToxicEvent
