"""Link middleware between the TUN device and the host: pcap capture (`pcap`), fault
injection (`faults`, per wire segment: `segmentation` cuts the offloads' super-packets),
shaping (`shaper`: a rate with a bounded queue, Gilbert–Elliott loss), named links made
of both (`presets`), faults that know TCP (`rules`, following connections from the wire
with `track`), taps and pipelines (`stage`).

Sans-IO like the TCP core: no asyncio, no clock reads; `now` (the core's monotonic
clock) is passed in. Every stage has the same small interface (smoltcp's `phy::Device`
middleware: `fault_injector.rs`, `pcap_writer.rs`, `tracer.rs`):

    rx(packet, now)  -> packets to pass on toward the host (device -> host)
    tx(packet, now)  -> packets to pass on toward the device (host -> device)
    poll(now)        -> (rx, tx): packets it held back that are due now
    next_deadline()  -> when poll next has something to release, or None
    drain(now)       -> (rx, tx): everything still held, at once (reconfiguration, exit)
    close()          -> release files

A `Pipeline` is itself a stage, so pipelines nest. Stage 0 is the one closest to the
device: inbound packets go through the stages in order, outbound ones in reverse.

The order that `ustack.api.Stack` builds is device - pcap - shaper - faults - host (as
smoltcp's `examples/utils.rs` stacks them: the pcap writer wraps the device, the fault
injector wraps both; the shaper is the bottleneck's queue on the wire side of them). The
capture then shows what crossed the TUN, i.e. what the kernel's side sent and received,
exactly as `tcpdump -i ustack0` in the namespace would: an inbound packet the injector
drops is in the capture (the kernel did send it) but the host never saw it; an outbound
packet it drops is not (the kernel never got it); corrupted packets appear as ustack
sent them on receive, and corrupted as the kernel got them on transmit.
"""

from ustack.link.faults import (
    DIRECTIONS,
    DISTRIBUTIONS,
    FAULT_COUNTERS,
    REORDER_MS,
    FaultInjector,
    check_millis,
    check_probability,
    flip_bit,
    ignored_settings,
    parse_delay,
    parse_probability,
)
from ustack.link.pcap import (
    FLUSH_INTERVAL,
    LINKTYPE_RAW,
    CaptureError,
    PcapWriter,
    merge_captures,
    merge_fault_logs,
    merge_parts,
    open_capture,
)
from ustack.link.shaper import SHAPER_COUNTERS, GilbertElliott, Shaper
from ustack.link.stage import RX, TX, Packets, Pipeline, Stage, Tap, pipeline_of

__all__ = [
    "DIRECTIONS", "DISTRIBUTIONS", "FAULT_COUNTERS", "FLUSH_INTERVAL", "LINKTYPE_RAW",
    "REORDER_MS", "RX", "SHAPER_COUNTERS", "TX", "CaptureError", "FaultInjector",
    "GilbertElliott", "Packets", "PcapWriter", "Pipeline", "Shaper", "Stage", "Tap",
    "check_millis", "check_probability", "flip_bit", "ignored_settings", "merge_captures",
    "merge_fault_logs", "merge_parts", "open_capture", "parse_delay", "parse_probability",
    "pipeline_of",
]
