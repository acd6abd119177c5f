"""`Stack`: a ustack host on a TUN device, run by the asyncio loop; what users import.

    async with ustack.Stack(dev="ustack0", addr="10.77.0.2") as stack:
        server = await stack.start_server(handle, port=7)
        reader, writer = await stack.open_connection("10.77.0.1", 8080)

It owns the device, the link middleware (capture, faults), the host and the driver;
its asyncio-style calls are in `ustack.api.calls`.
"""

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import os
import time
from collections import Counter
from typing import Any, TextIO

from ustack.addresses import ntop, scope_id
from ustack.aio import Driver, clock
from ustack.api.calls import AsyncioCalls
from ustack.api.checks import check_own_addr, check_own_addr6
from ustack.api.dispatch import Dispatch
from ustack.api.middleware import LinkControls
from ustack.api.proxying import ProxyControls
from ustack.api.server import Server
from ustack.api.transport import Transport
from ustack.conninfo import ConnectionInfo
from ustack.host import Host
from ustack.ip6 import MIN_MTU
from ustack.ladder import Ladder
from ustack.link import FaultInjector, PcapWriter, Shaper
from ustack.link.rules import TcpRules
from ustack.link.stage import Spared, Stage
from ustack.services.proxy import Proxy
from ustack.tcp.config import TcpConfig
from ustack.tcp.listener import Listener
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb
from ustack.tun import DEFAULT_KERNEL_ADDR6, TunDevice, TunError, route_problem

# The user closed these; their data and FIN are still on the way.
_FLUSHING = frozenset({State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})


