"""One TCP connection: the state machine of RFC 9293 §3.10, sans-IO.

A `Tcb` is driven by three kinds of event and nothing else:

- `on_segment(seg, now)`: a segment arrived (RFC 9293 §3.10.7);
- user calls: `send`, `read`, `shutdown`, `close`, `abort` (§3.10.2–3.10.5);
- `on_timer(now)`: a deadline in `next_deadline` has passed (§3.10.8).

`poll(now)` returns the segments to transmit. The TCB never reads a clock, never
does I/O and knows nothing of other connections; timers are absolute deadlines.
Extensions: window scaling and timestamps (RFC 7323), SACK (RFC 2018), RFC 5961.
Loss recovery: RACK-TLP (RFC 8985) with PRR (RFC 6937) where SACK and timestamps are on,
else SACK-based recovery (RFC 6675) or NewReno (RFC 6582); RTO (RFC 6298) as the last
resort.

The TCB owns the connection's variables (the RFC's names: `snd_una`, `rcv_nxt`, …) and
the user calls; modules of one job each, functions that take the TCB, do the work
(ARCHITECTURE.md lists them).
"""

from collections.abc import Callable

from ustack.stats import Counters, DropReason
from ustack.tcp import (
    autotune,
    buffers,
    congestion,
    events,
    handshake,
    output,
    rcvwnd,
    receive,
    seq,
    timeouts,
    timers,
    timewait,
    tlp,
)
from ustack.tcp.config import TcpConfig
from ustack.tcp.eifel import DsackUndo, Eifel
from ustack.tcp.flight import Flight
from ustack.tcp.options import DEFAULT_MSS, ts_clock
from ustack.tcp.prr import Prr
from ustack.tcp.rack import Rack
from ustack.tcp.reassembly import Reassembly
from ustack.tcp.rtt import RttEstimator
from ustack.tcp.sack import Scoreboard
from ustack.tcp.segment import RST, Segment
from ustack.tcp.sendbuf import SendBuffer
from ustack.tcp.states import ON_CLOSE, RECEIVING, SENDING, State

RTO_AFTER_SYN_TIMEOUT = 3.0  # RFC 6298 (5.7)
# Every variable, the TCB's __slots__: it has no __dict__, which was half of an idle
# connection's memory (3.3 of 6.6 KB, issue 17). A variable not named here cannot be set.
_VARIABLES = """
    _ack_delayed _ack_now _budget _challenge_count _challenge_second _consecutive_rtos _cwnd_limited
    _cwnd_usage_seq _dsack _dsack_undo _dupacks _dupacks_rcv_nxt _dupacks_sent _eifel _fin_queued
    _fin_seq _flight _force_one _full_segments_unacked _growth_refused _high_rxt _keepalive_probes
    _last_rcv _max_flight _now _ooo _oow_ack_at _outbox _pace_at _pace_backlog _pace_wait
    _persist_backoff _probe_owed _prr _rack _rcv_adv _rcv_buf _rcv_buf_locked _rcv_claimed _rcv_len
    _rcv_mss_seen _rcv_space _recover _retries _snd_buf _snd_buf_cap _snd_buf_seq _snd_claimed
    _syn_owed _syn_timed_out _tlp _tlp_due _tlp_owed _ts_offset bytes_acked bytes_received cc config
    counters error events fin_received in_recovery irs iss last_ack_sent local_port max_snd_wnd
    nodelay on_recovery on_state_change on_timer_fired on_wake orphaned passive path_mss
    rcv_buf_size rcv_mss rcv_nxt rcv_wscale remote_addr remote_port retransmits rtt sack_ok
    scoreboard snd_buf_size snd_mss snd_nxt snd_una snd_wl1 snd_wl2 snd_wnd snd_wscale state
    time_wait timers ts_ok ts_recent tso_max wscale_ok
"""


