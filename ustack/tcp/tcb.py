"""One TCP connection: the state machine of RFC 9293 §3.10, sans-IO.

A `Tcb` is driven by three kinds of event and nothing else:

- `on_segment(seg, now)`: a segment arrived (RFC 9293 §3.10.7);
- user calls: `send`, `read`, `shutdown`, `close`, `abort` (§3.10.2–3.10.5);
- `on_timer(now)`: the deadline in `next_deadline` has passed (§3.10.8).

`poll(now)` returns the segments to transmit. The TCB never reads a clock, never
does I/O and knows nothing of other connections; timers are absolute deadlines.
"""

from collections.abc import Callable

from ustack.stats import DropReason
from ustack.tcp import seq
from ustack.tcp.congestion import Reno
from ustack.tcp.options import DEFAULT_MSS
from ustack.tcp.rtt import MAX_RTO, RttEstimator
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN, Segment
from ustack.tcp.states import ON_CLOSE, ON_FIN_ACKED, ON_FIN_RECEIVED, RECEIVING, SENDING, State

MAX_WINDOW = 0xFFFF  # no window scaling yet (RFC 7323 comes later)
DEFAULT_RCV_BUF = 256 * 1024
DEFAULT_MSL = 30.0
# RFC 9293 §3.8.3: R2 for data at least 100 s (MUST-20), for a SYN at least 3 min (MUST-23).
DATA_RETRIES = 15  # Linux tcp_retries2: about 15 minutes at the 60 s maximum RTO
SYN_RETRIES = 7  # 1+2+4+…+64 s: 255 s of SYN retransmission before giving up
FIN_WAIT_2_TIMEOUT = 60.0  # Linux tcp_fin_timeout, for connections the user has closed


class Timer:
    """What the single deadline slot is for (smoltcp's `Timer` enum)."""

    RETRANSMIT = "retransmit"
    PERSIST = "persist"
    TIME_WAIT = "time_wait"
    FIN_WAIT_2 = "fin_wait_2"


