"""The host's packets in: from the IP layer to the connection, TIME-WAIT record or
listener each TCP segment belongs to (RFC 9293 §3.10.7's demultiplexing), one
connection's consecutive data segments coalesced first (`ustack.tcp.gro`); and the ICMP
reports of a path too small for our segments (`ustack.tcp.pathmtu`).

`Demux` is the part of `Host` that does this; `host.py` has the rest (construction, the
user's calls, timers and packets out), which these methods use as declared below.
"""

from collections.abc import Callable, Sequence

from ustack.host.network import Network
from ustack.host.ports import Listeners
from ustack.host.probe import HostProbe
from ustack.packet import Packet
from ustack.pmtu import TooBig
from ustack.stats import Counters, DropReason
from ustack.tcp import closed, gro, pathmtu, segment, timewait
from ustack.tcp.config import TcpConfig
from ustack.tcp.isn import IsnSource
from ustack.tcp.listener import Listener
from ustack.tcp.segment import RST, Segment, SegmentError
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

IP_TCP_HEADERS, IP6_TCP_HEADERS = 40, 60  # fixed IP and TCP headers: MSS = MTU - these

ConnKey = tuple[bytes, int, int]  # (remote address, remote port, local port)


def headers(remote: bytes) -> int:
    """The fixed IP and TCP headers towards `remote`: MSS = MTU - these (RFC 9293
    §3.7.1; RFC 8200's 40-byte header over IPv6)."""
    return IP_TCP_HEADERS if len(remote) == 4 else IP6_TCP_HEADERS


class Demux:
    # What `Host` provides.
    counters: Counters
    mtu: int
    accept_queue_full: bool
    _net: Network
    _probe: HostProbe | None
    _conns: dict[ConnKey, Tcb]
    _listeners: Listeners
    _parent: dict[Tcb, Listener]
    _pending: dict[Tcb, None]
    _time_wait: timewait.TimeWaitTable
    _isn: IsnSource
    local_for: Callable[[bytes], bytes]

    def _emit_segment(self, dst: bytes, seg: Segment) -> None:
        raise NotImplementedError

    def _new_tcb(self, local_port: int, remote_addr: bytes, remote_port: int, iss: int,
                 config: TcpConfig, now: float) -> Tcb:
        raise NotImplementedError

    def _after_event(self, tcb: Tcb, before: State, now: float) -> None:
        raise NotImplementedError

    def _queue_accepted(self, listener: Listener, tcb: Tcb) -> None:
        raise NotImplementedError

    def receive(self, packet: Packet, now: float) -> None:
        """Take one IP packet from the link."""
        self.receive_batch((packet,), now)

    def receive_batch(self, packets: Sequence[Packet], now: float,
                      start: int = 0) -> int:
        """Take packets[start:] from the link, one connection's consecutive data segments
        coalesced into one (`ustack.tcp.gro`). Returns the index after the last packet
        taken: len(packets), or less when a listener's accept queue filled (the driver
        lets the application accept, then calls again from there; `take_accepting`).
        Nothing is held back between calls."""
        runs: dict[ConnKey, gro.Run] = {}
        i, n = start, len(packets)
        while i < n:
            packet = packets[i]
            i += 1
            found = self._net.input(packet, now)
            if found is None:
                continue
            dgram, verify = found
            try:
                seg = segment.decode(dgram.src, dgram.dst, dgram.payload, verify)
            except SegmentError as e:
                self.counters.drop(DropReason[e.reason])
                continue
            self.counters["tcp_segments_in"] += 1
            if self._probe is not None:  # the ladder shows the wire's segments, not runs
                self._probe.now = now
                self._probe.segment(dgram.src, dgram.dst, seg, outbound=False)
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

    def _tcp_input(self, key: ConnKey, seg: Segment, now: float) -> None:
        """One segment (or run) for its connection, a TIME-WAIT record or a listener."""
        src = key[0]
        tcb = self._conns.get(key)
        if tcb is not None:
            before = tcb.state
            # The listener it came from (in SYN-RECEIVED) may have no room for it.
            parent = self._parent.get(tcb) if before is State.SYN_RCVD else None
            full = parent is not None and parent.accept_queue_full()
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
        listener = self._listeners.find(seg.dst_port, self.local_for(src))
        if listener is not None and not listener.closed:
            self._listen_input(listener, src, seg, now, iss)
        else:
            self._reset_closed(src, seg)

    def _listen_input(self, listener: Listener, src: bytes, seg: Segment, now: float,
                      iss: int | None = None) -> None:
        """The listener's part (`Listener.on_segment`); the host keeps what it opened."""

        local = self.local_for(src)

        def new_tcb(iss: int | None) -> Tcb:
            if iss is None:
                iss = self._isn(local, seg.dst_port, src, seg.src_port, now)
            return self._new_tcb(seg.dst_port, src, seg.src_port, iss, listener.config, now)

        tcb, reply = listener.on_segment(src, seg, now, new_tcb, iss, local,
                                         self.mtu - headers(src))
        if reply is not None:
            if reply.flags & RST:
                self._send_rst(src, reply)
            else:
                self._emit_segment(src, reply)
        if tcb is None:
            return
        self._conns[(src, seg.src_port, seg.dst_port)] = tcb
        self._pending[tcb] = None  # its SYN-ACK, or (from a cookie) what it owes
        if tcb.state is State.SYN_RCVD:
            self._parent[tcb] = listener  # embryonic until it leaves SYN-RECEIVED
            return
        if tcb.state is not State.CLOSED:  # from a SYN cookie: past the handshake already
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
        listener = self._listeners.find(seg.dst_port, self.local_for(src))
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
        if self._probe is not None:
            self._probe.time_wait_end(src, tw.remote_port, tw.local_port, timer=False)
        if outcome is timewait.Outcome.CLOSE:
            return True, None
        return False, timewait.reopen_iss(tw)

    def _too_big(self, report: TooBig, now: float) -> None:
        """`Network.on_too_big`: a router says a TCP segment of ours did not fit; the
        connection checks the quote (`ustack.tcp.pathmtu`) before anything changes."""
        tcb = self._conns.get((report.dst, report.dst_port, report.src_port))
        if tcb is None:
            self.counters.drop(DropReason.ICMP_NO_CONNECTION)
            return
        reason = pathmtu.too_big(tcb, report.seq, report.mtu - headers(report.dst))
        if reason is not None:
            self.counters.drop(reason)
            return
        self.counters["tcp_path_mtu_lowered"] += self._net.path_mtu.lower(report.dst,
                                                                          report.mtu, now)
        self._pending[tcb] = None  # what it must send again

    def _reset_closed(self, src: bytes, seg: Segment) -> None:
        self.counters.drop(DropReason.TCP_NO_LISTENER)
        rst = closed.reset_for(seg)
        if rst is not None:
            self._send_rst(src, rst)

    def _send_rst(self, dst: bytes, rst: Segment) -> None:
        self.counters["rst_out"] += 1
        self._emit_segment(dst, rst)
