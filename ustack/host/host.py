"""The host: its addresses (IPv4, IPv6), connections, listeners and timers. Sans-IO.

`receive(packet, now)` takes one IP packet from the link (through `Network`, the IP
layer; then `Demux`, its part in demux.py); `poll(now)` runs the timers that are due
and returns every packet to transmit; `next_deadline()` says when to call `poll` again;
`take_events()` what happened for the application. Nothing here reads a clock or touches a device.
"""

import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence

from ustack import conninfo
from ustack.conninfo import ConnectionInfo
from ustack.host import ports
from ustack.host.demux import ConnKey, Demux, headers
from ustack.host.network import Network
from ustack.host.probe import HostProbe, ignore
from ustack.host.timerheap import TimerHeap
from ustack.packet import Packet
from ustack.probe import Event
from ustack.stats import Counters
from ustack.tcp import autotune, segment, timewait
from ustack.tcp.config import TcpConfig
from ustack.tcp.isn import IsnGenerator, IsnSource, TsOffsets
from ustack.tcp.listener import Listener
from ustack.tcp.segment import RST, Segment
from ustack.tcp.states import State
from ustack.tcp.syncookies import SynCookies
from ustack.tcp.tcb import Tcb

# Data in one TSO super-segment: an IPv4 datagram of at most 64 KB with the largest headers.
TSO_MAX = segment.SUPER_PAYLOAD_MAX