class Stack(AsyncioCalls, LinkControls, ProxyControls):
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
    - `addr6`, `link_local6`: this stack's IPv6 addresses (default `fd77::2` and
      `fe80::2`, reached from the kernel as `fe80::2%<dev>`); `addr6=None` answers no
      IPv6. Servers take the families their `host` names (as asyncio's), and
      `open_connection` reaches either.
    - `kernel_addr6`: the IPv6 address/prefix of the kernel's side of a device the stack
      creates (default `fd77::1/64`; None: none).
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
    - `offload`: checksum and TSO offloads on the device (IFF_VNET_HDR), on by default
      where the device takes them: 64 KB super-packets both ways, which multiplies
      throughput even at MTU 1500. `offloads` says which are on once the stack runs;
      `offload=False` turns them off (one segment per packet on the TUN, as in a
      capture of a real link). With faults on, the injector acts per wire segment.
    - `device`: a device already open to run on instead of opening `dev` (one queue of
      `TunDevice.open_queues`, as each worker of `ustack serve --workers N` runs on one),
      or a link without a TUN (`ustack.devices`: `MemoryLink` between two stacks in one
      process, `PacketLink` for a tunnel the application drives, `StreamLink` over a
      byte stream); the stack closes it on exit, as it would its own. A link that is
      lost (a stream that ends) closes the stack: `link_error` says why.
    - `verify_checksums`: on by default; off for a link that authenticates every
      packet itself (a tunnel over TLS), where the TCP and ICMP checksums of packets
      in are not computed again.

    `stack.faults(...)` puts a seeded fault injector on the link, `stack.shape(...)` a
    rate, a queue and bursty loss. The link middleware sits device - pcap - shaper -
    faults - host, so the capture is what the kernel's side sent and received (see
    `ustack.link`). Errors at the start: `TunError` (the device, its
    permissions, an address the kernel cannot reach), `ustack.link.CaptureError`.
    """

    def __init__(self, dev: str = "ustack0", addr: str = "10.77.0.2", *,
                 kernel_addr: str = "10.77.0.1/24", mtu: int | None = None,
                 msl: float | None = None, linger: float = 1.0,
                 tcp: TcpConfig | None = None,
                 pcap: str | os.PathLike[str] | None = None,
                 trace: TextIO | None = None, offload: bool = True,
                 device: Any = None, addr6: str | None = "fd77::2",
                 link_local6: str | None = "fe80::2",
                 kernel_addr6: str | None = DEFAULT_KERNEL_ADDR6,
                 verify_checksums: bool = True) -> None:
        self.dev = device.name if device is not None else dev
        self.verify_checksums = verify_checksums
        self.link_error: Exception | None = None  # why the link was lost, if it was
        self._given_device = device
        self.addr = check_own_addr(addr)
        self.kernel_addr = str(ipaddress.IPv4Interface(kernel_addr))
        self.addr6 = check_own_addr6(addr6)
        self.link_local6 = check_own_addr6(link_local6, "link_local6") if addr6 else None
        if self.link_local6 and not ipaddress.IPv6Address(self.link_local6).is_link_local:
            raise ValueError(f"link_local6 {self.link_local6} is not in fe80::/10")
        self.kernel_addr6 = (str(ipaddress.IPv6Interface(kernel_addr6))
                             if kernel_addr6 is not None and addr6 is not None else None)
        self._mtu = mtu
        # TCP settings for every connection (socket options, in effect).
        self.tcp = tcp or TcpConfig()
        if msl is not None:
            self.tcp = dataclasses.replace(self.tcp, msl=msl)
        self.linger = linger  # on exit: how long closed connections may keep sending
        self._device: TunDevice | None = None
        self._device_counters: Counter[str] = Counter()  # kept after the device closes
        self._scope_id = 0  # the device's interface index: the zone of link-local peers
        self._servers: dict[Listener, Server] = {}
        self._dispatch = Dispatch(self._callback_failed)  # who hears each connection's events
        self.pcap = pcap
        # Checksum and TSO offloads on the TUN (IFF_VNET_HDR) if it takes them: the kernel
        # and ustack exchange 64 KB super-packets and leave TCP checksums to each other.
        self.offload = offload
        # trace: a stream (e.g. sys.stderr) that gets the ladder of every connection.
        self.trace = trace
        self._pcap: PcapWriter | None = None
        self._faults: FaultInjector | None = None
        self._fault_totals: Counter[str] = Counter()  # of injectors since replaced
        self._shaper: Shaper | None = None
        self._shaper_totals: Counter[str] = Counter()  # of shapers since replaced
        self._rules: TcpRules | None = None  # faults that know TCP (`rule`)
        self._rule_totals: Counter[str] = Counter()
        self._proxies: list[Proxy] = []  # `create_proxy`
        self._spared: set[tuple[bytes, int]] = set()  # their upstream servers
        self._proxy_totals: Counter[str] = Counter()  # the counters of closed ones
        self._wrapped: dict[Stage, Spared] = {}  # the link's stages as the pipeline has them
        self._phase = "new"  # then "running" (inside `async with`), then "closed"
        self._ladder: Ladder | None = None
        self._fault_log: TextIO | None = None  # <pcap>.faults, once a fault happened
        self._closing: asyncio.Task[None] | None = None  # `close` or a lost link started it
        self._closed: asyncio.Future[None] | None = None  # done once closed

    async def __aenter__(self) -> "Stack":
        if self._phase != "new":
            raise RuntimeError("this Stack has already run: make a new Stack for each "
                               "`async with`")
        self.loop = asyncio.get_running_loop()
        self._closed = self.loop.create_future()
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
        self._scope_id = scope_id(getattr(device, "name", None))
        self.mtu = self._device.mtu
        offload = getattr(self._device, "offload", False)
        self._host = Host(self.addr, mtu=self.mtu, config=self.tcp, offload=offload,
                          addrs6=[a for a in (self.addr6, self.link_local6) if a],
                          verify_checksums=self.verify_checksums)
        self._ladder = None
        if self.trace is not None:
            isatty = getattr(self.trace, "isatty", lambda: False)
            self._ladder = Ladder(self.trace, color=isatty())
            self._host.probe = self._ladder.feed
        self._driver = Driver(self._host, self._device, self.loop, self._on_events,
                              self._pipeline())
        self._driver.start()
        self._phase = "running"
        started = getattr(device, "started", None)
        if started is not None:  # a link with a start of its own (a socket that listens)
            try:
                await started()
            except BaseException:
                await self.aclose()
                raise
        lost = getattr(device, "lost", None)
        if isinstance(lost, asyncio.Future):
            lost.add_done_callback(self._on_link_lost)
        return self

    async def ready(self) -> None:
        """Returns once this stack's addresses are usable: at once on a TUN or a memory
        link, once the stream is open on a `StreamLink` (its LinkLost if it cannot be)."""
        self._check_running()
        ready = getattr(self._device, "ready", None)
        if ready is not None:
            await ready()

    def _on_link_lost(self, lost: "asyncio.Future[Exception | None]") -> None:
        """The link ended (a stream closed, or could not be framed): the stack closes,
        and every reader and writer of its connections hears so."""
        if lost.cancelled():
            return
        self.link_error = lost.result()
        self.close()

    def close(self) -> None:
        """Start closing (as `aclose`, without waiting): every connection is reset and
        whoever waits on one hears it; `await stack.wait_closed()` for the end."""
        if self._phase == "running" and self._closing is None:
            self._closing = self.loop.create_task(self.aclose())

    async def wait_closed(self) -> None:
        """Returns once the stack has closed (`close`, `aclose`, or a lost link)."""
        if self._closed is None:
            raise RuntimeError("this Stack is not started: use it inside "
                               "`async with Stack(...) as stack:`")
        await asyncio.shield(self._closed)

    def _check_running(self) -> None:
        """The asyncio calls need a running stack: a clear error, not a hang."""
        if self._phase == "new":
            raise RuntimeError("this Stack is not started: use it inside "
                               "`async with Stack(...) as stack:`")
        if self._phase == "closed":
            raise RuntimeError("this Stack is closed (its `async with` has ended)")

    def _open_device(self) -> Any:
        """Open the link (a TUN device). Tests override this to run the stack over an
        in-memory device with TunDevice's `fileno`, `read_batch`, `write`, `close`, `mtu`
        and `counters`."""
        if self._given_device is not None:
            return self._given_device
        return TunDevice.open(self.dev, kernel_addr=self.kernel_addr, mtu=self._mtu,
                              offload=self.offload, kernel_addr6=self.kernel_addr6)

    @property
    def device_created(self) -> bool:
        """Did this stack create its TUN device (and configure the kernel's side with
        `kernel_addr`)? False for a device that already existed, or before the start."""
        return bool(getattr(self._device, "created", False))

    @property
    def offloads(self) -> tuple[str, ...]:
        """The offloads on while the stack runs (`("checksum", "TSO")`, or none: asked
        off, refused by the device (`offload_refused` says why), or not running)."""
        return tuple(getattr(self._device, "offloads", ()))

    @property
    def ipv6_refused(self) -> str | None:
        """Why this stack answers no IPv6 though it has addresses: its link's MTU is
        below IPv6's 1280, or the device it created got no IPv6 address on the kernel's
        side (IPv6 off in the namespace); else None."""
        if self.addr6 and self._device is not None and self.mtu < MIN_MTU:
            return f"the MTU {self.mtu} is below IPv6's {MIN_MTU}"
        return getattr(self._device, "ipv6_refused", None)

    @property
    def offload_refused(self) -> str | None:
        """Why the device took no offloads though they were asked for; else None."""
        return getattr(self._device, "offload_refused", None)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening; let closed connections deliver what they still hold (up to
        `linger` seconds), reset the rest, release the device."""
        if self._device is None:
            return
        if self._phase == "closed":  # another close is under way: its end is ours
            if self._closed is not None:
                await asyncio.shield(self._closed)
            return
        self._phase = "closed"
        for server in list(self._servers.values()):
            server.close()
        deadline = self.loop.time() + self.linger
        while self.loop.time() < deadline and any(
                tcb.state in _FLUSHING for tcb in self._host.connections()):
            await asyncio.sleep(0.005)
        # Whoever still waits on a connection hears why it ends (a kernel socket whose
        # network went away reports an error, not an orderly end).
        gone = self.link_error or ConnectionAbortedError(errno.ECONNABORTED,
                                                         "the stack was closed")
        for tcb in self._host.connections():
            tcb.abort(gone)
        self._driver.flush()
        self._driver.drain_tx()  # what the fault injector delays still goes out
        self._dispatch.close_all()
        self._driver.stop()
        if self._driver.pipeline is not None:
            self._driver.pipeline.close()  # the capture is complete from here on
        if self._fault_log is not None:
            self._fault_log.close()
            self._fault_log = None
        self._device.close()
        self._device = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
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
        stats.update(self._link_counters())
        return stats

    # --------------------------------------------------------- core events

    def _on_events(self, happened: list[tuple[Tcb, int]], accepting: list[Listener]) -> None:
        """The driver's: accept what the listeners hold, then tell each connection's
        listener (`Dispatch`) what happened to it."""
        for listener in accepting:
            server = self._servers.get(listener)
            while (tcb := listener.accept()) is not None:
                self._accept(server, tcb)
        self._dispatch.deliver(happened)

    def _accept(self, server: Server | None, tcb: Tcb) -> None:
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
            return
        self._transport(tcb, protocol)

    def _callback_failed(self, exc: Exception) -> None:
        """An application callback raised while its connection's events were delivered:
        reported as asyncio reports a failing protocol callback, the rest go on."""
        self.loop.call_exception_handler({
            "message": "Exception in a protocol callback of a ustack connection",
            "exception": exc})

    def _transport(self, tcb: Tcb, protocol: asyncio.BaseProtocol) -> Transport:
        """A Transport for `tcb`, which hears its events from now on."""
        local = ntop(self._host.local_for(tcb.remote_addr))
        return Transport(tcb, protocol, loop=self.loop, local_addr=local,
                         dispatch=self._dispatch, scope_id=self._scope_id)

    def _close_server(self, listener: Listener) -> None:
        """`Server.close`: stop listening; what waits unaccepted is reset at once."""
        self._host.unlisten(listener)
        self._servers.pop(listener, None)
        self._driver.flush()

    def _check_local(self, host: str | None) -> list[str]:
        """Our addresses a listener on `host` takes, as bind(2) after asyncio's
        `create_server`: None or "" both families (asyncio makes a socket for each),
        "0.0.0.0" IPv4 only, "::" IPv6 only (asyncio sets IPV6_V6ONLY), an address of
        ours only that one (a link-local one may carry its zone: `fe80::2%ustack0`)."""
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str or None, not {type(host).__name__}")
        v6 = [a for a in (self.addr6, self.link_local6) if a]
        ours = [self.addr, *v6]
        if not host:
            return ours
        if host == "0.0.0.0" or (host == "::" and v6):
            return [self.addr] if host == "0.0.0.0" else v6
        with contextlib.suppress(ValueError):  # a name: refused below as it stands
            host = str(ipaddress.ip_address(host.split("%", 1)[0]))
        if host not in ours:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {host}: this stack's "
                          f"addresses are {', '.join(ours)}")
        return [host]