class Tcb:
    __slots__ = tuple(_VARIABLES.split())

    def __init__(
        self,
        local_port: int,
        remote_port: int,
        iss: int,
        *,
        mss: int,
        config: TcpConfig | None = None,
        remote_addr: bytes = b"",
        ts_offset: int = 0,
        counters: Counters | None = None,
        tso_max: int = 0,
        budget: autotune.BufferBudget | None = None,
    ) -> None:
        self.config = config = config or TcpConfig()
        # TSO: the device cuts segments of up to this much data into MSS-sized ones.
        self.tso_max = tso_max
        self.counters = counters if counters is not None else Counters()
        self.state = State.CLOSED
        self.remote_addr = remote_addr  # identity only: the stack routes by it
        self.local_port = local_port
        self.remote_port = remote_port
        self.passive = False
        self._fin_queued = False  # the user closed its sending side
        self.fin_received = False
        self.orphaned = False  # the user closed: nobody will read
        self.error: Exception | None = None
        self.nodelay = config.nodelay
        # What happened for the application since the host last took it (`tcp.events`).
        self.events = 0
        # The host's: a user call left something to send (poll this TCB next).
        self.on_wake: Callable[[Tcb], None] | None = None
        # The stack's probe: state changes, timers that fire, steps of loss recovery.
        self.on_state_change: Callable[[Tcb, State, State], None] | None = None
        self.on_timer_fired: Callable[[Tcb, str], None] | None = None
        self.on_recovery: Callable[[Tcb, str, str], None] | None = None
        self.time_wait: timewait.TimeWait | None = None  # in TIME-WAIT: all that is left
        self._init_sequence_space(iss, mss, config, ts_offset)
        self._init_buffers(iss, mss, config, budget)
        self._init_recovery(iss)
        self._init_sending(iss, config)
        self._init_ack_policy()
        self._init_timers()

    def _init_sequence_space(self, iss: int, mss: int, config: TcpConfig,
                             ts_offset: int) -> None:
        # Send sequence variables (RFC 9293 §3.3.1).
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0  # RFC 5961 §5.2: the largest window the peer offered
        # Receive sequence variables.
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_adv = 0  # right edge of the window we advertised: RCV.NXT + RCV.WND
        # MSS: ours (sent in our SYN) and the effective send MSS (MUST-16).
        self.rcv_mss = mss
        self.snd_mss = DEFAULT_MSS
        self.path_mss = mss  # what the path's MTU allows (`ustack.tcp.pathmtu`)
        self._rcv_mss_seen = DEFAULT_MSS  # largest segment received: "full-sized"
        # Negotiated options (RFC 7323, RFC 2018): offered in our SYN, kept if echoed.
        # The scale must let the window reach the largest the buffer may grow to.
        self.rcv_wscale = (rcvwnd.wscale_for(max(config.rcv_buf, config.rcv_buf_max))
                           if config.window_scaling else 0)
        self.snd_wscale = 0
        self.wscale_ok = False
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0  # TS.Recent (RFC 7323 §4.3)
        self.last_ack_sent = 0  # Last.ACK.sent
        self._ts_offset = ts_offset  # RFC 7323 §5.4: a random offset (per peer address)

    def _init_buffers(self, iss: int, mss: int, config: TcpConfig,
                      budget: autotune.BufferBudget | None) -> None:
        # Buffers: _snd_buf holds unacknowledged and unsent data, its first byte at _snd_buf_seq.
        self._snd_buf = SendBuffer()
        self._snd_buf_seq = seq.add(iss, 1)
        # In-order text not yet read: views of the segments as they arrived, and their total.
        self._rcv_buf: list[bytes | memoryview] = []
        self._rcv_len = 0
        self.rcv_buf_size = config.rcv_buf
        # Autotuning (ustack.tcp.autotune): the receive buffer grows with the reads per
        # RTT, the send buffer with cwnd; growth is claimed from the host's budget.
        self.snd_buf_size = config.snd_buf
        self._snd_buf_cap = max(config.snd_buf_max, config.snd_buf)
        self._budget = budget if budget is not None else autotune.BufferBudget()
        self._rcv_space = autotune.ReceiveSpace(min(config.rcv_buf, 10 * mss))
        self._rcv_buf_locked = False  # the user fixed it (SO_RCVBUF): no autotuning
        self._rcv_claimed = self._snd_claimed = 0  # growth taken from the budget
        self._growth_refused = False  # the budget said no (counted once until a yes)
        self._ooo = Reassembly()
        self._fin_seq: int | None = None  # where the peer's FIN is, once seen
        self._syn_owed = True  # our SYN (or SYN-ACK) is to be sent

    def _init_recovery(self, iss: int) -> None:
        # Loss recovery (RFC 5681 §3.2, RFC 6582, RFC 6675).
        self._dupacks = 0
        self._consecutive_rtos = 0  # timeouts since SND.UNA last moved
        self.in_recovery = False
        self._recover = iss  # RFC 6582 "recover"; RFC 6675 RecoveryPoint
        self._high_rxt = iss  # RFC 6675 HighRxt: the end of what this recovery resent
        self.scoreboard = Scoreboard()
        self._rack = Rack()  # RFC 8985 §6: loss by time
        self._prr = Prr()  # RFC 6937: the window through a fast recovery
        self._tlp: tlp.Episode | None = None  # RFC 8985 §7: the probe not yet judged
        self._tlp_owed = False  # the probe timer fired: poll sends the probe
        self._tlp_due = False  # new data went out or SND.UNA moved: (re)arm the probe
        # What is in flight, when it was sent, what is SACKed and what presumed lost and
        # to be sent again before any new data (RTT samples, RACK).
        self._flight = Flight()
        self._eifel: Eifel | None = None  # a timeout to check for being spurious
        self._dsack_undo: DsackUndo | None = None  # a fast recovery D-SACKs may undo

    def _init_sending(self, iss: int, config: TcpConfig) -> None:
        # Pacing (ustack.tcp.pacing): when the next release may go, and whether data waits.
        self._pace_at = 0.0
        self._pace_wait = False
        self._pace_backlog = False  # the last release spent its allowance with data left
        # RFC 2883: a duplicate range received, reported once as the first SACK block.
        self._dsack: tuple[int, int] | None = None
        # Congestion window validation (Linux tcp_cwnd_validate; RFC 7661's aim): the
        # window grows only when it limited sending in the current window of data.
        self._cwnd_limited = False
        self._max_flight = 0
        self._cwnd_usage_seq = iss
        self.cc = congestion.make(config.congestion, self.snd_mss, paced=config.pacing)
        self.retransmits = 0
        # `ss -ti`'s bytes_acked and bytes_received (unbounded, unlike sequence numbers).
        self.bytes_acked = 0
        self.bytes_received = 0

    def _init_ack_policy(self) -> None:
        # ACK policy (`ustack.tcp.delivery`): owed at the next poll, or delayed (MUST-40).
        self._ack_now = False
        self._ack_delayed = False
        self._full_segments_unacked = 0
        # The duplicate ACKs sent at the current RCV.NXT (a coalesced run counts as the
        # segments it carries, up to DupThresh: `delivery.hold_out_of_order`).
        self._dupacks_sent = 0
        self._dupacks_rcv_nxt = 0
        self._probe_owed = False
        self._force_one = False  # send one segment even beyond the window (RTO)
        self._syn_timed_out = False
        self._outbox: list[Segment] = []
        self._now = 0.0

    def _init_timers(self) -> None:
        self.timers = timers.Timers()
        self._retries = 0
        self._persist_backoff = 0
        self._last_rcv = 0.0
        self._keepalive_probes = 0
        self._challenge_second = -1.0
        # The last ACK sent to a PAWS-rejected ACK.
        self._oow_ack_at = -receive.OOW_ACK_INTERVAL
        self._challenge_count = 0
        self.rtt = RttEstimator()

    @property
    def next_deadline(self) -> float | None:
        return self.timers.next_deadline

    @property
    def timer_kind(self) -> timers.TimerKind | None:
        return self.timers.kind

    # ------------------------------------------------------------------ opens

    def open_active(self, now: float) -> None:
        """Active OPEN (RFC 9293 §3.10.1): send <SEQ=ISS><CTL=SYN>, enter SYN-SENT."""
        self._last_rcv = now
        self._set_state(State.SYN_SENT)

    def open_passive(self, syn: Segment, now: float) -> None:
        """A SYN reached a listener (RFC 9293 §3.10.7.2): enter SYN-RECEIVED."""
        handshake.passive_open(self, syn, now)

    def open_from_cookie(self, ack: Segment, irs: int, mss: int, now: float) -> None:
        """The ACK that completes a SYN-cookie handshake (RFC 4987 §3.6): ESTABLISHED."""
        handshake.cookie_open(self, ack, irs, mss, now)

    # ------------------------------------------------------------- user calls

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """SEND call (RFC 9293 §3.10.2): queue data behind what is buffered."""
        if self.state not in SENDING or self._fin_queued:
            raise ConnectionError(f"cannot send in state {self.state} after close")
        self._snd_buf.append(data)
        if not self.snd_wnd:
            buffers.grow_snd_buf_if_stuck(self)
        self._wake()

    def read(self) -> bytes:
        """RECEIVE call (§3.10.3): take every buffered byte; may open the window."""
        chunks = self._rcv_buf
        data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._rcv_len = 0
        if data:
            want = self._rcv_space.on_read(len(data), self._now, self.rcv_mss)
            if (want is not None and want > self.rcv_buf_size and not self._rcv_buf_locked
                    and self.state in RECEIVING):
                buffers.grow_rcv_buf(self, want)
            if rcvwnd.window_update_due(self):
                self._ack_now = True  # a window update (§3.8.6.2.2)
            self._wake()
        return data

    def set_receive_buffer(self, nbytes: int) -> None:
        """SO_RCVBUF: a fixed receive buffer from now on (no autotuning, as on Linux); never
        below what is buffered. The window already advertised is not taken back."""
        buffers.release_growth(self, snd=False)
        self.rcv_buf_size = max(nbytes, self._rcv_len)
        self._rcv_buf_locked = True
        self._wake()  # a larger buffer may open the window

    def set_nodelay(self, enabled: bool) -> None:
        """TCP_NODELAY: off turns Nagle's algorithm (RFC 9293 §3.7.4) on."""
        self.nodelay = enabled
        self._wake()  # Nagle may have held a small segment

    def set_config(self, config: TcpConfig) -> None:
        """New settings (setsockopt: keep-alive and its timing) from the next poll on,
        which re-arms the timers."""
        self.config = config
        self._wake()

    @property
    def readable(self) -> int:
        return self._rcv_len

    @property
    def send_buffered(self) -> int:
        """Bytes the user handed over that the peer has not yet acknowledged."""
        return len(self._snd_buf)

    def shutdown(self) -> None:
        """CLOSE call for the sending side (§3.10.4): a FIN follows the queued data."""
        if not self._fin_queued:
            self._queue_fin()
            self._wake()

    def _queue_fin(self) -> None:
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
        self._rcv_len = 0
        if not self._fin_queued:
            self._queue_fin()
        self._wake()

    def abort(self, error: Exception | None = None) -> None:
        """ABORT (§3.10.5): <SEQ=SND.NXT><CTL=RST> if synchronized; the user hears `error`."""
        if self.state not in (State.CLOSED, State.SYN_SENT, State.TIME_WAIT):
            self._outbox.append(output.segment(self, RST, seq_no=self.snd_nxt))
        self._close(error)
        self._wake()

    def _wake(self) -> None:
        """A user call changed what there is to send: the host polls this TCB next (no
        caller has to remember to)."""
        if self.on_wake is not None:
            self.on_wake(self)

    # -------------------------------------------------------- segment arrives

    def on_segment(self, seg: Segment, now: float, *,
                   accept_queue_full: bool = False) -> DropReason | None:
        """RFC 9293 §3.10.7; returns why the segment was dropped, if it was.

        `accept_queue_full`: the listener this SYN-RECEIVED connection came from has no
        room for one more established connection. The ACK that would complete the
        handshake is then dropped once it is found valid, and the connection stays in
        SYN-RECEIVED (its SYN-ACK retransmission, or the peer's next segment, completes it
        later): Linux's tcp_check_req with tcp_abort_on_overflow = 0, not a RST.
        """
        self._now = now
        if self.state is State.ESTABLISHED and receive.fast_path(self, seg, now):
            reason = None
        elif self.state is State.SYN_SENT:
            reason = receive.syn_sent(self, seg, now)
        elif self.state is State.TIME_WAIT:
            reason = receive.time_wait(self, seg, now)
        elif self.state is State.CLOSED:
            reason = DropReason.TCP_UNEXPECTED
        else:
            reason = receive.synchronized(self, seg, now, accept_queue_full)
        if not self.snd_wnd:
            buffers.grow_snd_buf_if_stuck(self)
        timeouts.rearm(self, now)
        return reason

    # ------------------------------------------------------- sequence helpers

    def _fin_acked(self) -> bool:
        return self._fin_queued and self.snd_una == self._fin_seq_end()

    def _fin_sent(self) -> bool:
        return self._fin_queued and self.snd_nxt == self._fin_seq_end()

    def _fin_seq_end(self) -> int:
        """The sequence number just after our FIN."""
        return seq.add(self._snd_buf_seq, len(self._snd_buf) + 1)

    def _ts_now(self, now: float) -> int:
        return ts_clock(now, self._ts_offset)

    # ----------------------------------------------------------------- timers

    def on_timer(self, now: float) -> None:
        """§3.10.8: a deadline has passed (an early call does nothing)."""
        timeouts.fire(self, now)

    def _fired(self, kind: timers.TimerKind) -> None:
        if self.on_timer_fired is not None:
            self.on_timer_fired(self, kind)

    def _note(self, kind: str, detail: str = "") -> None:
        """A step of loss recovery, for the ladder (its counter is counted by the caller)."""
        if self.on_recovery is not None:
            self.on_recovery(self, kind, detail)

    def take_time_wait(self) -> timewait.TimeWait | None:
        """Hand the TIME-WAIT record over (to the host's table): from then on this TCB only
        holds what the application has not read yet, and no timer. Its state stays
        TIME_WAIT for good (the record, not the TCB, reaches CLOSED): an application is
        done with it once it has read the rest and closed, as with a kernel socket."""
        tw, self.time_wait = self.time_wait, None
        self.timers.clear()
        return tw

    # ----------------------------------------------------------------- output

    def poll(self, now: float) -> list[Segment]:
        """The segments to transmit now (MUST-58: one ACK for everything processed)."""
        return output.poll(self, now)

    # ------------------------------------------------------------------ state

    def _set_state(self, new: State) -> None:
        old, self.state = self.state, new
        if new is State.CLOSED:
            buffers.release_growth(self)  # LAST-ACK ends here without _close
        if new is State.ESTABLISHED and self._syn_timed_out and self.rtt.srtt is None:
            self.rtt.rto = max(self.rtt.rto, RTO_AFTER_SYN_TIMEOUT)  # RFC 6298 (5.7)
        if old is not new:
            # Identity tests, not sets: an enum member hashes in Python (Enum.__hash__).
            if new is State.CLOSED:
                self.events |= events.CLOSED
            elif new is State.FIN_WAIT_2 or new is State.TIME_WAIT:
                self.events |= events.FIN_ACKED
            elif (old is State.SYN_SENT or old is State.SYN_RCVD) and new is not State.SYN_RCVD:
                self.events |= events.ESTABLISHED  # the handshake is done
            if self.on_state_change is not None:
                self.on_state_change(self, old, new)

    def _close(self, error: Exception | None) -> None:
        """Enter CLOSED: flush the queues; the stack deletes the TCB."""
        self.error = error
        self._snd_buf.clear()
        self._ooo.clear()
        self._flight.clear()
        self.timers.clear()
        self._set_state(State.CLOSED)
