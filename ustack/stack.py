"""The host: one IPv4 address, its connections, listeners and timers. Sans-IO.

`receive(packet, now)` takes one IP packet from the link; `poll(now)` runs the
timers that are due and returns every packet to transmit; `next_deadline()`
says when to call `poll` again. Nothing here reads a clock or touches a device.

With `offload=True` (a TUN with IFF_VNET_HDR and offloads) every packet in and out
starts with a virtio-net header (`ustack.vnet`): segments the kernel vouches for are
not checksummed again, and outgoing TCP segments leave their checksum, and their
cutting into MSS-sized pieces (TSO), to the kernel.
"""

import ipaddress
import random
import socket
from collections.abc import Callable, Sequence

from ustack import conninfo, ip, vnet
from ustack.conninfo import ConnectionInfo
from ustack.probe import (
    Endpoint,
    Event,
    RecoveryEvent,
    SegmentEvent,
    StateEvent,
    TimerEvent,
)
from ustack.stats import Counters, DropReason
from ustack.tcp import autotune, gro, segment, seq, timewait
from ustack.tcp.config import TcpConfig
from ustack.tcp.isn import IsnGenerator, TsOffsets
from ustack.tcp.listener import Listener
from ustack.tcp.segment import ACK, RST, Segment, SegmentError
from ustack.tcp.states import State
from ustack.tcp.syncookies import SynCookies
from ustack.tcp.tcb import Tcb
from ustack.timerheap import TimerHeap

# RFC 6056 §2.1: the IANA dynamic range for ephemeral ports.
EPHEMERAL_PORTS = range(49152, 65536)
IP_TCP_HEADERS = 40
# Data in one TSO super-segment: an IPv4 datagram of at most 64 KB with the largest headers.
TSO_MAX = segment.SUPER_PAYLOAD_MAX

ConnKey = tuple[bytes, int, int]  # (remote address, remote port, local port)


