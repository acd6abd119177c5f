"""The ladder: a textbook sequence diagram of each TCP connection, from live events or a
capture. Shared by `--trace`, `tools/ladder.py` and the test kit.

Events (what the stack's probe and the pcap reader produce):
"""

from dataclasses import dataclass

from ustack.tcp.options import Options


@dataclass(frozen=True, slots=True)
class Endpoint:
    addr: str
    port: int


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


Event = SegmentEvent | StateEvent | TimerEvent