class Tcb:
    def __init__(
        self,
        local_port: int,
        remote_port: int,
        iss: int,
        *,
        mss: int,
        rcv_buf: int = DEFAULT_RCV_BUF,
        msl: float = DEFAULT_MSL,
        remote_addr: bytes = b"",
    ) -> None:
        self.state = State.CLOSED
        self.remote_addr = remote_addr  # identity only: the stack routes by it
        self.local_port = local_port
        self.remote_port = remote_port
        self.passive = False
        # Send sequence variables (RFC 9293 §3.3.1).
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0  # RFC 5961 §5.2 needs the largest window the peer offered
        # Receive sequence variables.
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_adv = 0  # right edge of the window we advertised: RCV.NXT + RCV.WND
        # MSS: ours (sent in our SYN) and the effective send MSS (MUST-16).
        self.rcv_mss = mss
        self.snd_mss = DEFAULT_MSS
        # Buffers: _snd_buf holds unacknowledged and unsent data, its first byte at _snd_buf_seq.
        self._snd_buf = bytearray()
        self._snd_buf_seq = seq.add(iss, 1)
        self._rcv_buf = bytearray()
        self.rcv_buf_size = rcv_buf
        # Next sequence number to transmit: equals SND.NXT except after a retransmission
        # timeout, when it goes back to SND.UNA and catches up (go-back-N).
        self._send_cursor = iss
        self._fin_queued = False  # the user closed its sending side
        self.fin_received = False
        self.orphaned = False  # the user closed: nobody will read
        self.error: BaseException | None = None
        self._ack_owed = False
        self._probe_owed = False
        self._outbox: list[Segment] = []
        # Timers: one slot shared by retransmission, persist and the closing timers.
        self.msl = msl
        self.timer_kind: str | None = None
        self.next_deadline: float | None = None
        self._retries = 0
        self._persist_backoff = 0
        self.rtt = RttEstimator()
        self._rtt_seq: int | None = None  # timing this sequence number (one at a time)
        self._rtt_time = 0.0
        self.cc = Reno(self.snd_mss)
        self.retransmits = 0
        self.on_state_change: Callable[[Tcb, State, State], None] | None = None
        self._heap_deadline: float | None = None  # owned by the stack's timer heap

    # ------------------------------------------------------------------ opens

    def open_active(self, now: float) -> None:
        """Active OPEN (RFC 9293 §3.10.1): send <SEQ=ISS><CTL=SYN>, enter SYN-SENT."""
        self._snd_buf_seq = seq.add(self.iss, 1)
        self._set_state(State.SYN_SENT)

    def open_passive(self, syn: Segment, now: float) -> None:
        """A SYN reached a listener (RFC 9293 §3.10.7.2): enter SYN-RECEIVED."""
        self.passive = True
        self._set_irs(syn.seq)
        self._set_peer_mss(syn.mss)
        self._update_window(syn)
        self._set_state(State.SYN_RCVD)

    # ------------------------------------------------------------- user calls

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """SEND call (RFC 9293 §3.10.2): queue data behind what is buffered."""
        if self.state not in SENDING or self._fin_queued:
            raise ConnectionError(f"cannot send in state {self.state} after close")
        self._snd_buf += data

    def read(self) -> bytes:
        """RECEIVE call (§3.10.3): take every buffered byte; may open the window."""
        data = bytes(self._rcv_buf)
        self._rcv_buf.clear()
        if data and self._window_update_due():
            self._ack_owed = True
        return data

    @property
    def readable(self) -> int:
        return len(self._rcv_buf)

    @property
    def send_buffered(self) -> int:
        """Bytes the user handed over that the peer has not yet acknowledged."""
        return len(self._snd_buf)

    def shutdown(self) -> None:
        """CLOSE call for the sending side (§3.10.4): a FIN follows the queued data."""
        if self._fin_queued:
            return
        if self.state is State.SYN_SENT:
            self._close(None)  # "delete the TCB"
            return
        if self.state in SENDING:
            self._fin_queued = True
            # SYN-RECEIVED: the FIN waits until ESTABLISHED (§3.10.4).
            if self.state in ON_CLOSE and self.state is not State.SYN_RCVD:
                self._set_state(ON_CLOSE[self.state])

    def close(self) -> None:
        """Full close: shut down sending and drop anything that arrives unread."""
        self.orphaned = True
        self._rcv_buf.clear()
        self.shutdown()

    def abort(self) -> None:
        """ABORT call (§3.10.5): <SEQ=SND.NXT><CTL=RST> in synchronized states."""
        if self.state not in (State.CLOSED, State.SYN_SENT, State.TIME_WAIT):
            self._outbox.append(self._segment(RST, seq_no=self.snd_nxt))
        self._close(None)

    # -------------------------------------------------------- segment arrives

    def on_segment(self, seg: Segment, now: float) -> DropReason | None:
        """RFC 9293 §3.10.7; returns why the segment was dropped, if it was."""
        if self.state is State.SYN_SENT:
            reason = self._on_syn_sent(seg, now)
        elif self.state is State.CLOSED:
            reason = DropReason.TCP_UNEXPECTED
        else:
            reason = self._on_synchronizing_or_synchronized(seg, now)
        self._update_timer(now)
        return reason

    def _on_syn_sent(self, seg: Segment, now: float) -> DropReason | None:
        # RFC 9293 §3.10.7.3, first: check the ACK bit.
        if seg.flags & ACK and (
            seq.le(seg.ack, self.iss) or seq.gt(seg.ack, self.snd_nxt)
        ):
            if not seg.flags & RST:
                self._outbox.append(self._segment(RST, seq_no=seg.ack))
            return DropReason.TCP_BAD_ACK
        # Second: the RST bit; acceptable only with an ACK of our SYN (RFC 5961 §3.2).
        if seg.flags & RST:
            if seg.flags & ACK:
                self._close(ConnectionRefusedError("connection refused"))
                return None
            return DropReason.TCP_NOT_ACCEPTABLE
        # Fourth: the SYN bit.
        if not seg.flags & SYN:
            return DropReason.TCP_UNEXPECTED
        self._set_irs(seg.seq)
        self._set_peer_mss(seg.mss)
        if seg.flags & ACK:
            self._ack_advanced(seg.ack, now)
        if seq.gt(self.snd_una, self.iss):
            self._update_window(seg)
            self._set_state(State.ESTABLISHED)
            self._ack_owed = True
            # Text in a SYN-ACK is rare and may be dropped: the peer retransmits it.
        else:
            # Simultaneous open (§3.3.5): <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>.
            self._send_cursor = self.iss
            self._set_state(State.SYN_RCVD)
        return None

    def _on_synchronizing_or_synchronized(self, seg: Segment, now: float) -> DropReason | None:
        state = self.state
        flags = seg.flags
        if state is State.SYN_RCVD and flags & SYN and not flags & ACK and seg.seq == self.irs:
            # The peer retransmitted its SYN: our SYN-ACK was lost. Send it again
            # (Linux tcp_check_req), rather than the bare ACK of the sequence check.
            self._send_cursor = self.iss
            return None

        # First, check sequence number (§3.10.7.4, Table 6).
        if not self._acceptable(seg):
            if not flags & RST:
                self._ack_owed = True  # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
            return DropReason.TCP_NOT_ACCEPTABLE

        # Second, check the RST bit (with RFC 5961 §3.2).
        if flags & RST:
            if seg.seq != self.rcv_nxt:
                self._ack_owed = True  # challenge ACK
                return DropReason.TCP_NOT_ACCEPTABLE
            if state is State.SYN_RCVD:
                # Passive: back to LISTEN, i.e. this embryonic TCB just goes away.
                self._close(None if self.passive else ConnectionRefusedError("connection refused"))
            elif state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
                self._close(None)
            else:
                self._close(ConnectionResetError("connection reset by peer"))
            return None

        # Fourth, check the SYN bit (third, security, does not apply).
        if flags & SYN:
            if state is State.SYN_RCVD and self.passive:
                self._close(None)  # "return this connection to the LISTEN state"
                return None
            self._ack_owed = True  # RFC 5961 §4.2: challenge ACK
            return DropReason.TCP_NOT_ACCEPTABLE

        # Fifth, check the ACK field.
        if not flags & ACK:
            return DropReason.TCP_NO_ACK
        if state is State.SYN_RCVD:
            if not (seq.lt(self.snd_una, seg.ack) and seq.le(seg.ack, self.snd_nxt)):
                self._outbox.append(self._segment(RST, seq_no=seg.ack))  # <SEQ=SEG.ACK><CTL=RST>
                return DropReason.TCP_BAD_ACK
            self._update_window(seg)
            self._set_state(State.ESTABLISHED)
            if self._fin_queued:
                self._set_state(State.FIN_WAIT_1)
        if seq.gt(seg.ack, self.snd_nxt):
            self._ack_owed = True  # it acknowledges something not yet sent
            return DropReason.TCP_BAD_ACK
        if seq.lt(seg.ack, seq.sub(self.snd_una, self.max_snd_wnd)):
            self._ack_owed = True  # RFC 5961 §5.2: too old to be acceptable
            return DropReason.TCP_BAD_ACK
        if seq.lt(self.snd_una, seg.ack):
            self._ack_advanced(seg.ack, now)
        if seq.le(self.snd_una, seg.ack) and (
            seq.lt(self.snd_wl1, seg.seq)
            or (self.snd_wl1 == seg.seq and seq.le(self.snd_wl2, seg.ack))
        ):
            self._update_window(seg)
        if self._fin_acked() and self.state in ON_FIN_ACKED:
            self._set_state(ON_FIN_ACKED[self.state])
            if self.state is State.CLOSED:
                return None  # LAST-ACK: "delete the TCB, and return"
            if self.state is State.TIME_WAIT:
                self._arm(Timer.TIME_WAIT, now + 2 * self.msl)

        # Sixth, the URG bit: urgent data is not supported; the pointer is ignored.

        # Seventh, process the segment text.
        payload, fin, start = self._trim(seg)
        if payload:
            if self.state not in RECEIVING:
                pass  # after the peer's FIN there is no more text (§3.10.7.4 seventh)
            elif start != self.rcv_nxt:
                # Not the next expected byte: drop it and say what we expect (a
                # duplicate ACK). Reassembly (SHLD-31) comes with the RFC 9293 work.
                self._ack_owed = True
                return DropReason.TCP_OUT_OF_ORDER
            elif self.orphaned:
                # Data after the user's close has no reader: reset, as Linux does.
                self._outbox.append(self._segment(RST | ACK, seq_no=self.snd_nxt))
                self._close(None)
                return None
            else:
                self._rcv_buf += payload
                self.rcv_nxt = seq.add(self.rcv_nxt, len(payload))
                self._ack_owed = True

        # Eighth, check the FIN bit.
        if fin and seq.add(start, len(payload)) == self.rcv_nxt:
            self.rcv_nxt = seq.add(self.rcv_nxt, 1)
            self._ack_owed = True
            self.fin_received = True
            if self.state in ON_FIN_RECEIVED:
                self._set_state(ON_FIN_RECEIVED[self.state])
            if self.state is State.TIME_WAIT:
                self._arm(Timer.TIME_WAIT, now + 2 * self.msl)  # (re)start 2 MSL
        return None

    def _acceptable(self, seg: Segment) -> bool:
        """RFC 9293 §3.10.7.4 Table 6, against the window we advertised."""
        rcv_wnd = seq.sub(self._rcv_adv, self.rcv_nxt)
        seg_len = seg.seg_len
        if rcv_wnd == 0:
            # Special allowance for ACKs and RSTs at RCV.NXT when our window is zero:
            # text is trimmed away below, the ACK field still counts.
            return seg.seq == self.rcv_nxt
        if seg_len == 0:
            return seq.in_range(seg.seq, self.rcv_nxt, self._rcv_adv)
        return seq.in_range(seg.seq, self.rcv_nxt, self._rcv_adv) or seq.in_range(
            seq.add(seg.seq, seg_len - 1), self.rcv_nxt, self._rcv_adv
        )

    def _trim(self, seg: Segment) -> tuple[bytes | memoryview, bool, int]:
        """The part of the text inside the window, whether the FIN survives, and its start."""
        payload = seg.payload
        fin = bool(seg.flags & FIN)
        start = seg.seq
        old = seq.sub(self.rcv_nxt, start)
        if old and old < 0x8000_0000:  # starts before RCV.NXT: drop what we already have
            if old > len(payload):
                return b"", False, self.rcv_nxt
            payload = payload[old:]
            start = self.rcv_nxt
        room = seq.sub(self._rcv_adv, start)
        if len(payload) > room:
            payload = payload[:room]
            fin = False  # the FIN lies beyond the window
            self._ack_owed = True
        return payload, fin, start

    # ------------------------------------------------------------ ACK effects

    def _ack_advanced(self, ack: int, now: float) -> None:
        """SND.UNA < SEG.ACK =< SND.NXT: drop acknowledged data, feed RTT and cwnd."""
        acked = seq.sub(ack, self.snd_una)
        self.snd_una = ack
        drop = min(seq.sub(ack, self._snd_buf_seq), len(self._snd_buf))
        if drop and seq.sub(ack, self._snd_buf_seq) < 0x8000_0000:
            del self._snd_buf[:drop]
            self._snd_buf_seq = seq.add(self._snd_buf_seq, drop)
        if seq.lt(self._send_cursor, ack):
            self._send_cursor = ack
        if self._rtt_seq is not None and seq.ge(ack, self._rtt_seq):
            self.rtt.sample(now - self._rtt_time)
            self._rtt_seq = None
        self._retries = 0
        self.cc.on_ack(acked)
        # RFC 6298 (5.2)/(5.3): stop the timer when all is acknowledged, else restart it.
        if self.timer_kind == Timer.RETRANSMIT:
            if self.snd_una == self.snd_nxt:
                self._disarm()
            else:
                self._arm(Timer.RETRANSMIT, now + self.rtt.rto)

    def _update_window(self, seg: Segment) -> None:
        self.snd_wnd = seg.wnd
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self.max_snd_wnd = max(self.max_snd_wnd, seg.wnd)

    def _fin_acked(self) -> bool:
        return self._fin_queued and self.snd_una == self._fin_seq_end()

    def _fin_seq_end(self) -> int:
        """The sequence number just after our FIN."""
        return seq.add(self._snd_buf_seq, len(self._snd_buf) + 1)

    def _set_irs(self, irs: int) -> None:
        """IRS and RCV.NXT from the peer's SYN; the window already offered keeps its size."""
        offered = seq.sub(self._rcv_adv, self.rcv_nxt)
        self.irs = irs
        self.rcv_nxt = seq.add(irs, 1)
        self._rcv_adv = seq.add(self.rcv_nxt, offered)

    def _set_peer_mss(self, mss: int | None) -> None:
        # MUST-15/16: 536 without the option; never above what we can receive in one piece.
        self.snd_mss = max(1, min(mss if mss is not None else DEFAULT_MSS, self.rcv_mss))
        self.cc.set_mss(self.snd_mss)

    # ----------------------------------------------------------------- timers

    def on_timer(self, now: float) -> None:
        """§3.10.8: the deadline has passed (an early call does nothing)."""
        if self.next_deadline is None or now < self.next_deadline:
            return
        kind = self.timer_kind
        self._disarm()
        if kind in (Timer.TIME_WAIT, Timer.FIN_WAIT_2):
            self._close(None)
        elif kind == Timer.PERSIST:
            # MUST-36: probe the zero window. Like Linux (tcp_xmit_probe_skb) the probe
            # is <SEQ=SND.UNA-1>, which the peer must answer with its current window.
            self._probe_owed = True
            self._persist_backoff += 1
        elif kind == Timer.RETRANSMIT:
            self._on_retransmission_timeout(now)
        self._update_timer(now)

    def _on_retransmission_timeout(self, now: float) -> None:
        self._retries += 1
        limit = SYN_RETRIES if self.state in (State.SYN_SENT, State.SYN_RCVD) else DATA_RETRIES
        if self._retries > limit:
            self._close(TimeoutError("connection timed out"))
            return
        # RFC 6298 (5.4)-(5.6): retransmit the earliest unacknowledged segment and
        # back off; Karn: the retransmitted segment gives no RTT sample (MUST-18).
        self.rtt.backoff()
        self._rtt_seq = None
        self.cc.on_rto(seq.sub(self.snd_nxt, self.snd_una))
        self._send_cursor = self.snd_una
        self.retransmits += 1

    def _arm(self, kind: str, deadline: float) -> None:
        self.timer_kind = kind
        self.next_deadline = deadline

    def _disarm(self) -> None:
        self.timer_kind = None
        self.next_deadline = None

    def _update_timer(self, now: float) -> None:
        """Keep the slot consistent with what is outstanding (after every event)."""
        if self.state in (State.CLOSED, State.TIME_WAIT):
            return
        if self.snd_una != self.snd_nxt:
            if self.timer_kind != Timer.RETRANSMIT:
                self._arm(Timer.RETRANSMIT, now + self.rtt.rto)  # RFC 6298 (5.1)
        elif self._unsent() and self.snd_wnd == 0:
            if self.timer_kind != Timer.PERSIST:
                interval = min(MAX_RTO, self.rtt.rto * (1 << min(self._persist_backoff, 10)))
                self._arm(Timer.PERSIST, now + interval)
        elif self.state is State.FIN_WAIT_2 and self.orphaned:
            if self.timer_kind != Timer.FIN_WAIT_2:
                self._arm(Timer.FIN_WAIT_2, now + FIN_WAIT_2_TIMEOUT)
        elif self.timer_kind is not None:
            self._disarm()

    # ----------------------------------------------------------------- output

    def poll(self, now: float) -> list[Segment]:
        """The segments to transmit now (MUST-58: one ACK for everything processed)."""
        out = self._outbox
        self._outbox = []
        state = self.state
        if state is State.CLOSED:
            self._ack_owed = self._probe_owed = False
            return out
        if state is State.SYN_SENT:
            if self._send_cursor == self.iss:
                self._transmit(out, SYN, self.iss, b"", now)
        elif state is State.SYN_RCVD:
            if self._send_cursor == self.iss:
                self._transmit(out, SYN | ACK, self.iss, b"", now)
        elif state not in (State.CLOSED, State.TIME_WAIT, State.FIN_WAIT_2):
            self._send_text(out, now)
        if self._probe_owed:
            self._probe_owed = False
            out.append(self._segment(ACK, seq_no=seq.sub(self.snd_una, 1)))
        elif self._ack_owed and not any(s.flags & ACK for s in out):
            out.append(self._segment(ACK, seq_no=self.snd_nxt))
        self._ack_owed = False
        self._update_timer(now)
        return out

    def _unsent(self) -> int:
        return len(self._snd_buf) - seq.sub(self._send_cursor, self._snd_buf_seq)

    def _send_text(self, out: list[Segment], now: float) -> None:
        """Data (and FIN) from the cursor, within min(SND.WND, cwnd) (MUST-17, MUST-19)."""
        buf_end = seq.add(self._snd_buf_seq, len(self._snd_buf))
        wnd_end = seq.add(self.snd_una, min(self.snd_wnd, self.cc.cwnd))
        while True:
            cursor = self._send_cursor
            pending = seq.sub(buf_end, cursor) if seq.lt(cursor, buf_end) else 0
            if pending:
                room = seq.sub(wnd_end, cursor) if seq.lt(cursor, wnd_end) else 0
                n = min(self.snd_mss, pending, room)
                if n <= 0:
                    return
                offset = seq.sub(cursor, self._snd_buf_seq)
                payload = bytes(memoryview(self._snd_buf)[offset:offset + n])  # one copy
                flags = ACK
                if n == pending:
                    flags |= PSH  # MUST-61: push when the buffer empties
                    if self._fin_queued:
                        flags |= FIN
                self._transmit(out, flags, cursor, payload, now)
            elif self._fin_queued and cursor == buf_end:
                self._transmit(out, FIN | ACK, cursor, b"", now)
                return
            else:
                return

    def _transmit(self, out: list[Segment], flags: int, seq_no: int, payload: bytes,
                  now: float) -> None:
        seg = self._segment(flags, seq_no=seq_no, payload=payload)
        if flags & SYN:
            seg.mss = self.rcv_mss  # RFC 9293 §3.7.1: MSS option in our SYN (MUST-14)
        end = seq.add(seq_no, seg.seg_len)
        if seq.gt(end, self.snd_nxt):
            if self._rtt_seq is None and seq.ge(seq_no, self.snd_nxt):
                self._rtt_seq, self._rtt_time = end, now  # time new data only (Karn)
            self.snd_nxt = end
        self._send_cursor = end
        out.append(seg)

    def _segment(self, flags: int, *, seq_no: int, payload: bytes = b"") -> Segment:
        if flags & RST and not flags & ACK:
            return Segment(self.local_port, self.remote_port, seq_no, 0, flags, 0)
        if self.state is State.SYN_SENT:
            return Segment(self.local_port, self.remote_port, seq_no, 0, flags, self._window(),
                           payload)
        return Segment(self.local_port, self.remote_port, seq_no, self.rcv_nxt, flags | ACK,
                       self._window(), payload)

    # ------------------------------------------------------ receive window

    def _free_space(self) -> int:
        return max(0, self.rcv_buf_size - len(self._rcv_buf))

    def _window(self) -> int:
        """RCV.WND to advertise, with receiver SWS avoidance (RFC 9293 §3.8.6.2.2)."""
        current = seq.sub(self._rcv_adv, self.rcv_nxt)
        if current >= 0x8000_0000:
            current = 0
        free = min(self._free_space(), MAX_WINDOW)
        if free - current >= min(self.rcv_buf_size // 2, self.rcv_mss):
            current = free
        self._rcv_adv = seq.add(self.rcv_nxt, current)
        return current

    def _window_update_due(self) -> bool:
        current = seq.sub(self._rcv_adv, self.rcv_nxt)
        free = min(self._free_space(), MAX_WINDOW)
        return free - current >= min(self.rcv_buf_size // 2, self.rcv_mss)

    # ------------------------------------------------------------------ state

    def _set_state(self, new: State) -> None:
        old, self.state = self.state, new
        if self.on_state_change is not None and old is not new:
            self.on_state_change(self, old, new)

    def _close(self, error: BaseException | None) -> None:
        """Enter CLOSED: flush the queues; the stack deletes the TCB."""
        self.error = error
        self._snd_buf.clear()
        self._disarm()
        self._set_state(State.CLOSED)
