"""A TCP proxy with toxics (toxiproxy's idea, over ustack): each connection accepted on
the proxy's port is forwarded to an upstream server, and the stream on its way goes
through the toxics in force (`ustack.services.toxics`), in the order they were added.

Plain asyncio protocols on both legs: the proxy opens its upstream connections with
whatever `connect` it is given (`Stack.create_connection`), so over ustack both legs
cross ustack's link, where packet faults and shaping act too (`Stack.create_proxy` keeps
them off the upstream leg by default).

Each direction is a `Pipe`: chunks queue with the time they arrived, and one task
delivers them, each toxic in turn holding, cutting or ending the stream. Latency counts
from a chunk's arrival, so chunks in flight are delayed side by side, not one after the
other. The source is paused while more than `HIGH_WATER` bytes wait, and the pipe waits
while its destination's transport is paused: memory stays bounded and TCP's flow
control reaches the sender, as a proxy's socket buffers do.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from ustack.addresses import endpoint, parse_endpoint
from ustack.services.toxics import Toxic, parse_toxic

HIGH_WATER = 1 << 20  # bytes queued in one direction before its source is paused
LOW_WATER = HIGH_WATER // 4
RESET_GRACE = 0.01  # seconds between the last data passed on and a reset passed on
PROXY_COUNTERS = ("proxy_connections", "proxy_upstream_failed")

PREFIX = "proxy="  # a proxy's service name: proxy=ADDRESS:PORT, its upstream


def parse_proxy_spec(text: str) -> tuple[str, int]:
    """`proxy:8080=10.77.0.1:8000` as (`proxy=10.77.0.1:8000`, 8080): the service's name
    (which says its upstream) and its port. ValueError saying what is wrong."""
    head, sep, target = text.partition("=")
    name, colon, port_text = head.partition(":")
    if name.strip().lower() != "proxy" or not sep or not colon:
        raise ValueError(f"{text!r} is not proxy:PORT=ADDRESS:PORT (e.g. "
                         "proxy:8080=10.77.0.1:8000)")
    if not port_text.isdecimal() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {text!r} (expected 1..65535)")
    try:
        host, port = parse_endpoint(target)
    except ValueError as e:
        raise ValueError(f"the upstream of {text!r}: {e}") from None
    return PREFIX + endpoint(host, port), int(port_text)


def proxy_upstream(name: str) -> tuple[str, int] | None:
    """The upstream of a proxy's service name (`parse_proxy_spec`), None for another."""
    return parse_endpoint(name[len(PREFIX):]) if name.startswith(PREFIX) else None


class Listening(Protocol):
    """What a proxy's server is (`asyncio.Server`, `ustack.api.Server`)."""

    def close(self) -> None: ...


Connect = Callable[[Callable[[], asyncio.Protocol], str, int],
                   Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]


class Proxy:
    """One listening port's forwarding to `upstream` (host, port), with its toxics.

    `toxics` may change while connections run (`add_toxic`, `remove_toxic`,
    `clear_toxics`): a toxic added is drawn (its `toxicity`) for every running
    connection at once (a reset_peer's or timeout's timer starts then); one removed
    stops acting on the next chunk, and its timer is cancelled. `on_toxic(toxic,
    client_leg)` is told each time a toxic is drawn for a connection (the stack's
    ladder); `counters` counts connections and toxics applied (`toxic_latency`, ...)."""

    def __init__(self, connect: Connect, host: str, port: int, *,
                 toxics: list[Toxic] | None = None, seed: int | None = None,
                 on_toxic: Callable[[Toxic, asyncio.BaseTransport], None] | None = None,
                 ) -> None:
        self.connect = connect
        self.upstream = (host, port)
        self.toxics: list[Toxic] = list(toxics or [])
        self.counters: Counter[str] = Counter(dict.fromkeys(PROXY_COUNTERS, 0))
        self.on_toxic = on_toxic
        self.rng = random.Random(seed)
        self.connections: set[Connection] = set()
        self.server: Listening | None = None  # the listener, once serving
        self.on_close: Callable[[Proxy], None] | None = None  # the stack's, to forget it
        self._changed: asyncio.Event | None = None

    def protocol(self) -> asyncio.Protocol:
        """The listening side's protocol factory (`create_server(proxy.protocol, ...)`)."""
        return Leg(None, self)

    def add_toxic(self, toxic: Toxic | str) -> Toxic:
        added = parse_toxic(toxic) if isinstance(toxic, str) else toxic
        self.toxics.append(added)
        self._change()
        return added

    def remove_toxic(self, toxic: Toxic) -> None:
        self.toxics.remove(toxic)
        self._change()

    def clear_toxics(self) -> None:
        self.toxics.clear()
        self._change()

    def close(self) -> None:
        """Stop listening and reset every connection it forwards."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close(abort=True)
        if self.on_close is not None:
            self.on_close(self)
            self.on_close = None

    def _change(self) -> None:
        for conn in list(self.connections):
            conn.toxics_changed()
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self) -> None:
        """Wait until the toxics change."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()


