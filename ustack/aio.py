"""The asyncio driver: the only place where the core meets the event loop.

The TUN fd's reader callback drains every ready packet into the host, lets the
application see what changed, then flushes what the host wants to send in one go
(one ACK per connection per batch). One `call_at` handle serves the earliest
timer deadline of all connections and of the link middleware.

With link middleware (`ustack.link.Pipeline`: pcap, faults) inbound packets go
device -> pipeline.rx -> host.receive and outbound host.poll -> pipeline.tx -> device;
packets the pipeline held back come out of pipeline.poll in each step. Without it
(pipeline None, the default) the per-packet path is exactly the bare loop.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from ustack.host import Host
from ustack.link import Pipeline
from ustack.packet import Packet
from ustack.tcp.listener import Listener
from ustack.tcp.tcb import Tcb
from ustack.tun import MAX_BATCH

# The application's side: connections with their events (`ustack.tcp.events` bits) and
# listeners with connections to accept (`Host.take_events`).
EventSink = Callable[[list[tuple[Tcb, int]], list[Listener]], None]

# The core's clock: CLOCK_MONOTONIC with sub-microsecond resolution. The loop's own
# `time()` reads the same clock (asyncio: time.monotonic; uvloop: libuv's uv_now), so
# deadlines go to `call_at` unchanged; but uvloop caches it once per iteration in whole
# milliseconds, which would make every RTT on a local link 0 or 1 ms and every ladder row
# a round millisecond.
clock = time.monotonic
# Deliver/poll rounds per step (the application's callbacks may make new events, as an
# abort from `eof_received`); anything left runs on the next callback.
MAX_ROUNDS = 8
DRAIN_BATCHES = 4  # batches a timer wake-up reads from the device before the timers run
# Seconds timers may wait for the device to drain under a flood that never lets it:
# longer than a close storm of 10,000 connections takes to read (~1.7 s here).
TIMERS_HELD_MAX = 2.0


class Device(Protocol):
    """A TUN's interface (`ustack.tun.TunDevice`): the loop watches its file descriptor.
    A device with `attach(loop, deliver)` (and `detach()`) instead hands the driver its
    packets itself (`ustack.devices`: a memory link, a packet link, a framed stream)."""

    def fileno(self) -> int: ...
    def read_batch(self) -> list[Packet]: ...
    def write(self, packet: Packet) -> bool: ...


class Driver:
    def __init__(self, host: Host, device: Device, loop: asyncio.AbstractEventLoop,
                 on_events: EventSink, pipeline: Pipeline | None = None) -> None:
        self.host = host
        self.pipeline = pipeline
        self.device = device
        self.loop = loop
        self._on_events = on_events
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._step_scheduled = False
        self._in_step = False
        self._stopped = False
        self._timers_ran = clock()  # when due timers last ran (they wait for a drained device)
        # A TUN's batch read; None for a device that hands its packets over (`attach`).
        self._read_batch: Callable[[], list[Packet]] | None = getattr(device, "read_batch",
                                                                      None)
        host.on_wake = self._on_wake

    def _on_wake(self) -> None:
        """A user call made work for the host (`Host.on_wake`): a step soon, one for
        however many calls come before it; none needed from inside a step, which polls
        after the application's callbacks."""
        if not self._in_step:
            self.kick_later()

    def start(self) -> None:
        attach = getattr(self.device, "attach", None)
        if attach is not None:
            attach(self.loop, self._on_packets)
        else:
            self.loop.add_reader(self.device.fileno(), self._on_readable)

    def stop(self) -> None:
        """No more reads, steps or timers: the device may be closed after this (a step
        scheduled before, or a user call after, finds the driver stopped)."""
        self._stopped = True
        self.host.on_wake = None
        detach = getattr(self.device, "detach", None)
        if detach is not None:
            detach()
        else:
            self.loop.remove_reader(self.device.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        self._step(clock())

    def set_pipeline(self, pipeline: Pipeline | None) -> None:
        """Replace the link middleware. What the old pipeline still held goes on its way
        at once (it is not lost to the switch); the new one takes every packet from here.
        Safe from inside an application callback: the host hears of it on a later step."""
        old, self.pipeline = self.pipeline, pipeline
        if old is not None:
            # Only the stages that go are emptied: one kept (a shaper while the faults
            # change) keeps its queue and its schedule.
            kept = {id(stage) for stage in pipeline.stages} if pipeline is not None else set()
            write = self.device.write
            for stage in old.stages:
                if id(stage) in kept:
                    continue
                rx, tx = stage.drain(clock())
                for packet in tx:
                    write(packet)
                if rx:
                    self.loop.call_soon(self._receive_held, rx)
        self.kick_later()  # a step soon re-arms the timer for the new pipeline

    def _receive_held(self, packets: list[Packet]) -> None:
        now = clock()
        self._receive(packets, now)
        self._step(now)

    def drain_tx(self) -> None:
        """Send whatever the pipeline still holds for the device now (on exit)."""
        if self.pipeline is not None:
            _, tx = self.pipeline.drain(clock())
            write = self.device.write
            for packet in tx:
                write(packet)

    def _on_readable(self) -> None:
        now = clock()
        drained = self._read(now) < MAX_BATCH
        self._step(now, timers=drained)

    def _on_packets(self, batch: list[Packet]) -> None:
        """A device that hands its packets over (`attach`) brought a batch."""
        if self._stopped:
            return
        now = clock()
        self._take(batch, now)
        self._step(now)

    def _read(self, now: float) -> int:
        """Hand the host every packet the device holds now (one batch); how many."""
        if self._read_batch is None:
            return 0  # a device that hands its packets over has none waiting here
        batch = self._read_batch()
        self._take(batch, now)
        return len(batch)

    def _take(self, batch: list[Packet], now: float) -> None:
        """A batch from the device, through the link middleware, to the host."""
        pipeline = self.pipeline
        if pipeline is None:
            self._receive(batch, now)
        else:
            rx = pipeline.rx
            self._receive([passed for packet in batch for passed in rx(packet, now)], now)

    def _receive(self, packets: list[Packet], now: float) -> None:
        """Hand the host a batch; when a listener's accept queue fills in mid-batch, the
        application accepts before the rest (see `_accept_now`)."""
        host = self.host
        taken, n = 0, len(packets)
        while taken < n:
            taken = host.receive_batch(packets, now, taken)
            if host.accept_queue_full:
                self._accept_now()

    def _accept_now(self) -> None:
        """A listener's accept queue is full in mid-batch: the application accepts now,
        as it would on its own core beside a kernel, rather than the rest of the batch's
        handshakes being dropped (`Host.take_accepting`)."""
        self._on_events([], self.host.take_accepting())

    def _scheduled_step(self) -> None:
        self._step_scheduled = False
        if not self._stopped:
            self._step(clock())

    def _on_timer(self) -> None:
        # The loop runs handles up to one of its clock ticks early (uvloop: a millisecond):
        # the deadline is "now".
        now = max(clock(), self._timer_at or 0.0)
        self._timer = self._timer_at = None
        if self._stopped:
            return
        # What waits in the device goes first: the loop runs due timers before it polls
        # for I/O, and an ACK sitting in the device makes a retransmission timeout moot
        # (in a close storm, thousands of them would fire spuriously).
        drained = False
        for _ in range(DRAIN_BATCHES):
            if self._read(now) < MAX_BATCH:
                drained = True
                break
        self._step(now, timers=drained)

    def _step(self, now: float, timers: bool = True) -> None:
        """Deliver events, run due timers, send what is ready. Timers wait while the device
        still holds packets (a full batch was just read): any of them may make a timer
        moot. Not for ever: a flood that never lets the device drain holds them back at
        most TIMERS_HELD_MAX seconds."""
        host = self.host
        pipeline = self.pipeline
        if timers or now - self._timers_ran >= TIMERS_HELD_MAX:
            timers = True
            self._timers_ran = now
        self._in_step = True
        try:
            if pipeline is not None:
                due = pipeline.next_deadline()
                if due is not None and due <= now:
                    rx_due, tx_due = pipeline.poll(now)
                    self._receive(rx_due, now)
                    for packet in tx_due:
                        self.device.write(packet)
            for _ in range(MAX_ROUNDS):
                events, accepting = host.take_events()
                if events or accepting:
                    self._on_events(events, accepting)
                write = self.device.write
                if pipeline is None:
                    for packet in host.poll(now, timers):
                        write(packet)
                else:
                    tx = pipeline.tx
                    for packet in host.poll(now, timers):
                        for passed in tx(packet, now):
                            write(passed)
                if not host.has_events() and not host.has_pending():
                    break
        finally:
            self._in_step = False
        if host.has_events() or host.has_pending():
            self.kick_later()
        self._arm_timer()

    def kick_later(self) -> None:
        if not self._step_scheduled and not self._stopped:
            self._step_scheduled = True
            self.loop.call_soon(self._scheduled_step)

    def _arm_timer(self) -> None:
        if self._stopped:
            return
        deadline = self.host.next_deadline()
        if self.pipeline is not None:
            link_deadline = self.pipeline.next_deadline()
            if link_deadline is not None and (deadline is None or link_deadline < deadline):
                deadline = link_deadline
        if deadline is None:
            return
        # Re-arm only for an earlier deadline; a later one is served by an early
        # wake-up that finds nothing due and re-arms (gVisor timer.go).
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)
