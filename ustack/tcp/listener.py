"""A LISTEN socket (RFC 9293 §3.10.7.2): the bound port, its backlog, its accept queue,
and what a segment for the port does when no connection or TIME-WAIT record took it: a
SYN opens a connection in SYN-RECEIVED, or, with the SYN queue full, draws a SYN cookie
(RFC 4987 §3.6) and leaves nothing behind; the ACK that returns a valid cookie opens an
established connection; anything else is dropped or answered with a RST."""

from collections import deque
from collections.abc import Callable

from ustack.stats import Counters, DropReason
from ustack.tcp import seq
from ustack.tcp.config import TcpConfig
from ustack.tcp.options import DEFAULT_MSS, DEFAULT_MSS6, Options
from ustack.tcp.rcvwnd import MAX_UNSCALED_WINDOW
from ustack.tcp.segment import ACK, RST, SYN, Segment
from ustack.tcp.syncookies import COOKIE_LIFETIME, SynCookies
from ustack.tcp.tcb import Tcb

# Makes the TCB for a segment's connection, with the given ISS (None: a new one).
NewTcb = Callable[[int | None], Tcb]


class Listener:
    def __init__(self, port: int, backlog: int, config: TcpConfig, *,
                 cookies: SynCookies, counters: Counters,
                 local: frozenset[bytes] = frozenset()) -> None:
        self.port = port
        # Our addresses it takes connections on (packed; either family), as bind(2)'s
        # address picks them: all of the host's, one family's, or one.
        self.local = local
        self.backlog = max(1, backlog)
        self.config = config  # for the connections it accepts
        self.cookies = cookies  # the host's: one secret for all its listeners
        self.counters = counters  # the host's
        self.embryonic = 0  # children still in SYN-RECEIVED
        self.accept_queue: deque[Tcb] = deque()
        self.closed = False
        self.last_cookie_at: float | None = None  # when we last answered with a SYN cookie

    def syn_queue_full(self) -> bool:
        """Handshakes in progress are bounded; past this, SYN cookies answer (RFC 4987)."""
        return self.embryonic >= self.backlog

    def accept(self) -> Tcb | None:
        """The oldest established connection not yet taken (accept(2)), or None."""
        return self.accept_queue.popleft() if self.accept_queue else None

    def accept_queue_full(self) -> bool:
        """Established connections not yet taken by the user; past this, SYNs and the ACKs
        that would complete a handshake are dropped (Linux sk_acceptq_is_full)."""
        return len(self.accept_queue) >= self.backlog

    def on_segment(self, src: bytes, seg: Segment, now: float, new_tcb: NewTcb,
                   iss: int | None, local: bytes,
                   mss: int) -> tuple[Tcb | None, Segment | None]:
        """RFC 9293 §3.10.7.2 for a segment from `src` to our `local` address (whose
        family's MSS is `mss`, what a cookie's SYN-ACK offers): the connection it opened,
        if any (in SYN-RECEIVED, counted as embryonic; or from a SYN cookie, past the
        handshake, for the accept queue unless it closed at once), and what to send
        back (a RST, or a SYN-ACK with a cookie). `iss`: the ISN a SYN that ended a
        TIME-WAIT must use."""
        if seg.flags & RST:
            self.counters.drop(DropReason.TCP_UNEXPECTED)  # "An incoming RST should be ignored"
        elif seg.flags & ACK:
            taken, tcb = self._cookie_returns(src, seg, now, new_tcb, local)
            if not taken:
                return None, Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
            return tcb, None
        elif seg.flags & SYN:
            if self.accept_queue_full():
                # Linux tcp_conn_request: no room to accept → drop (ListenOverflows); the
                # peer's SYN retransmission tries again.
                self.counters.drop(DropReason.TCP_LISTEN_OVERFLOW)
            elif self.syn_queue_full():
                return None, self._cookie_syn_ack(src, seg, now, local, mss)
            else:
                tcb = new_tcb(iss)
                tcb.open_passive(seg, now)
                self.embryonic += 1
                self.counters["passive_opens"] += 1
                return tcb, None
        else:
            self.counters.drop(DropReason.TCP_UNEXPECTED)
        return None, None

    def _cookie_syn_ack(self, src: bytes, syn: Segment, now: float, local: bytes,
                        mss: int) -> Segment:
        """SYN queue full: answer with a SYN cookie and keep nothing (RFC 4987 §3.6)."""
        self.last_cookie_at = now
        peer_mss = min(syn.opts.mss or (DEFAULT_MSS if len(src) == 4 else DEFAULT_MSS6), mss)
        isn = self.cookies.make(local, syn.dst_port, src, syn.src_port, syn.seq,
                                peer_mss, now)
        window = min(self.config.rcv_buf, MAX_UNSCALED_WINDOW)  # a SYN's is not scaled
        self.counters["tcp_syncookies_sent"] += 1
        return Segment(syn.dst_port, syn.src_port, isn, seq.add(syn.seq, 1), SYN | ACK,
                       window, b"", Options(mss=mss))

    def _cookie_returns(self, src: bytes, ack: Segment, now: float,
                        new_tcb: NewTcb, local: bytes) -> tuple[bool, Tcb | None]:
        """An ACK for no connection: the end of a SYN-cookie handshake, if it validates.
        Not taken: answer it with a RST (RFC 9293 §3.10.7.2); taken: the connection, or
        none because the accept queue is full (Linux cookie_v4_check, then
        tcp_v4_syn_recv_sock's overflow: the peer's data or retransmission brings the
        cookie back later)."""
        if ack.flags & (SYN | RST):
            return False, None
        # Only while cookies are in use (Linux tcp_synq_no_recent_overflow): otherwise a
        # blind attacker could try to guess one for a connection nobody asked for.
        if self.last_cookie_at is None or now - self.last_cookie_at > COOKIE_LIFETIME:
            return False, None
        irs = seq.sub(ack.seq, 1)
        iss = seq.sub(ack.ack, 1)
        mss = self.cookies.check(local, ack.dst_port, src, ack.src_port, irs, iss, now)
        if mss is None:
            self.counters.drop(DropReason.TCP_BAD_COOKIE)
            return False, None
        if self.accept_queue_full():
            self.counters.drop(DropReason.TCP_LISTEN_OVERFLOW)
            return True, None
        tcb = new_tcb(iss)
        tcb.open_from_cookie(ack, irs, mss, now)
        self.counters["tcp_syncookies_accepted"] += 1
        reason = tcb.on_segment(ack, now)  # it may carry data (or even a FIN)
        if reason is not None:
            self.counters.drop(reason)
        return True, tcb