class Leg(asyncio.Protocol):
    """One side of a proxied connection: the client's (accepted) or the upstream one."""

    def __init__(self, conn: Connection | None, proxy: Proxy) -> None:
        self.conn = conn
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.out: Pipe | None = None  # what this leg receives goes through it
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.conn is None:  # the client's leg: open the upstream one first
            self.conn = Connection(self.proxy, self)
            transport.pause_reading()  # type: ignore[attr-defined]
            self.conn.task = asyncio.ensure_future(self.conn.open())

    def data_received(self, data: bytes) -> None:
        if self.out is not None:
            self.out.feed(data)

    def eof_received(self) -> bool:
        if self.out is not None:
            self.out.feed_eof()
        return True  # half-closed: the other direction goes on

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if self.out is not None:
            self.out.feed_eof(reset=exc is not None)
        if self.conn is not None:
            self.conn.leg_lost(self)


class Connection:
    """A client's connection and its upstream one, with a pipe each way."""

    def __init__(self, proxy: Proxy, client: Leg) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: Leg | None = None
        self.drawn: dict[Toxic, bool] = {}
        self.task: asyncio.Future[None] | None = None
        self.timers: dict[Toxic, asyncio.TimerHandle] = {}  # reset_peer's and timeout's
        self.pipes: list[Pipe] = []
        self.closed = False
        proxy.connections.add(self)
        proxy.counters["proxy_connections"] += 1

    async def open(self) -> None:
        host, port = self.proxy.upstream
        upstream = Leg(self, self.proxy)
        # Both pipes before the upstream leg opens: a server may speak first.
        self.pipes = [Pipe(self, "downstream", upstream, self.client),
                      Pipe(self, "upstream", self.client, upstream)]
        try:
            await self.proxy.connect(lambda: upstream, host, port)
        except asyncio.CancelledError:
            raise
        except Exception:  # refused, timed out, reset, the stack closing
            # As toxiproxy: the client's connection closes when the server cannot be
            # reached (an orderly close: the client sees an empty reply).
            self.proxy.counters["proxy_upstream_failed"] += 1
            self.close()
            return
        self.upstream = upstream
        if self.closed:  # the client went, or the proxy closed, while it connected
            if upstream.transport is not None:
                upstream.transport.close()
            return
        for toxic in list(self.proxy.toxics):
            self.draw(toxic)
        if not self.closed:
            self.client.transport.resume_reading()  # type: ignore[union-attr]

    def draw(self, toxic: Toxic) -> bool:
        """Whether `toxic` acts on this connection, drawn once (its toxicity). A drawn
        reset_peer, or timeout with a time, starts its timer then."""
        hit = self.drawn.get(toxic)
        if hit is None:
            hit = self.drawn[toxic] = self.proxy.rng.random() < toxic.toxicity
            if hit:
                toxic.applied += 1
                self.proxy.counters[f"toxic_{toxic.kind}"] += 1
                if self.proxy.on_toxic is not None and self.client.transport is not None:
                    self.proxy.on_toxic(toxic, self.client.transport)
                if toxic.kind == "reset_peer" or (toxic.kind == "timeout"
                                                  and toxic["timeout"]):
                    self.timers[toxic] = asyncio.get_running_loop().call_later(
                        toxic["timeout"] / 1000, self.close, toxic.kind == "reset_peer")
        return hit

    def toxics_changed(self) -> None:
        """Toxics added act at once (their timers start); removed ones' timers stop."""
        for toxic, timer in list(self.timers.items()):
            if toxic not in self.proxy.toxics:
                timer.cancel()
                del self.timers[toxic]
        if self.upstream is not None:
            for toxic in list(self.proxy.toxics):
                self.draw(toxic)

    def leg_lost(self, leg: Leg) -> None:
        """`leg` is gone: nothing more goes to it; what it sent still goes on (its pipe
        ends with a FIN, or with a reset if it was reset)."""
        if self.upstream is None and leg is self.client:
            self.close()  # before the upstream leg opened
            return
        for pipe in self.pipes:
            if pipe.dst is leg:
                pipe.stop()
        self.pipe_done()

    def pipe_done(self) -> None:
        if all(p.done for p in self.pipes):
            self.close()

    def close(self, abort: bool = False) -> None:
        """Both legs closed (`abort`: reset, as `transport.abort()`)."""
        if self.closed and not abort:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        for timer in self.timers.values():
            timer.cancel()
        for pipe in self.pipes:
            pipe.stop()
        for leg in (self.client, self.upstream):
            if leg is not None and leg.transport is not None and not leg.closed:
                if abort:
                    leg.transport.abort()
                else:
                    leg.transport.close()


