"""What users import: `Stack`, whose methods mirror asyncio's, and a real Transport.

    async with ustack.Stack(dev="ustack0", addr="10.77.0.2") as stack:
        server = await stack.start_server(handle, port=7)
        reader, writer = await stack.open_connection("10.77.0.1", 8080)

asyncio's own StreamReader/StreamWriter and Protocol classes run unchanged on the
`Transport` below. Nothing here touches TCB fields beyond its public calls.
"""

import asyncio
import dataclasses
import errno
import ipaddress
import os
import socket
import ssl as _ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from ustack import tls, vnet
from ustack.aio import Driver, clock
from ustack.conninfo import ConnectionInfo
from ustack.heap import keep_freed_heap  # noqa: F401  (here before ustack.heap)
from ustack.ladder import Ladder, fault_event, flag_names
from ustack.link import FAULT_COUNTERS, TX, FaultInjector, PcapWriter, pipeline_of
from ustack.stack import Host
from ustack.tcp.config import TcpConfig
from ustack.tcp.listener import Listener
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb
from ustack.tun import TunDevice, TunError, route_problem

HIGH_WATER = 64 * 1024  # asyncio's _FlowControlMixin defaults
LOW_WATER = 16 * 1024
STREAM_LIMIT = 2**16

# Once our FIN is acknowledged, a closed transport is done (as a kernel socket is
# done when close() returns): the TCB finishes FIN-WAIT-2/TIME-WAIT on its own.
_DONE_AFTER_CLOSE = frozenset({State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED})

