"""The ladder: a textbook sequence diagram of each TCP connection, from live events
(`ustack.probe`) or a capture. Shared by `--trace`, `ustack ladder`, `tools/ladder.py`
and the test kit: `track` follows connections through the events, `text` and `svg`
draw them, `capture` reads pcap and pcapng files into events."""

from ustack.ladder.capture import CaptureError, capture_events, fault_event, read_capture
from ustack.ladder.svg import svg
from ustack.ladder.text import Ladder
from ustack.ladder.track import Tracker, flag_names
from ustack.probe import (
    Endpoint,
    Event,
    FaultEvent,
    RecoveryEvent,
    SegmentEvent,
    StateEvent,
    TimerEvent,
    ToxicEvent,
)

__all__ = [
    "CaptureError", "Endpoint", "Event", "FaultEvent", "Ladder", "RecoveryEvent",
    "SegmentEvent", "StateEvent", "TimerEvent", "ToxicEvent", "Tracker", "capture_events",
    "fault_event",
    "flag_names", "read_capture", "svg",
]