class Host:
    def __init__(
        self,
        addr: str,
        *,
        mtu: int = 1500,
        isn: IsnGenerator | None = None,
        rng: random.Random | None = None,
        config: TcpConfig | None = None,
        cookies: SynCookies | None = None,
        offload: bool = False,
        max_time_wait: int = timewait.MAX_RECORDS,
        buffer_budget: int = autotune.DEFAULT_BUDGET,
    ) -> None:
        self.addr = ipaddress.IPv4Address(addr).packed
        self.mtu = mtu
        self.offload = offload
        self.mss = mtu - IP_TCP_HEADERS  # RFC 9293 §3.7.1: MTU minus fixed headers
        self.config = config or TcpConfig()
        self.counters = Counters()
        # Buffer growth of all connections together (Linux tcp_mem): ustack.tcp.autotune.
        self.budget = autotune.BufferBudget(buffer_budget)
        self._isn = isn or IsnGenerator()
        self._rng = rng or random.SystemRandom()
        self._ts_offsets = TsOffsets(self._rng.getrandbits(128).to_bytes(16, "big"))
        self._cookies = cookies or SynCookies()
        self._fragments = ip.Fragments()
        self._time_wait = timewait.TimeWaitTable(max_time_wait)
        self._conns: dict[ConnKey, Tcb] = {}
        self._listeners: dict[int, Listener] = {}
        self._parent: dict[Tcb, Listener] = {}  # embryonic children of listeners
        self._timers: TimerHeap[Tcb] = TimerHeap()
        self._pending: dict[Tcb, None] = {}  # TCBs to poll (an ordered set)
        self._out: list[bytes] = []
        self._ip_id = self._rng.randrange(0x10000)
        # The probe: every segment, state change and timer, as ladder events (or None).
        self.probe: Callable[[Event], None] | None = None
        self._now = 0.0
        # Events for the application layer, taken with take_events().
        self._touched: dict[Tcb, None] = {}
        self._accepted: list[tuple[Listener, Tcb]] = []
        # A listener's accept queue filled up since the accepted connections were last
        # taken: the driver lets the application accept before the next packet (see
        # `take_accepted`).
        self.accept_queue_full = False

    # ------------------------------------------------------------ user side

    @property
    def msl(self) -> float:
        return self.config.msl

    def listen(self, port: int, backlog: int = 128, config: TcpConfig | None = None) -> Listener:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not in 1..65535")
        if port in self._listeners:
            raise OSError(98, f"port {port} is already listening")
        listener = Listener(port, backlog, config or self.config, addr=self.addr,
                            mss=self.mss, cookies=self._cookies, counters=self.counters)
        self._listeners[port] = listener
        return listener

    def free_port(self) -> int:
        """An ephemeral port no listener and no connection uses (what `bind` to port 0
        picks, RFC 6056 §3.3.1's range)."""
        used = {key[2] for key in self._conns}
        return self._ephemeral_port(
            lambda port: port not in self._listeners and port not in used, 98, scan=True)

    def _ephemeral_port(self, free: Callable[[int], bool], code: int,
                        scan: bool = False) -> int:
        """A random port of the ephemeral range that `free` accepts (RFC 6056 §3.3.1,
        Algorithm 1: 64 tries); with `scan`, then the first free one in order."""
        for _ in range(64):
            port = self._rng.choice(EPHEMERAL_PORTS)
            if free(port):
                return port
        if scan:
            for port in EPHEMERAL_PORTS:
                if free(port):
                    return port
        raise OSError(code, "no free ephemeral port")

    def unlisten(self, listener: Listener) -> None:
        listener.closed = True
        if self._listeners.get(listener.port) is listener:
            del self._listeners[listener.port]
        for child, parent in list(self._parent.items()):
            if parent is listener:
                child.abort()
                self.wake(child)

    def connect(self, remote: str, remote_port: int, now: float,
                config: TcpConfig | None = None) -> Tcb:
        """Active OPEN from a random ephemeral port (RFC 6056 §3.3.1, Algorithm 1)."""
        remote_addr = ipaddress.IPv4Address(remote).packed
        self._now = now
        port = self._ephemeral_port(
            lambda port: ((remote_addr, remote_port, port) not in self._conns
                          and port not in self._listeners
                          and timewait.key(remote_addr, remote_port, port)
                          not in self._time_wait), 99)
        iss = self._isn(self.addr, port, remote_addr, remote_port, now)
        tcb = self._new_tcb(port, remote_addr, remote_port, iss, config or self.config)
        tcb.open_active(now)
        self._conns[(remote_addr, remote_port, port)] = tcb
        self.wake(tcb)
        return tcb

    def wake(self, tcb: Tcb) -> None:
        """The user acted on `tcb` (send, read, close): poll it on the next `poll`."""
        self._pending[tcb] = None

    def take_events(self) -> tuple[list[Tcb], list[tuple[Listener, Tcb]]]:
        """TCBs touched by segments or timers, and newly established passive ones."""
        touched = list(self._touched)
        self._touched.clear()
        return touched, self.take_accepted()

    def take_accepted(self) -> list[tuple[Listener, Tcb]]:
        """Only the newly established passive connections (`take_events` gives them too).

        In the kernel the application accepts on its own core while the stack works; in
        one loop it can only accept between two packets. A driver takes these as soon as
        `accept_queue_full` is set, so a batch of hundreds of handshake completions is not
        cut to one backlog's worth while the application would have had room for all."""
        accepted, self._accepted = self._accepted, []
        self.accept_queue_full = False
        return accepted

    def has_events(self) -> bool:
        return bool(self._touched or self._accepted)

    def has_pending(self) -> bool:
        return bool(self._pending or self._out)

    def connections(self) -> list[Tcb]:
        """Every connection with a TCB (TIME-WAIT ones are records: `time_wait_count`)."""
        return list(self._conns.values())

    def connection_info(self, now: float) -> list[ConnectionInfo]:
        """Every connection as `ss -tan` lists it: TCBs (SYN-RECEIVED to LAST-ACK) and
        TIME-WAIT records, sorted by local port then peer."""
        local = socket.inet_ntoa(self.addr)
        rows = [conninfo.from_tcb(tcb, local) for tcb in self._conns.values()]
        rows += [conninfo.from_time_wait(local, addr, port, local_port, deadline - now)
                 for addr, port, local_port, deadline in self._time_wait.entries()]
        rows.sort(key=lambda r: (r.local[1], socket.inet_aton(r.remote[0]), r.remote[1]))
        return rows

    def time_wait_count(self) -> int:
        """Connections in TIME-WAIT (compact records, see `ustack.tcp.timewait`)."""
        return len(self._time_wait)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    # ---------------------------------------------------------- packets in

    def receive(self, packet: bytes | memoryview, now: float) -> None:
        """Take one IP packet from the link."""
        self.receive_batch((packet,), now)

    def receive_batch(self, packets: Sequence[bytes | memoryview], now: float,
                      start: int = 0) -> int:
        """Take packets[start:] from the link, one connection's consecutive data segments
        coalesced into one (`ustack.tcp.gro`). Returns the index after the last packet
        taken: len(packets), or less when a listener's accept queue filled (the driver
        lets the application accept, then calls again from there; `take_accepted`).
        Nothing is held back between calls."""
        runs: dict[ConnKey, gro.Run] = {}
        i, n = start, len(packets)
        while i < n:
            packet = packets[i]
            i += 1
            found = self._ip_input(packet, now)
            if found is None:
                continue
            dgram, verify = found
            try:
                seg = segment.decode(dgram.src, dgram.dst, dgram.payload, verify)
            except SegmentError as e:
                self.counters.drop(DropReason[e.reason])
                continue
            self.counters["tcp_segments_in"] += 1
            if self.probe is not None:  # the ladder shows the wire's segments, not runs
                self._now = now
                self._probe_segment(dgram.src, self.addr, seg, outbound=False)
            key = (dgram.src, seg.src_port, seg.dst_port)
            run = runs.get(key)
            if run is not None:
                if run.extend(seg):
                    self.counters["tcp_gro_merged"] += 1
                    continue
                del runs[key]
                self._tcp_input(key, run.segment(), now)
            if gro.starts_run(seg):
                tcb = self._conns.get(key)
                if (tcb is not None and tcb.state is State.ESTABLISHED
                        and (tcb.sack_ok or seg.seq == tcb.rcv_nxt)):
                    runs[key] = gro.Run(seg)
                    continue
            self._tcp_input(key, seg, now)
            if self.accept_queue_full:
                break
        for key, run in runs.items():
            self._tcp_input(key, run.segment(), now)
        return i

    def _ip_input(self, packet: bytes | memoryview,
                  now: float) -> tuple[ip.Datagram, bool] | None:
        """IP's part of one packet: a TCP datagram for this host and whether its checksum
        is still to be verified; None when IP dropped it or another protocol took it."""
        self.counters["packets_in"] += 1
        verify = True
        if self.offload:
            if len(packet) < vnet.HDR_LEN:
                self.counters.drop(DropReason.VNET_TRUNCATED)
                return None
            # The kernel made this packet: a partial (NEEDS_CSUM) or already verified
            # (DATA_VALID) checksum is not ours to check.
            verify = not packet[0] & vnet.TRUSTED
            packet = memoryview(packet)[vnet.HDR_LEN:]
        dgram = ip.parse(packet, self.addr, self.counters)
        if dgram is None:
            return None
        if dgram.more or dgram.offset:
            dgram = self._fragments.add(dgram, now, self.counters)
            if dgram is None:
                return None
            verify = True
        if dgram.proto == ip.PROTO_TCP:
            return dgram, verify
        if dgram.proto == ip.PROTO_ICMP:
            reply = ip.echo_reply(dgram, self.counters, verify)
            if reply is not None:
                self._emit(dgram.src, ip.PROTO_ICMP, reply)
        else:
            self.counters.drop(DropReason.IP_PROTO_UNSUPPORTED)
        return None

    def _tcp_input(self, key: ConnKey, seg: Segment, now: float) -> None:
        """One segment (or run) for its connection, a TIME-WAIT record or a listener."""
        src = key[0]
        tcb = self._conns.get(key)
        if tcb is not None:
            before = tcb.state
            full = before is State.SYN_RCVD and self._accept_queue_full(tcb)
            reason = tcb.on_segment(seg, now, accept_queue_full=full)
            if reason is not None:
                self.counters.drop(reason)
            self._after_event(tcb, before, now)
            return
        iss = None
        if self._time_wait:
            taken, iss = self._time_wait_input(src, seg, now)
            if taken:
                return
        listener = self._listeners.get(seg.dst_port)
        if listener is not None and not listener.closed:
            self._listen_input(listener, src, seg, now, iss)
        else:
            self._reset_closed(src, seg)

    def _listen_input(self, listener: Listener, src: bytes, seg: Segment, now: float,
                      iss: int | None = None) -> None:
        """The listener's part (`Listener.on_segment`); the host keeps what it opened."""

        def new_tcb(iss: int | None) -> Tcb:
            if iss is None:
                iss = self._isn(self.addr, seg.dst_port, src, seg.src_port, now)
            return self._new_tcb(seg.dst_port, src, seg.src_port, iss, listener.config)

        tcb, reply = listener.on_segment(src, seg, now, new_tcb, iss)
        if reply is not None:
            if reply.flags & RST:
                self._send_rst(src, reply)
            else:
                self._emit_segment(src, reply)
        if tcb is None:
            return
        self._conns[(src, seg.src_port, seg.dst_port)] = tcb
        if tcb.state is State.SYN_RCVD:
            self._parent[tcb] = listener  # embryonic until it leaves SYN-RECEIVED
            self.wake(tcb)
            return
        self._pending[tcb] = None  # from a SYN cookie: past the handshake already
        self._touched[tcb] = None
        if tcb.state is not State.CLOSED:
            self._queue_accepted(listener, tcb)

    def _time_wait_input(self, src: bytes, seg: Segment,
                         now: float) -> tuple[bool, int | None]:
        """A segment for a connection in TIME-WAIT (Linux tcp_timewait_state_process):
        whether it was taken here, and for a SYN that opens a new incarnation (RFC 6191:
        the record is gone, the listener takes the SYN) the ISN it must use."""
        k = timewait.key(src, seg.src_port, seg.dst_port)
        tw = self._time_wait.get(k)
        if tw is None:
            return False, None
        listener = self._listeners.get(seg.dst_port)
        # Without a listener a SYN cannot open anything: it is answered as any segment
        # in TIME-WAIT is (Linux: TCP_TW_SYN without a listener falls through to an ACK).
        listener_ts = None if listener is None or listener.closed else listener.config.timestamps
        outcome, reply, reason = timewait.on_segment(tw, seg, now, self.counters, listener_ts)
        if reason is not None:
            self.counters.drop(reason)
        if reply is not None:
            self._emit_segment(src, reply)
        if outcome is timewait.Outcome.KEEP:
            self._time_wait.put(k, tw)
            return True, None
        self._time_wait.remove(k)
        self._probe_time_wait_end(src, tw.remote_port, tw.local_port, timer=False)
        if outcome is timewait.Outcome.CLOSE:
            return True, None
        return False, timewait.reopen_iss(tw)

    def _reset_closed(self, src: bytes, seg: Segment) -> None:
        """RFC 9293 §3.10.7.1 (CLOSED) and §3.5.2: answer anything but a RST with a RST."""
        self.counters.drop(DropReason.TCP_NO_LISTENER)
        if seg.flags & RST:
            return  # never answer a RST with a RST
        if seg.flags & ACK:
            rst = Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
        else:
            ack = seq.add(seg.seq, seg.seg_len)
            rst = Segment(seg.dst_port, seg.src_port, 0, ack, RST | ACK, 0)
        self._send_rst(src, rst)

    def _send_rst(self, dst: bytes, rst: Segment) -> None:
        self.counters["rst_out"] += 1
        self._emit_segment(dst, rst)

    # ------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        timer = self._timers.next_deadline()
        for other in (self._fragments.next_deadline(), self._time_wait.next_deadline()):
            if other is not None and (timer is None or other < timer):
                timer = other
        return timer

    # --------------------------------------------------------- packets out

    def poll(self, now: float, timers: bool = True) -> list[bytes]:
        """Run due timers (unless `timers` is false: the driver holds them back while the
        device still holds packets, any of which may make them moot), then collect every
        packet that is ready to go."""
        self._now = now
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
        out, self._out = self._out, []
        return out

    def _run_timers(self, now: float) -> None:
        """Every deadline that has passed: fragments, TIME-WAIT records, connections."""
        self._fragments.expire(now, self.counters)
        for addr, remote_port, local_port in self._time_wait.expire(now):
            self._probe_time_wait_end(addr, remote_port, local_port, timer=True)
        for tcb in self._timers.due(now):
            before = tcb.state
            tcb.on_timer(now)
            self._after_event(tcb, before, now)

    def _emit_segment(self, dst: bytes, seg: Segment) -> None:
        if self.probe is not None:
            self._probe_segment(self.addr, dst, seg, outbound=True)
        self.counters["tcp_segments_out"] += 1
        # With offloads the kernel completes the checksum and cuts a TSO segment.
        header, payload = segment.encode(seg, self.addr, dst, partial=self.offload)
        framing = (vnet.tcp_header(ip.HEADER_LEN, len(header), seg.gso) if self.offload
                   else vnet.NO_OFFLOAD)
        self._emit(dst, ip.PROTO_TCP, header, payload, framing=framing)

    def _emit(self, dst: bytes, proto: int, *parts: bytes | memoryview,
              framing: bytes = vnet.NO_OFFLOAD) -> None:
        """One IP packet of `parts`; with offloads, `framing` (a virtio-net header) first."""
        length = sum(len(p) for p in parts)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        packet = (ip.header(self.addr, dst, proto, length, self._ip_id), *parts)
        self._out.append(b"".join((framing, *packet) if self.offload else packet))

    # ------------------------------------------------------------ helpers

    def _new_tcb(self, local_port: int, remote_addr: bytes, remote_port: int, iss: int,
                 config: TcpConfig) -> Tcb:
        tcb = Tcb(local_port, remote_port, iss, mss=self.mss, config=config,
                  remote_addr=remote_addr, ts_offset=self._ts_offsets(self.addr, remote_addr),
                  counters=self.counters, tso_max=TSO_MAX if self.offload else 0,
                  budget=self.budget)
        if self.probe is not None:
            tcb.on_state_change = self._probe_state
            tcb.on_timer_fired = self._probe_timer
            tcb.on_recovery = self._probe_recovery
        return tcb

    # -------------------------------------------------------------- probe

    def _probe_segment(self, src: bytes, dst: bytes, seg: Segment, outbound: bool) -> None:
        assert self.probe is not None
        self.probe(SegmentEvent(
            self._now, Endpoint(socket.inet_ntoa(src), seg.src_port),
            Endpoint(socket.inet_ntoa(dst), seg.dst_port), outbound, seg.flags, seg.seq,
            seg.ack, seg.wnd, len(seg.payload), seg.opts))

    def _endpoints(self, tcb: Tcb) -> tuple[Endpoint, Endpoint]:
        return (Endpoint(socket.inet_ntoa(self.addr), tcb.local_port),
                Endpoint(socket.inet_ntoa(tcb.remote_addr), tcb.remote_port))

    def _probe_state(self, tcb: Tcb, old: State, new: State) -> None:
        if self.probe is not None:
            # A passive TCB is born of a listener: its first transition leaves LISTEN.
            was = State.LISTEN if tcb.passive and old is State.CLOSED else old
            self.probe(StateEvent(self._now, *self._endpoints(tcb), str(was), str(new)))

    def _probe_time_wait_end(self, remote: bytes, remote_port: int, local_port: int,
                             timer: bool) -> None:
        """A TIME-WAIT record is gone: its timer expired, a RST or SYN ended it, or it
        never entered the full table."""
        if self.probe is not None:
            ends = (Endpoint(socket.inet_ntoa(self.addr), local_port),
                    Endpoint(socket.inet_ntoa(remote), remote_port))
            if timer:
                self.probe(TimerEvent(self._now, *ends, "time_wait"))
            self.probe(StateEvent(self._now, *ends, str(State.TIME_WAIT), str(State.CLOSED)))

    def _probe_timer(self, tcb: Tcb, kind: str) -> None:
        if self.probe is not None:
            self.probe(TimerEvent(self._now, *self._endpoints(tcb), kind))

    def _probe_recovery(self, tcb: Tcb, kind: str, detail: str) -> None:
        if self.probe is not None:
            self.probe(RecoveryEvent(self._now, *self._endpoints(tcb), kind, detail))

    def _accept_queue_full(self, tcb: Tcb) -> bool:
        """Whether the listener that `tcb` (in SYN-RECEIVED) came from has no room."""
        listener = self._parent.get(tcb)
        return listener is not None and listener.accept_queue_full()

    def _after_event(self, tcb: Tcb, before: State, now: float) -> None:
        self._pending[tcb] = None
        self._touched[tcb] = None
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
            self._probe_time_wait_end(tcb.remote_addr, tcb.remote_port, tcb.local_port,
                                      timer=False)

    def _queue_accepted(self, listener: Listener, tcb: Tcb) -> None:
        listener.accept_queue.append(tcb)
        self._accepted.append((listener, tcb))
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