class Pipe:
    """One direction of a connection: chunks from `src` to `dst`, through the toxics."""

    def __init__(self, conn: Connection, stream: str, src: Leg, dst: Leg) -> None:
        self.conn = conn
        self.stream = stream
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[bytes, float]] = deque()
        self.queued = 0
        self.eof = False
        self.reset = False  # the source was reset: so is the destination, after the data
        self.done = False
        self.sent = 0
        self.limit_base: dict[Toxic, int] = {}  # limit_data counts from when it came
        self.next_free = 0.0  # bandwidth: when the link is free again
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        src.out = self
        self.task = asyncio.ensure_future(self.run())

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.queue.append((data, self.loop.time()))
        self.queued += len(data)
        if self.queued > HIGH_WATER and self.src.transport is not None:
            self.src.transport.pause_reading()
        self.wake.set()

    def feed_eof(self, reset: bool = False) -> None:
        self.eof = True
        self.reset = self.reset or reset
        self.wake.set()

    def stop(self) -> None:
        self.done = True
        self.queue.clear()
        if not self.task.done():
            self.task.cancel()

    async def run(self) -> None:
        try:
            while True:
                while not self.queue and not self.eof:
                    self.wake.clear()
                    await self.wake.wait()
                if not self.queue:
                    await self.end()
                    return
                data, arrived = self.queue.popleft()
                self.queued -= len(data)
                if (self.queued < LOW_WATER and self.src.transport is not None
                        and not self.src.closed):
                    self.src.transport.resume_reading()
                if not await self.through(data, arrived):
                    return
        except asyncio.CancelledError:
            pass
        except Exception:  # a failing callback (the ladder's) must not stall the stream
            self.conn.close(abort=True)
        finally:
            if not self.done:
                self.done = True
                self.conn.pipe_done()

    def toxics(self, kind: str | None = None) -> list[Toxic]:
        return [t for t in list(self.conn.proxy.toxics)
                if t.stream == self.stream and (kind is None or t.kind == kind)
                and self.conn.draw(t)]

    async def through(self, data: bytes, arrived: float) -> bool:
        """Deliver one chunk through the toxics, in the order they were added; False
        when the connection ended."""
        pieces = [data]
        pause = rate = 0.0
        limit_hit = False
        for toxic in self.toxics():
            kind = toxic.kind
            if kind == "timeout":
                return True  # as toxiproxy: the data is dropped while it is on
            if kind == "latency":
                jitter = toxic["jitter"]
                delay = toxic["latency"] + (self.conn.proxy.rng.uniform(-jitter, jitter)
                                            if jitter else 0.0)
                await self.sleep_until(arrived + max(0.0, delay) / 1000)
            elif kind == "bandwidth":
                rate = toxic["rate"] * 1000  # bytes a second, paced as they are written
            elif kind == "limit_data":
                room = max(0, int(toxic["bytes"]) - self.sent
                           + self.limit_base.setdefault(toxic, self.sent))
                pieces, limit_hit = cut_to(pieces, room)
            elif kind == "slicer":
                pieces = [p for piece in pieces for p in self.slices(piece, toxic)]
                pause = toxic["delay"] / 1e6
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            # At a rate, in pieces of a tenth of a second's worth (as toxiproxy's).
            step = max(1, int(rate / 10)) if rate else len(piece) or 1
            for at in range(0, len(piece), step):
                part = piece[at:at + step]
                if rate:
                    self.next_free = max(self.next_free, self.loop.time()) + len(part) / rate
                    await self.sleep_until(self.next_free)
                if not await self.write(part):
                    return False
        if limit_hit:
            self.conn.close()
            return False
        return True

    def slices(self, data: bytes, toxic: Toxic) -> list[bytes]:
        size, spread = int(toxic["average_size"]), int(toxic["size_variation"])
        out = []
        i = 0
        while i < len(data):
            n = max(1, size + (self.conn.proxy.rng.randint(-spread, spread) if spread else 0))
            out.append(data[i:i + n])
            i += n
        return out

    async def write(self, data: bytes) -> bool:
        if self.dst.closed or self.dst.transport is None or self.dst.transport.is_closing():
            return False
        if data:
            self.dst.transport.write(data)
            self.sent += len(data)
        await self.dst.writable.wait()
        return not self.dst.closed

    async def end(self) -> None:
        """The source's end of stream, passed on (after a slow_close's delay): a FIN,
        or a reset when the source was reset. Not while a timeout toxic is on: it
        keeps the connection open (the client waits, as for a silent server)."""
        while self.toxics("timeout"):
            await self.conn.proxy.changed()
        for toxic in self.toxics("slow_close"):
            await asyncio.sleep(toxic["delay"] / 1000)
        if self.reset:
            # A moment for the stack to put what was just written on the wire first:
            # an abort discards what a transport has not sent yet.
            await asyncio.sleep(RESET_GRACE)
            self.conn.close(abort=True)
            return
        transport = self.dst.transport
        if (transport is not None and not self.dst.closed and not transport.is_closing()
                and transport.can_write_eof()):
            transport.write_eof()
        self.done = True
        self.conn.pipe_done()

    async def sleep_until(self, at: float) -> None:
        wait = at - self.loop.time()
        if wait > 0:
            await asyncio.sleep(wait)


def cut_to(pieces: list[bytes], room: int) -> tuple[list[bytes], bool]:
    """The first `room` bytes of `pieces`, and whether anything was cut off (or the
    limit reached exactly: nothing more may pass)."""
    out = []
    for piece in pieces:
        if len(piece) >= room:
            if room:
                out.append(piece[:room])
            return out, True
        out.append(piece)
        room -= len(piece)
    return out, False