class Host(Demux):
    def __init__(self, addr: str, *, mtu: int = 1500, isn: IsnSource | None = None,
                 rng: random.Random | None = None, config: TcpConfig | None = None,
                 cookies: SynCookies | None = None, offload: bool = False,
                 max_time_wait: int = timewait.MAX_RECORDS,
                 buffer_budget: int = autotune.DEFAULT_BUDGET,
                 addrs6: Sequence[str] = (), verify_checksums: bool = True) -> None:
        self.addr = ipaddress.IPv4Address(addr).packed
        self.mtu = mtu
        self.offload = offload
        self.config = config or TcpConfig()
        self.counters = Counters()
        # Buffer growth of all connections together (Linux tcp_mem): ustack.tcp.autotune.
        self.budget = autotune.BufferBudget(buffer_budget)
        self._isn = isn or IsnGenerator()
        self._rng = rng or random.SystemRandom()
        self._ts_offsets = TsOffsets(self._rng.getrandbits(128).to_bytes(16, "big"))
        self._cookies = cookies or SynCookies()
        self._time_wait = timewait.TimeWaitTable(max_time_wait)
        self._conns: dict[ConnKey, Tcb] = {}
        self._listeners = ports.Listeners()
        self._parent: dict[Tcb, Listener] = {}  # embryonic children of listeners
        self._timers: TimerHeap[Tcb] = TimerHeap()
        self._pending: dict[Tcb, None] = {}  # TCBs to poll (an ordered set)
        self._net = Network(self.addr, self.counters, offload=offload,
                            ip_id=self._rng.randrange(0x10000), addrs6=addrs6,
                            mtu=mtu, ip6_id=self._rng.getrandbits(32),
                            verify=verify_checksums)
        self.addrs6 = self._net.addrs6  # packed; none below MTU 1280
        self._net.on_too_big = self._too_big
        self.local_for = self._net.local_for  # our address with a peer, either family
        # The probe: every segment, state change and timer, as ladder events (or None).
        self._prober = HostProbe(self.local_for, ignore)
        self._probe: HostProbe | None = None  # `_prober` while a sink is set
        # For the application (`take_events`): TCBs with events, listeners to accept from.
        self._events: dict[Tcb, None] = {}
        self._accepting: dict[Listener, None] = {}
        self.accept_queue_full = False  # since last taken: accept now (`take_accepting`)
        self.on_wake: Callable[[], None] | None = None  # the driver's: poll soon
        self._wake_hook = self._user_call  # one bound method shared by every TCB

    # ------------------------------------------------------------ user side

    @property
    def probe(self) -> Callable[[Event], None] | None:
        """Where the probe's events go (`ustack.probe`: the ladder's `feed`), or None;
        connections opened from then on are watched."""
        return self._probe.sink if self._probe is not None else None

    @probe.setter
    def probe(self, sink: Callable[[Event], None] | None) -> None:
        # One HostProbe for the host's life: what it already watches reports to the new
        # sink (or, with None, to nowhere).
        self._prober.sink = sink if sink is not None else ignore
        self._probe = self._prober if sink is not None else None

    @property
    def msl(self) -> float:
        return self.config.msl

    def listen(self, port: int, backlog: int = 128, config: TcpConfig | None = None,
               local: Iterable[bytes] | None = None) -> Listener:
        """LISTEN on `port` at our `local` addresses (packed; default: all, both
        families); OSError(EADDRINUSE) where another listener has the port."""
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not in 1..65535")
        listener = Listener(port, backlog, config or self.config, cookies=self._cookies,
                            counters=self.counters,
                            local=frozenset((self.addr, *self.addrs6) if local is None
                                            else local))
        self._listeners.add(listener)
        return listener

    def free_port(self) -> int:
        """An ephemeral port no listener and no connection uses (what `bind` to port 0
        picks, RFC 6056 §3.3.1's range)."""
        used = {key[2] for key in self._conns} | self._listeners.ports()
        return ports.ephemeral_port(self._rng, lambda port: port not in used, 98, scan=True)

    def unlisten(self, listener: Listener) -> None:
        listener.closed = True
        self._listeners.remove(listener)
        for child, parent in list(self._parent.items()):
            if parent is listener:
                child.abort()
        # What nobody accepted is reset, as closing a listening socket does (Linux
        # inet_csk_listen_stop).
        while (tcb := listener.accept()) is not None:
            tcb.abort()
        self._accepting.pop(listener, None)

    def connect(self, remote: str, remote_port: int, now: float,
                config: TcpConfig | None = None) -> Tcb:
        """Active OPEN from a random ephemeral port (RFC 6056 §3.3.1, Algorithm 1)."""
        remote_addr = ipaddress.ip_address(remote).packed
        local = self.local_for(remote_addr)  # OSError for IPv6 on a host without it
        if self._probe is not None:
            self._probe.now = now
        port = ports.ephemeral_port(
            self._rng, lambda port: ((remote_addr, remote_port, port) not in self._conns
                                     and port not in self._listeners
                                     and timewait.key(remote_addr, remote_port, port)
                                     not in self._time_wait), 99)
        iss = self._isn(local, port, remote_addr, remote_port, now)
        tcb = self._new_tcb(port, remote_addr, remote_port, iss, config or self.config, now)
        tcb.open_active(now)
        self._conns[(remote_addr, remote_port, port)] = tcb
        self._user_call(tcb)  # the SYN goes out on the next poll
        return tcb

    def _user_call(self, tcb: Tcb) -> None:
        """`Tcb.on_wake`: a user call on `tcb` left work for the next poll (and maybe an
        event, as an abort's CLOSED)."""
        self._pending[tcb] = None
        if tcb.events:
            self._events[tcb] = None
        if self.on_wake is not None:
            self.on_wake()

    def take_events(self) -> tuple[list[tuple[Tcb, int]], list[Listener]]:
        """What happened for the application since the last call: each connection with
        its events (the bits of `ustack.tcp.events`, cleared here), and the listeners
        with connections to accept (`Listener.accept`)."""
        taken = []
        for tcb in self._events:
            taken.append((tcb, tcb.events))
            tcb.events = 0
        self._events.clear()
        return taken, self.take_accepting()

    def take_accepting(self) -> list[Listener]:
        """Only the listeners with connections to accept (`take_events` gives them too).

        In the kernel the application accepts on its own core while the stack works; in
        one loop it can only accept between two packets. A driver takes these as soon as
        `accept_queue_full` is set, so a batch of hundreds of handshake completions is not
        cut to one backlog's worth while the application would have had room for all."""
        accepting = list(self._accepting)
        self._accepting.clear()
        self.accept_queue_full = False
        return accepting

    def has_events(self) -> bool:
        return bool(self._events or self._accepting)

    def has_pending(self) -> bool:
        return bool(self._pending or self._net.out)

    def connections(self) -> list[Tcb]:
        """Every connection with a TCB (TIME-WAIT ones are records: `time_wait_count`)."""
        return list(self._conns.values())

    def connection_info(self, now: float) -> list[ConnectionInfo]:
        """Every connection as `ss -tan` lists it: TCBs (SYN-RECEIVED to LAST-ACK) and
        TIME-WAIT records, sorted by local port then peer."""
        return conninfo.rows(self.local_for, self._conns.values(), self._time_wait.entries(),
                             now)

    def time_wait_count(self) -> int:
        """Connections in TIME-WAIT (compact records, see `ustack.tcp.timewait`)."""
        return len(self._time_wait)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def next_deadline(self) -> float | None:
        timer = self._timers.next_deadline()
        for other in (self._net.next_deadline(), self._time_wait.next_deadline()):
            if other is not None and (timer is None or other < timer):
                timer = other
        return timer

    # --------------------------------------------------------- packets out

    def poll(self, now: float, timers: bool = True) -> list[Packet]:
        """Run due timers (unless `timers` is false: the driver holds them back while the
        device still holds packets, any of which may make them moot), then collect every
        packet that is ready to go."""
        if self._probe is not None:
            self._probe.now = now
        if timers:
            self._run_timers(now)
        heap = self._timers
        for tcb in self._pending:
            for seg in tcb.poll(now):
                if seg.flags & RST:
                    self.counters["rst_out"] += 1
                self._emit_segment(tcb.remote_addr, seg)
            if tcb.state is State.CLOSED:
                self._forget(tcb)
                continue
            heap.file(tcb)
        self._pending.clear()
        out, self._net.out = self._net.out, []
        return out

    def _run_timers(self, now: float) -> None:
        """Every deadline that has passed: fragments, TIME-WAIT records, connections."""
        self._net.expire(now)
        for addr, remote_port, local_port in self._time_wait.expire(now):
            if self._probe is not None:
                self._probe.time_wait_end(addr, remote_port, local_port, timer=True)
        for tcb in self._timers.due(now):
            before = tcb.state
            tcb.on_timer(now)
            self._after_event(tcb, before, now)

    def _emit_segment(self, dst: bytes, seg: Segment) -> None:
        # `local_for`'s IPv4 case inline: no call per segment on the IPv4 path.
        local = self.addr if len(dst) == 4 else self._net.local_for(dst)
        if self._probe is not None:
            self._probe.segment(local, dst, seg, outbound=True)
        self._net.emit_segment(local, dst, seg)

    # ------------------------------------------------------------ helpers

    def _new_tcb(self, local_port: int, remote_addr: bytes, remote_port: int, iss: int,
                 config: TcpConfig, now: float) -> Tcb:
        fixed = headers(remote_addr)
        tcb = Tcb(local_port, remote_port, iss, mss=self.mtu - fixed, config=config,
                  remote_addr=remote_addr,
                  ts_offset=self._ts_offsets(self.local_for(remote_addr), remote_addr),
                  counters=self.counters, tso_max=TSO_MAX if self.offload else 0,
                  budget=self.budget)
        tcb.on_wake = self._wake_hook
        tcb.path_mss = self._net.path_mtu.get(remote_addr, now) - fixed  # RFC 8201 §5.2
        if self._probe is not None:
            self._probe.watch(tcb)
        return tcb

    def _after_event(self, tcb: Tcb, before: State, now: float) -> None:
        self._pending[tcb] = None
        if tcb.events:
            self._events[tcb] = None
        if tcb.state is State.TIME_WAIT:
            self._enter_time_wait(tcb, now)
            return
        if before is State.SYN_RCVD and tcb.state is not State.SYN_RCVD:
            listener = self._parent.pop(tcb, None)
            if listener is not None:
                listener.embryonic -= 1
                if tcb.state is not State.CLOSED:
                    self._queue_accepted(listener, tcb)

    def _enter_time_wait(self, tcb: Tcb, now: float) -> None:
        """The TCB gives way to a compact record in the TIME-WAIT table; the application
        may still read what it holds. Past the table's limit the connection skips
        TIME-WAIT (Linux tcp_time_wait: "time wait bucket table overflow")."""
        for seg in tcb.poll(now):  # the ACK of the peer's FIN
            self._emit_segment(tcb.remote_addr, seg)
        tw = tcb.take_time_wait()
        self._forget(tcb)
        self._pending.pop(tcb, None)
        if tw is not None and not self._time_wait.add(tcb.remote_addr, tw):
            self.counters["tcp_time_wait_overflow"] += 1
            if self._probe is not None:
                self._probe.time_wait_end(tcb.remote_addr, tcb.remote_port, tcb.local_port,
                                          timer=False)

    def _queue_accepted(self, listener: Listener, tcb: Tcb) -> None:
        listener.accept_queue.append(tcb)
        self._accepting[listener] = None
        if listener.accept_queue_full():
            self.accept_queue_full = True

    def _forget(self, tcb: Tcb) -> None:
        key = (tcb.remote_addr, tcb.remote_port, tcb.local_port)
        if self._conns.get(key) is tcb:
            del self._conns[key]
        self._timers.forget(tcb)
        listener = self._parent.pop(tcb, None)
        if listener is not None:
            listener.embryonic -= 1