# The user closed these; their data and FIN are still on the way.
_FLUSHING = frozenset({State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class Transport(asyncio.Transport):
    """An asyncio.Transport over one ustack TCB."""

    _start_tls_compatible = True  # asyncio's marker; `Stack.start_tls` upgrades it

    def __init__(self, stack: "Stack", tcb: Tcb, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._stack = stack
        self._tcb = tcb
        self._protocol = protocol
        self._loop = stack.loop
        self._made = False
        self._reading = True
        self._closing = False
        self._eof_written = False
        self._eof_delivered = False
        self._lost = False
        self._protocol_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._linger_zero = False
        local = (stack.addr, tcb.local_port)
        remote = (socket.inet_ntoa(tcb.remote_addr), tcb.remote_port)
        self._extra: dict[str, Any] = {"peername": remote, "sockname": local, "socket": None}
        tcb.nodelay = True  # asyncio sets TCP_NODELAY on every TCP transport; so do we
        self._loop.call_soon(self._connection_made)

    # ---------------------------------------------------------- from the core

    def _connection_made(self) -> None:
        self._made = True
        self._protocol.connection_made(self)
        self._on_tcb_event()

    def _on_tcb_event(self) -> None:
        """The TCB changed: deliver data and EOF, update flow control, notice the end."""
        if not self._made or self._lost:
            return
        tcb = self._tcb
        if self._reading and not self._closing:
            if tcb.readable:
                self._deliver(tcb.read())
                self._stack._driver.kick(tcb)  # reading may open the window
            if (tcb.fin_received and not tcb.readable and not self._eof_delivered
                    and self._reading):
                self._eof_delivered = True
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
                if not keep_open:
                    self.close()
        self._maybe_resume_protocol()
        if tcb.state is State.CLOSED or (self._closing and tcb.state in _DONE_AFTER_CLOSE):
            if not self._closing and self._undelivered():
                # Reading is paused with bytes (or the EOF) still held: a kernel socket
                # stays readable after its connection ends (tcp_recvmsg copies the queue
                # before it reports sk_err), so connection_lost waits for resume_reading.
                return
            self._connection_lost(tcb.error)

    def _undelivered(self) -> bool:
        tcb = self._tcb
        return bool(tcb.readable) or (tcb.fin_received and not self._eof_delivered)

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._stack._transports.pop(self._tcb, None)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # ------------------------------------------------------ asyncio interface

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "tcp_info":
            return self._tcp_info()
        return self._extra.get(name, default)

    def _tcp_info(self) -> dict[str, Any]:
        tcb = self._tcb
        return {
            "state": tcb.state.value, "snd_una": tcb.snd_una, "snd_nxt": tcb.snd_nxt,
            "snd_wnd": tcb.snd_wnd, "rcv_nxt": tcb.rcv_nxt, "snd_mss": tcb.snd_mss,
            "srtt": tcb.rtt.srtt, "rto": tcb.rtt.rto, "cwnd": tcb.cc.cwnd,
            "retransmits": tcb.retransmits, "rcv_buf": tcb.rcv_buf_size,
            "snd_buf": tcb.snd_buf_size,
            "nodelay": tcb.nodelay, "keepalive": tcb.config.keepalive,
            "keepalive_idle": tcb.config.keepalive_idle,
            "keepalive_interval": tcb.config.keepalive_interval,
            "keepalive_count": tcb.config.keepalive_count,
        }

    # ------------------------------------------------ per-connection options

    def set_nodelay(self, enabled: bool = True) -> None:
        """Like `setsockopt(IPPROTO_TCP, TCP_NODELAY, enabled)`. On by default, as on every
        asyncio TCP transport; `set_nodelay(False)` turns Nagle's algorithm back on."""
        self._tcb.nodelay = bool(enabled)
        self._stack._driver.kick(self._tcb)  # Nagle may have held a small segment

    def set_keepalive(self, enabled: bool = True, idle: float | None = None,
                      interval: float | None = None, count: int | None = None) -> None:
        """Like `SO_KEEPALIVE` with `TCP_KEEPIDLE`, `TCP_KEEPINTVL` and `TCP_KEEPCNT`
        (seconds, seconds, probes); None keeps the connection's current value. After
        `idle` seconds without a segment from the peer, probes go every `interval`
        seconds; after `count` unanswered ones `connection_lost` gets a TimeoutError."""
        changes: dict[str, Any] = {"keepalive": bool(enabled)}
        for name, value in (("keepalive_idle", idle), ("keepalive_interval", interval),
                            ("keepalive_count", count)):
            if value is not None:
                if value <= 0:
                    raise ValueError(f"{name.removeprefix('keepalive_')} must be positive")
                changes[name] = value
        self._tcb.config = dataclasses.replace(self._tcb.config, **changes)
        self._stack._driver.kick(self._tcb)  # re-arms the connection's timers

    def set_receive_buffer(self, nbytes: int) -> None:
        """Like `SO_RCVBUF`: the bytes this connection buffers for a reader that is slow
        (or paused) before the advertised window closes. As on Linux, a buffer set this
        way is no longer autotuned. It never shrinks below what is already buffered, and
        the window already advertised is never taken back. The window scale was fixed by
        the handshake (for `TcpConfig.rcv_buf_max`), which bounds the window."""
        if nbytes <= 0:
            raise ValueError("the receive buffer must be positive")
        tcb = self._tcb
        tcb.set_receive_buffer(int(nbytes))
        self._stack._driver.kick(tcb)  # a larger buffer may open the window

    def set_linger_zero(self, enabled: bool = True) -> None:
        """Like `SO_LINGER` with `l_onoff=1, l_linger=0`: from then on `close()` works as
        `abort()`: buffered data is discarded and the peer gets a RST instead of a FIN.
        (`abort()` always ends the connection with a RST.)"""
        self._linger_zero = bool(enabled)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        # Data stays in the TCB's receive buffer, so the advertised window closes.
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.call_soon(self._on_tcb_event)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._eof_written:
            raise RuntimeError("cannot call write() after write_eof()")
        if self._lost or self._closing or not data:
            return  # asyncio drops writes to a closing transport
        self._tcb.send(data)
        self._stack._driver.kick(self._tcb)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self._eof_written or self._lost:
            return
        self._eof_written = True
        self._tcb.shutdown()
        self._stack._driver.kick(self._tcb)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        """Mirrors `asyncio.Transport.close`: buffered data is sent, then a FIN (unless
        `set_linger_zero()` was called: then it is `abort()`)."""
        if self._closing:
            return
        if self._linger_zero:
            self.abort()
            return
        self._closing = True
        self._tcb.close()  # the FIN follows whatever is still buffered
        self._stack._driver.kick(self._tcb)
        if self._tcb.state in _DONE_AFTER_CLOSE:
            self._connection_lost(self._tcb.error)

    def abort(self) -> None:
        """Mirrors `asyncio.Transport.abort`: close at once, discarding buffered data; the
        peer gets a RST (as a socket with `SO_LINGER` 0 does). `connection_lost(None)`."""
        if self._lost:
            return
        self._tcb.abort()
        self._stack._driver.kick(self._tcb)
        self._connection_lost(None)

    def _force_close(self, exc: Exception | None) -> None:
        """End the connection at once, reporting `exc` to `connection_lost` (asyncio's
        transports have this private method; its SSLProtocol calls it on a fatal TLS
        error or a shutdown timeout). Like asyncio, buffered data is discarded: RST."""
        if self._lost:
            return
        self._tcb.abort()
        self._stack._driver.kick(self._tcb)
        self._connection_lost(exc)

    def get_write_buffer_size(self) -> int:
        # What the TCB holds within its send buffer (SO_SNDBUF, autotuned) is the kernel's
        # part of a socket's buffering; only what lies beyond it is the transport's.
        return max(0, self._tcb.send_buffered - self._tcb.snd_buf_size)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and self.get_write_buffer_size() > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()


class ListeningSocket:
    """What `Server.sockets` holds: the address a listener is bound to, as a socket
    would say it (`getsockname()`, `family`, `type`)."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self, name: tuple[str, int]) -> None:
        self._name = name

    def getsockname(self) -> tuple[str, int]:
        return self._name

    def __repr__(self) -> str:
        return f"<ustack listening socket {self._name[0]}:{self._name[1]}>"


class Server:
    """The asyncio.Server interface over one ustack listener."""

    def __init__(self, stack: "Stack", listener: Listener,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._stack = stack
        self._listener = listener
        self.protocol_factory = protocol_factory
        self._closed = stack.loop.create_future()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def sockets(self) -> tuple["ListeningSocket", ...]:
        """As `asyncio.Server.sockets`: what it listens on, each with `getsockname()`
        (no kernel socket exists; these only describe the listener)."""
        if self._listener.closed:
            return ()
        return (ListeningSocket((self._stack.addr, self._listener.port)),)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack.loop

    def is_serving(self) -> bool:
        return not self._listener.closed

    def close(self) -> None:
        if not self._listener.closed:
            self._stack._host.unlisten(self._listener)
            self._stack._servers.pop(self._listener, None)
            self._stack._driver.flush()
        if not self._closed.done():
            self._closed.set_result(None)

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class Stack:
    """A ustack host on a TUN device: `async with Stack(...) as stack:`; its methods
    mirror asyncio's (`start_server`, `open_connection`, `create_server`,
    `create_connection`, `start_tls`). One `async with` per Stack.

    Arguments (all optional):

    - `dev`: the TUN device's name; opened if it exists (e.g. made by `ustack
      setup-tun`), else created (needs CAP_NET_ADMIN) and removed again on exit.
    - `addr`: this stack's IPv4 address; the kernel must route it to `dev` (checked at
      the start: a TunError says what to change).
    - `kernel_addr`: address/prefix of the kernel's side of a device the stack creates;
      an existing device keeps its own addresses.
    - `mtu`: the device's MTU (default: an existing device's, 1500 for a new one).
    - `msl`: Maximum Segment Lifetime in seconds (TIME-WAIT lasts 2 MSL); shorthand for
      `tcp=TcpConfig(msl=...)`.
    - `linger`: on exit, how long closed connections may still deliver what they hold
      before the rest are reset (seconds).
    - `tcp`: the TCP settings of every connection (`TcpConfig`: buffers, congestion
      control, SACK, timestamps, keep-alive...); per listener or connection through the
      `tcp=` argument of the asyncio-style calls.
    - `pcap`: a file to capture every packet that crosses the TUN into (classic pcap, raw
      IP). Opened only once the device is ready (a stack that cannot start leaves the
      file alone), locked while written, flushed at least every 0.1 s.
    - `trace`: a text stream (e.g. sys.stderr) that gets the ladder of every connection.
    - `offload`: checksum and TSO offloads on the device (IFF_VNET_HDR): 64 KB
      super-packets both ways.

    `stack.faults(...)` puts a seeded fault injector on the link. The link middleware
    sits device - pcap - faults - host, so the capture is what the kernel's side sent
    and received (see `ustack.link`). Errors at the start: `TunError` (the device, its
    permissions, an address the kernel cannot reach), `ustack.link.CaptureError`.
    """

    def __init__(self, dev: str = "ustack0", addr: str = "10.77.0.2", *,
                 kernel_addr: str = "10.77.0.1/24", mtu: int | None = None,
                 msl: float | None = None, linger: float = 1.0,
                 tcp: TcpConfig | None = None,
                 pcap: str | os.PathLike[str] | None = None,
                 trace: TextIO | None = None, offload: bool = False) -> None:
        self.dev = dev
        self.addr = check_own_addr(addr)
        self.kernel_addr = str(ipaddress.IPv4Interface(kernel_addr))
        self._mtu = mtu
        # TCP settings for every connection (socket options, in effect).
        self.tcp = tcp or TcpConfig()
        if msl is not None:
            self.tcp = dataclasses.replace(self.tcp, msl=msl)
        self.linger = linger  # on exit: how long closed connections may keep sending
        self._device: TunDevice | None = None
        self._device_counters: Counter[str] = Counter()  # kept after the device closes
        self._servers: dict[Listener, Server] = {}
        self._transports: dict[Tcb, Transport] = {}
        self._connecting: dict[Tcb, asyncio.Future[None]] = {}
        self.pcap = pcap
        # Checksum and TSO offloads on the TUN (IFF_VNET_HDR): the kernel and ustack
        # exchange 64 KB super-packets and leave TCP checksums to each other.
        self.offload = offload
        # trace: a stream (e.g. sys.stderr) that gets the ladder of every connection.
        self.trace = trace
        self._pcap: PcapWriter | None = None
        self._faults: FaultInjector | None = None
        self._link_header = 0  # device framing before each IP packet (set on start)
        self._fault_totals: Counter[str] = Counter()  # of injectors since replaced
        self._phase = "new"  # then "running" (inside `async with`), then "closed"
        self._ladder: Ladder | None = None
        self._fault_log: TextIO | None = None  # <pcap>.faults, once a fault happened

    async def __aenter__(self) -> "Stack":
        if self._phase != "new":
            raise RuntimeError("this Stack has already run: make a new Stack for each "
                               "`async with`")
        self.loop = asyncio.get_running_loop()
        device = self._open_device()
        if isinstance(device, TunDevice):
            # A stack the kernel cannot reach would say nothing and answer nothing.
            problem = route_problem(device.name, self.addr)
            if problem is not None:
                device.close()
                raise TunError(problem)
        if self.pcap is not None:
            # Only once the device is ours: a run that cannot start leaves the file alone.
            # The writer reads no clock: its stamps are the core's clock plus this offset.
            try:
                self._pcap = PcapWriter(self.pcap, wall_offset=time.time() - clock())
            except BaseException:
                device.close()
                raise
        self._device = device
        self._device_counters = device.counters
        self.mtu = self._device.mtu
        offload = getattr(self._device, "offload", False)
        self._host = Host(self.addr, mtu=self.mtu, config=self.tcp, offload=offload)
        self._link_header = vnet.HDR_LEN if offload else 0
        for stage in (self._pcap, self._faults):
            if stage is not None:
                stage.link_header = self._link_header
        self._ladder = None
        if self.trace is not None:
            isatty = getattr(self.trace, "isatty", lambda: False)
            self._ladder = Ladder(self.trace, color=isatty())
            self._host.probe = self._ladder.feed
        self._driver = Driver(self._host, self._device, self.loop, self._on_events,
                              pipeline_of([self._pcap, self._faults]))
        self._driver.start()
        self._phase = "running"
        return self

    def _check_running(self) -> None:
        """The asyncio calls need a running stack: a clear error, not a hang."""
        if self._phase == "new":
            raise RuntimeError("this Stack is not started: use it inside "
                               "`async with Stack(...) as stack:`")
        if self._phase == "closed":
            raise RuntimeError("this Stack is closed (its `async with` has ended)")

    def _open_device(self) -> TunDevice:
        """Open the link (a TUN device). Tests override this to run the stack over an
        in-memory device with TunDevice's `fileno`, `read_batch`, `write`, `close`, `mtu`
        and `counters`."""
        return TunDevice.open(self.dev, kernel_addr=self.kernel_addr, mtu=self._mtu,
                              offload=self.offload)

    def faults(self, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
               corrupt: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
               seed: int | None = None) -> int | None:
        """Put a seeded fault injector on the link, in both directions, replacing any
        before it; with no arguments (or all zero) remove it. Probabilities are fractions
        (0.05 = 5%). Returns the seed in use (log it to replay a run), or None when no
        faults are on. May be called before the stack starts or while it runs; packets
        the old injector held back are sent on, not lost."""
        injector = FaultInjector(loss=loss, dup=dup, reorder=reorder, corrupt=corrupt,
                                 delay_ms=delay_ms, jitter_ms=jitter_ms, seed=seed)
        injector.link_header = self._link_header
        injector.probe = self._on_fault
        new = injector if injector.active else None
        old, self._faults = self._faults, new
        if self._device is not None:  # running: the driver exists
            self._driver.set_pipeline(pipeline_of([self._pcap, new]))
        if old is not None:
            self._fault_totals.update(old.counters)
        return new.seed if new is not None else None

    def _on_fault(self, kind: str, direction: int, packet: bytes, now: float) -> None:
        """The fault injector dropped, duplicated or corrupted `packet`: into the ladder
        (`--trace`), and beside the capture in `<pcap>.faults` (a classic pcap has no
        room for a comment), one line each."""
        if self._ladder is None and self._pcap is None:
            return
        ev = fault_event(kind, bytes(memoryview(packet)[self._link_header:]),
                         direction == TX, now)
        if ev is None:
            return
        if self._ladder is not None:
            self._ladder.feed(ev)
        if self._pcap is not None and self.pcap is not None:
            if self._fault_log is None:
                self._fault_log = open(f"{os.fspath(self.pcap)}.faults", "w",  # noqa: SIM115
                                       encoding="utf-8")
            wall = now + self._pcap.wall_offset
            way = "ustack->peer" if ev.outbound else "peer->ustack"
            self._fault_log.write(
                f"{wall:.6f} {kind} {way} {ev.src.addr}:{ev.src.port} > {ev.dst.addr}:"
                f"{ev.dst.port} {flag_names(ev.flags)} seq {ev.seq} len {ev.length}\n")

    @property
    def device_created(self) -> bool:
        """Did this stack create its TUN device (and configure the kernel's side with
        `kernel_addr`)? False for a device that already existed, or before the start."""
        return bool(getattr(self._device, "created", False))

    @property
    def fault_injector(self) -> FaultInjector | None:
        """The fault injector in use, if any (its `.seed`, `.describe()`, `.counters`)."""
        return self._faults

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening; let closed connections deliver what they still hold (up to
        `linger` seconds), reset the rest, release the device."""
        if self._device is None:
            return
        self._phase = "closed"
        for server in list(self._servers.values()):
            server.close()
        deadline = self.loop.time() + self.linger
        while self.loop.time() < deadline and any(
                tcb.state in _FLUSHING for tcb in self._host.connections()):
            await asyncio.sleep(0.005)
        for tcb in self._host.connections():
            tcb.abort()
            self._host.wake(tcb)
        self._driver.flush()
        self._driver.drain_tx()  # what the fault injector delays still goes out
        for transport in list(self._transports.values()):
            transport._connection_lost(None)
        self._driver.stop()
        if self._driver.pipeline is not None:
            self._driver.pipeline.close()  # the capture is complete from here on
        if self._fault_log is not None:
            self._fault_log.close()
            self._fault_log = None
        self._device.close()
        self._device = None
        await asyncio.sleep(0)  # let connection_lost callbacks run

    def connections(self) -> list[ConnectionInfo]:
        """Every connection of this stack, as `ss -tan` lists a host's: the 4-tuple, the
        state (SYN_RCVD to TIME_WAIT), the queues, SRTT, RTO, cwnd, bytes each way and
        retransmissions (`ustack.conninfo.ConnectionInfo`). A snapshot; empty when the
        stack is not running."""
        if self._phase != "running":
            return []
        return self._host.connection_info(clock())

    def stats(self) -> dict[str, int]:
        """Every counter of the host, device, fault injector and capture; still whole
        (and final) after the stack is closed."""
        stats = self._host.stats()
        stats.update(self._device_counters)
        if self._faults is not None or self._fault_totals:
            faults = Counter(dict.fromkeys(FAULT_COUNTERS, 0))
            faults.update(self._fault_totals)
            if self._faults is not None:
                faults.update(self._faults.counters)
            stats.update(faults)
        if self._pcap is not None:
            stats.update(self._pcap.counters)
        return stats

    # -------------------------------------------------- asyncio-style calls

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: str | None = None, port: int | None = None, *,
                            backlog: int = 100, ssl: _ssl.SSLContext | None = None,
                            ssl_handshake_timeout: float | None = None,
                            ssl_shutdown_timeout: float | None = None,
                            tcp: TcpConfig | None = None) -> Server:
        """Mirrors `loop.create_server`; with `ssl` every connection is TLS (the
        handshake runs before the protocol's `connection_made`). `tcp` gives this
        listener's connections their own settings (default: the stack's `tcp`). A port
        already listening raises `OSError(errno.EADDRINUSE)`, as `bind()` does; port 0
        listens on a free ephemeral port (`server.sockets[0].getsockname()`)."""
        self._check_local(host)
        if port is None:
            raise ValueError("a port is required (0 for any free port)")
        port = check_port(port, server=True)
        sslcontext = tls.check_server_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        self._check_running()  # after the argument checks, as asyncio makes them first
        if port == 0:
            port = self._host.free_port()
        if sslcontext is not None:
            protocol_factory = tls.server_protocol_factory(
                protocol_factory, sslcontext, self.loop,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        try:
            listener = self._host.listen(port, backlog, config=tcp)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"[Errno {errno.EADDRINUSE}] error while "
                              f"attempting to bind on address ({host or self.addr!r}, "
                              f"{port}): address already in use") from None
            raise
        server = Server(self, listener, protocol_factory)
        self._servers[listener] = server
        return server

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *,
        ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        tcp: TcpConfig | None = None,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Mirrors `loop.create_connection`. With `ssl` (a context, or True for a
        default one) it returns once the TLS handshake is done: the transport is then
        the TLS one, and handshake errors (`ssl.SSLError`, a timeout) are raised.

        `tcp` gives this connection its own settings (default: the stack's `tcp`).
        Errors: `ConnectionRefusedError` when the peer answers our SYN with a RST,
        `TimeoutError` when `tcp.syn_retries` retransmitted SYNs go unanswered
        (1+2+4+... s), `ConnectionResetError` on a reset during the handshake."""
        host = check_host(host)
        port = check_port(port)
        tls_args = tls.check_client_args(ssl, host, server_hostname, ssl_handshake_timeout,
                                         ssl_shutdown_timeout)
        self._check_running()
        tcb = self._host.connect(host, port, clock(), config=tcp)
        established = self.loop.create_future()
        self._connecting[tcb] = established
        self._driver.kick(tcb)
        try:
            await established
        except asyncio.CancelledError:
            tcb.abort()
            self._driver.kick(tcb)
            raise
        finally:
            self._connecting.pop(tcb, None)
        protocol = protocol_factory()
        if tls_args is not None:
            return await self._client_tls(tcb, protocol, *tls_args, ssl_handshake_timeout,
                                          ssl_shutdown_timeout)
        transport = Transport(self, tcb, protocol)
        self._transports[tcb] = transport
        made = self.loop.create_future()
        self.loop.call_soon(made.set_result, None)  # after connection_made, as asyncio does
        await made
        return transport, protocol

    async def _client_tls(self, tcb: Tcb, protocol: asyncio.BaseProtocol,
                          sslcontext: _ssl.SSLContext | None, server_hostname: str | None,
                          handshake_timeout: float | None, shutdown_timeout: float | None,
                          ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        # asyncio's _create_connection_transport with _make_ssl_transport.
        waiter: asyncio.Future[None] = self.loop.create_future()
        ssl_protocol = tls.make_ssl_protocol(
            self.loop, protocol, sslcontext, waiter, server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout, ssl_shutdown_timeout=shutdown_timeout)
        transport = Transport(self, tcb, ssl_protocol)
        self._transports[tcb] = transport
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return ssl_protocol._app_transport, protocol

    async def start_tls(self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol,
                        sslcontext: _ssl.SSLContext, *, server_side: bool = False,
                        server_hostname: str | None = None,
                        ssl_handshake_timeout: float | None = None,
                        ssl_shutdown_timeout: float | None = None) -> asyncio.Transport:
        """Mirrors `loop.start_tls`: upgrade a ustack connection to TLS; return the new
        transport (`protocol` receives the plaintext from then on). The old transport
        must no longer be used by the caller."""
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, "
                            f"got {sslcontext!r}")
        if not isinstance(transport, Transport):
            raise TypeError(f"transport {transport!r} is not supported by start_tls() "
                            f"(only a plain ustack Transport is)")
        self._check_running()
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()
        ssl_protocol = tls.make_ssl_protocol(
            loop, protocol, sslcontext, waiter, server_side=server_side,
            server_hostname=server_hostname, call_connection_made=False,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        # Pause early so that data cannot reach ssl_protocol before its connection_made.
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = loop.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = loop.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    async def start_server(self, client_connected_cb: ClientConnected, host: str | None = None,
                           port: int | None = None, *, limit: int = STREAM_LIMIT,
                           backlog: int = 100, ssl: _ssl.SSLContext | None = None,
                           ssl_handshake_timeout: float | None = None,
                           ssl_shutdown_timeout: float | None = None,
                           tcp: TcpConfig | None = None) -> Server:
        """Mirrors `asyncio.start_server` (`tcp` as for `create_server`)."""
        self._check_running()
        loop = self.loop

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, host, port, backlog=backlog, ssl=ssl,
                                        ssl_handshake_timeout=ssl_handshake_timeout,
                                        ssl_shutdown_timeout=ssl_shutdown_timeout, tcp=tcp)

    async def open_connection(
        self, host: str, port: int, *, limit: int = STREAM_LIMIT,
        ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        tcp: TcpConfig | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Mirrors `asyncio.open_connection` (`tcp` as for `create_connection`)."""
        self._check_running()
        reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        transport, _ = await self.create_connection(
            lambda: protocol, host, port, ssl=ssl, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout, tcp=tcp)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self.loop)

    # --------------------------------------------------------- core events

    def _on_events(self, touched: list[Tcb], accepted: list[tuple[Listener, Tcb]]) -> None:
        for listener, tcb in accepted:
            listener.accept_queue.remove(tcb)
            server = self._servers.get(listener)
            try:
                if server is None:
                    raise ConnectionAbortedError("the server was closed")
                protocol = server.protocol_factory()
            except Exception as exc:
                # As asyncio's _accept_connection2: report it, drop this connection, go on
                # with the others (a mid-batch accept must not lose the rest of the batch).
                if server is not None:
                    self.loop.call_exception_handler({
                        "message": "Error on transport creation for incoming connection",
                        "exception": exc})
                tcb.abort()
                self._host.wake(tcb)
                continue
            self._transports[tcb] = Transport(self, tcb, protocol)
        for tcb in touched:
            transport = self._transports.get(tcb)
            if transport is not None:
                transport._on_tcb_event()
                continue
            waiter = self._connecting.get(tcb)
            if waiter is None or waiter.done():
                continue
            if tcb.state is State.CLOSED:
                waiter.set_exception(tcb.error or ConnectionError("connection closed"))
            elif tcb.state is not State.SYN_SENT and tcb.state is not State.SYN_RCVD:
                waiter.set_result(None)

    def _check_local(self, host: str | None) -> None:
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str or None, not {type(host).__name__}")
        if host not in (None, "", "0.0.0.0", self.addr):
            raise OSError(99, f"cannot listen on {host}: this stack's address is {self.addr}")


def check_own_addr(addr: object) -> str:
    """The stack's own address: a unicast IPv4 address a host may hold (not 0.0.0.0, a
    broadcast, multicast or loopback address). ValueError with the reason."""
    if not isinstance(addr, str):
        raise TypeError(f"addr must be a str (an IPv4 address), not {type(addr).__name__}")
    try:
        ours = ipaddress.IPv4Address(addr.strip())
    except ValueError:
        raise ValueError(f"{addr!r} is not an IPv4 address") from None
    for bad, what in ((ours.is_unspecified, "the unspecified address"),
                      (ours == ipaddress.IPv4Address("255.255.255.255"), "the broadcast address"),
                      (ours.is_multicast, "a multicast address"),
                      (ours.is_loopback, "a loopback address (the kernel keeps 127/8 for lo)")):
        if bad:
            raise ValueError(f"{ours} is {what}: a stack needs a unicast address of its own, "
                             "e.g. 10.77.0.2")
    return str(ours)


def check_port(port: object, server: bool = False) -> int:
    """A port as asyncio takes it (an int, or a str of digits as getaddrinfo takes a
    service number), checked at the call: TypeError or ValueError with a plain message.
    0 only for a server (any free port)."""
    if isinstance(port, str) and port.strip().isdecimal():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int (or a str of digits), not "
                        f"{type(port).__name__} {port!r}")
    low = 0 if server else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} is out of range ({low}..65535)")
    return port


def check_host(host: object) -> str:
    """The peer's address: an IPv4 literal. ustack does no name resolution (it has no
    resolver of its own, and the host's would answer for the kernel's network)."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str (an IPv4 address), not {type(host).__name__}")
    try:
        return str(ipaddress.IPv4Address(host.strip()))
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 address: ustack does not resolve host "
                         "names; give the peer's address, e.g. 10.77.0.1") from None
