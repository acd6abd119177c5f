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
"""

from collections.abc import Callable

from ustack.stats import Counters, DropReason
from ustack.tcp import (
    autotune,
    congestion,
    pacing,
    receive,
    sack,
    seq,
    timers,
    timewait,
    tlp,
)
from ustack.tcp.config import FIN_WAIT_2_TIMEOUT, TcpConfig
from ustack.tcp.eifel import DsackUndo, Eifel
from ustack.tcp.flight import END, RETRANS, SENT_AT, Flight
from ustack.tcp.options import DEFAULT_MSS, MAX_WSCALE, TIMESTAMP_SPACE, Options, ts_clock
from ustack.tcp.prr import Prr
from ustack.tcp.rack import Rack
from ustack.tcp.reassembly import Reassembly
from ustack.tcp.rtt import MAX_RTO, RttEstimator
from ustack.tcp.sack import DUP_THRESH, Scoreboard
from ustack.tcp.segment import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, Segment
from ustack.tcp.sendbuf import SendBuffer
from ustack.tcp.states import ON_CLOSE, RECEIVING, SENDING, State

MAX_UNSCALED_WINDOW = 0xFFFF
MIN_SND_MSS = 48 + 40  # Linux tcp_min_snd_mss (48 bytes of data) plus 40 of options
RTO_AFTER_SYN_TIMEOUT = 3.0  # RFC 6298 (5.7)
_SYNCHRONIZED_SENDING = (State.ESTABLISHED, State.CLOSE_WAIT)
# Where a tail loss probe may go: synchronized, with our data or FIN possibly in flight.
_PROBING = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING,
                      State.LAST_ACK})
# The longest RTT a TSecr may claim: the longest RTO (RFC 6298 (2.5)); an ACK can take no
# longer without a retransmission, which Karn excludes anyway. Linux's bound is ~35 min
# (tcp_rtt_tsopt_us); ours is tighter. We could also demand that the echo be no older than
# the TSval of the oldest unacknowledged segment (RFC 7323 §4.1 does not ask for it): that
# needs per-segment send times, which the sender does not keep yet.
_MAX_TS_RTT_MS = int(MAX_RTO * 1000)
# The timers that stand for the RTO while data is in flight (RFC 8985 §6.3, §7.2: the
# reordering and probe timers take its place, and hand it back when they fire).
_RTO_LIKE = (timers.RETRANSMIT, timers.LOSS_PROBE, timers.REORDER)
REORDER_SLACK = 0.001


def wscale_for(buffer: int) -> int:
    """The smallest shift that lets the window cover `buffer` (RFC 7323 §2.3)."""
    shift = 0
    while (buffer >> shift) > MAX_UNSCALED_WINDOW and shift < MAX_WSCALE:
        shift += 1
    return shift


class Tcb:
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
        self._rcv_mss_seen = DEFAULT_MSS  # largest segment received: "full-sized"
        # Negotiated options (RFC 7323, RFC 2018): offered in our SYN, kept if echoed.
        # The scale must let the window reach the largest the buffer may grow to.
        self.rcv_wscale = (wscale_for(max(config.rcv_buf, config.rcv_buf_max))
                           if config.window_scaling else 0)
        self.snd_wscale = 0
        self.wscale_ok = False
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0  # TS.Recent (RFC 7323 §4.3)
        self.last_ack_sent = 0  # Last.ACK.sent
        self._ts_offset = ts_offset  # RFC 7323 §5.4: a random offset (per peer address)
        # Buffers: _snd_buf holds unacknowledged and unsent data, its first byte at _snd_buf_seq.
        self._snd_buf = SendBuffer()
        self._snd_buf_seq = seq.add(iss, 1)
        # In-order text not yet read: views of the segments as they arrived (no copy until
        # read() joins them), and their total.
        self._rcv_buf: list[bytes | memoryview] = []
        self._rcv_len = 0
        self.rcv_buf_size = config.rcv_buf
        # Autotuning (ustack.tcp.autotune): the receive buffer grows by what the
        # application reads per RTT, the send buffer (what send() takes before the
        # application is asked to wait) with cwnd and with what it queued; growth beyond
        # the initial sizes is claimed from the host's budget.
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
        self._fin_queued = False  # the user closed its sending side
        self.fin_received = False
        self.orphaned = False  # the user closed: nobody will read
        self.error: Exception | None = None
        self.nodelay = config.nodelay
        # ACK policy: now (MUST-58 aggregation still applies per batch) or delayed (MUST-40).
        self._ack_now = False
        self._ack_delayed = False
        self._full_segments_unacked = 0
        # SACK compression (Linux __tcp_ack_snd_check): the duplicate ACKs sent at the
        # current RCV.NXT, and the out-of-order segments since the last ACK went.
        self._dupacks_sent = 0
        self._dupacks_rcv_nxt = 0
        self._probe_owed = False
        self._force_one = False  # send one segment even beyond the window (RTO)
        self._syn_timed_out = False
        self._outbox: list[Segment] = []
        self._now = 0.0
        # Timers.
        self.timers = timers.Timers()
        self._retries = 0
        self._persist_backoff = 0
        self._last_rcv = 0.0
        self._keepalive_probes = 0
        self._challenge_second = -1.0
        self._oow_ack_at = -receive.OOW_ACK_INTERVAL  # the last ACK sent to a PAWS-rejected ACK
        self._challenge_count = 0
        self.rtt = RttEstimator()
        # What is in flight, when it was sent, what is SACKed and what presumed lost and
        # to be sent again before any new data (RTT samples, RACK).
        self._flight = Flight()
        self._eifel: Eifel | None = None  # a timeout to check for being spurious
        self._dsack_undo: DsackUndo | None = None  # a fast recovery D-SACKs may undo
        # Pacing (ustack.tcp.pacing): when the next release may go, and whether data waits.
        self._pace_at = 0.0
        self._pace_wait = False
        self._pace_backlog = False  # the last release spent its allowance with data left
        # RFC 2883: a duplicate range received, reported once as the first SACK block.
        self._dsack: tuple[int, int] | None = None
        # Congestion window validation (Linux tcp_cwnd_validate; RFC 7661's aim): whether
        # the window limited sending in the current window of data, and the most that was
        # in flight in it; the window grows only when it was used.
        self._cwnd_limited = False
        self._max_flight = 0
        self._cwnd_usage_seq = iss
        self.cc = congestion.make(config.congestion, self.snd_mss, paced=config.pacing)
        self.retransmits = 0
        # What `ss -ti` shows as bytes_acked and bytes_received (64-bit, unlike sequence
        # numbers): data acknowledged by the peer, and in-order data taken from it.
        self.bytes_acked = 0
        self.bytes_received = 0
        # Observability hooks (the stack's probe): state changes and timers that fire.
        self.on_state_change: Callable[[Tcb, State, State], None] | None = None
        self.on_timer_fired: Callable[[Tcb, str], None] | None = None
        # ... and the steps of loss recovery: (kind, detail), as `ustack.ladder` names them.
        self.on_recovery: Callable[[Tcb, str, str], None] | None = None
        self.time_wait: timewait.TimeWait | None = None  # in TIME-WAIT: all that is left
        self._heap_deadline: float | None = None  # owned by the stack's timer heap

    @property
    def next_deadline(self) -> float | None:
        return self.timers.next_deadline

    @property
    def timer_kind(self) -> str | None:
        return self.timers.kind

    # ------------------------------------------------------------------ opens

    def open_active(self, now: float) -> None:
        """Active OPEN (RFC 9293 §3.10.1): send <SEQ=ISS><CTL=SYN>, enter SYN-SENT."""
        self._last_rcv = now
        self._set_state(State.SYN_SENT)

    def open_passive(self, syn: Segment, now: float) -> None:
        """A SYN reached a listener (RFC 9293 §3.10.7.2): enter SYN-RECEIVED."""
        self.passive = True
        self._last_rcv = now
        self._set_irs(syn.seq)
        self._negotiate(syn)
        self._update_window(syn)
        self._set_state(State.SYN_RCVD)

    def open_from_cookie(self, ack: Segment, irs: int, mss: int, now: float) -> None:
        """The ACK that completes a SYN-cookie handshake (RFC 4987 §3.6): ESTABLISHED."""
        self.passive = True
        self._last_rcv = now
        self.rcv_wscale = 0  # a cookie carries no options but the MSS
        self._set_irs(irs)
        self._rcv_adv = seq.add(self.rcv_nxt, min(self.rcv_buf_size, MAX_UNSCALED_WINDOW))
        self._set_peer_mss(mss)
        self.snd_una = self.snd_nxt = seq.add(self.iss, 1)
        self._syn_owed = False
        self._update_window(ack)
        self._set_state(State.ESTABLISHED)

    def _negotiate(self, syn: Segment) -> None:
        """Keep the options both SYNs carried (RFC 7323 §2.2, §3.2; RFC 2018 §2)."""
        opts = syn.opts
        self._set_peer_mss(opts.mss)
        self.wscale_ok = opts.wscale is not None and self.config.window_scaling
        if self.wscale_ok:
            self.snd_wscale = opts.wscale or 0
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = opts.sack_permitted and self.config.sack
        self.ts_ok = opts.ts_val is not None and self.config.timestamps
        if self.ts_ok:
            self.ts_recent = opts.ts_val or 0
            self.cc.set_mss(self.snd_mss - TIMESTAMP_SPACE)  # >= 76: MIN_SND_MSS

    # ------------------------------------------------------------- user calls

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """SEND call (RFC 9293 §3.10.2): queue data behind what is buffered."""
        if self.state not in SENDING or self._fin_queued:
            raise ConnectionError(f"cannot send in state {self.state} after close")
        self._snd_buf.append(data)
        if not self.snd_wnd:
            self._grow_snd_buf_if_stuck()

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
                self._grow_rcv_buf(want)
            if self._window_update_due():
                self._ack_now = True  # a window update (§3.8.6.2.2)
        return data

    def set_receive_buffer(self, nbytes: int) -> None:
        """SO_RCVBUF: a fixed receive buffer from now on (no autotuning, as on Linux); never
        below what is buffered. The window already advertised is not taken back."""
        self._release_growth(snd=False)
        self.rcv_buf_size = max(nbytes, self._rcv_len)
        self._rcv_buf_locked = True

    def _grow_rcv_buf(self, want: int) -> None:
        # No larger than the window can say with the scale the handshake fixed (Linux
        # window_clamp): a peer without window scaling sees at most 64 KB.
        cap = min(max(self.config.rcv_buf_max, self.config.rcv_buf),
                  MAX_UNSCALED_WINDOW << self.rcv_wscale)
        new = self._grow(self.rcv_buf_size, want, cap)
        if new > self.rcv_buf_size:
            self._rcv_claimed += new - self.rcv_buf_size
            self.rcv_buf_size = new
            self.counters["tcp_rcvbuf_grown"] += 1

    def _grow_snd_buf_if_stuck(self) -> None:
        """Both ways blocked: the peer's window is closed, text waits for our application,
        and it has queued more than the send buffer holds (so it waits for room before it
        reads). Linux would keep it waiting until the peer reads; a peer that writes
        everything before it reads (with an echo between them) would then wait for us as
        we wait for it, both windows at zero. Grow the send buffer by what was queued."""
        if (not self.snd_wnd and self._rcv_len and len(self._snd_buf) > self.snd_buf_size
                and self.state in _SYNCHRONIZED_SENDING):
            self._grow_snd_buf(len(self._snd_buf))

    def _grow_snd_buf(self, want: int) -> None:
        """To at least `want` (doubling, so that growth is claimed a few times only)."""
        new = self._grow(self.snd_buf_size, max(want, 2 * self.snd_buf_size), self._snd_buf_cap)
        if new > self.snd_buf_size:
            self._snd_claimed += new - self.snd_buf_size
            self.snd_buf_size = new
            self.counters["tcp_sndbuf_grown"] += 1

    def _grow(self, current: int, want: int, cap: int) -> int:
        """What a buffer of `current` bytes grows to for `want` (at most `cap`), claimed
        from the host's budget; `current` when the budget has no room (counted once, until
        a growth succeeds again)."""
        new = min(want, cap)
        if new <= current:
            return current
        if not self._budget.claim(new - current):
            if not self._growth_refused:
                self._growth_refused = True
                self.counters["tcp_buffer_growth_denied"] += 1
            return current
        self._growth_refused = False
        return new

    def _release_growth(self, rcv: bool = True, snd: bool = True) -> None:
        """Give the growth this connection claimed back to the host's budget."""
        if rcv and self._rcv_claimed:
            self._budget.release(self._rcv_claimed)
            self.rcv_buf_size -= self._rcv_claimed
            self._rcv_claimed = 0
        if snd and self._snd_claimed:
            self._budget.release(self._snd_claimed)
            self.snd_buf_size -= self._snd_claimed
            self._snd_claimed = 0

    @property
    def readable(self) -> int:
        return self._rcv_len

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
        self._rcv_len = 0
        self.shutdown()

    def abort(self) -> None:
        """ABORT call (§3.10.5): <SEQ=SND.NXT><CTL=RST> in synchronized states."""
        if self.state not in (State.CLOSED, State.SYN_SENT, State.TIME_WAIT):
            self._outbox.append(self._segment(RST, seq_no=self.snd_nxt))
        self._close(None)

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
            self._grow_snd_buf_if_stuck()
        self._update_timers(now)
        return reason

    # ------------------------------------------------------------ ACK effects

    def _ack_arrived(self, seg: Segment, now: float) -> None:
        """An acceptable ACK (§3.10.7.4 fifth): D-SACK, SACK news, a loss probe's verdict,
        new data acknowledged or a duplicate ACK, RACK's loss marking, PRR's window."""
        dsack = self.sack_ok and sack.is_dsack(seg.opts.sack, seg.ack)
        if dsack:
            self.counters["tcp_dsack_received"] += 1  # the peer got something twice
            if self._dsack_undo is not None and self._dsack_undo.dsacked(
                    *seg.opts.sack[0], self._max_payload()):
                self._undo_recovery("D-SACKs: every retransmission was received twice")
            if self._uses_rack() and self._rack.on_dsack(self.snd_una, self.snd_nxt):
                self.counters["tcp_rack_reo_wnd_changes"] += 1
                self._note("reo_wnd", f"{self._rack.reo_wnd_mult} x min RTT / 4, D-SACK")
        if self.scoreboard and self.scoreboard.reneged(seg.ack):
            # The peer dropped data it had SACKed: resend it like the rest (RFC 2018 §8).
            self.counters["tcp_sack_reneging"] += 1
            self.scoreboard.clear()
            self._flight.unsack_all()
        una, sacked = self.snd_una, self.scoreboard.sacked
        new_blocks = (self.scoreboard.update(seg.opts.sack, self.snd_una, self.snd_nxt)
                      if self.sack_ok else None)
        new_sack = bool(new_blocks)
        if new_blocks:
            self._sacked(new_blocks, seg.opts.ts_ecr, now)
        advanced = seq.lt(self.snd_una, seg.ack)
        if self._tlp is not None:
            self._judge_loss_probe(seg, dsack, advanced or new_sack)
        if advanced:
            self._ack_advanced(seg.ack, seg.opts.ts_ecr, now)
        elif self._is_duplicate_ack(seg, new_sack):
            self._on_duplicate_ack(now)
        if self.sack_ok and (self.in_recovery or self.scoreboard):
            if self._uses_rack() and (advanced or new_sack):
                # Only news of delivery moves RACK's verdicts (time alone is the
                # reordering timer's): a walk of the flight per duplicate ACK was
                # a good part of the cost of a reordering path.
                self._detect_loss(now)
            self._undo_if_nothing_resent()
            if self.in_recovery:
                # RFC 6937: what this ACK delivered, the advance of SND.UNA and the change
                # in SACKed bytes, sets what the recovery may send.
                delivered = max(0, seq.sub(self.snd_una, una) + self.scoreboard.sacked - sacked)
                self.cc.cwnd = self._prr.on_ack(delivered, self._pipe(), self.cc.ssthresh,
                                                self.snd_mss)

    def _ack_advanced(self, ack: int, ts_ecr: int, now: float) -> None:
        """SND.UNA < SEG.ACK =< SND.NXT: drop acknowledged data, feed RTT and cwnd."""
        if self._eifel is not None:
            self._check_spurious_retransmit(ack, ts_ecr)
        mask = seq.MASK
        una = self.snd_una
        acked = (ack - una) & mask
        self.snd_una = ack
        self.bytes_acked += acked
        buf = self._snd_buf
        into_buf = seq.ahead(ack, self._snd_buf_seq)
        if into_buf and buf:
            drop = min(into_buf, len(buf))
            buf.drop(drop)
            self._snd_buf_seq = (self._snd_buf_seq + drop) & mask
        if self.scoreboard:
            self.scoreboard.advance(ack)
        # The RTT: from the send time of the newest segment this ACK covers, unless any
        # of them went out twice (Karn, MUST-18); only then from the echoed timestamp
        # (RFC 7323 §4.1), which has millisecond ticks: it dates the copy that reached
        # the peer, so it times a retransmission too (Linux tcp_ack_update_rtt does the
        # same; without it RTO stayed backed off through a long recovery, up to 60 s
        # between two retransmissions). Not if it lies in our future or further back
        # than any RTT can be (Linux tcp_rtt_tsopt_us): a peer echoing garbage must not
        # pin RTO at 60 s.
        sent_at, retransmitted, hole_end = self._flight.acked(ack)
        self._undo_if_nothing_resent()
        if sent_at is not None and self._uses_rack():
            rack = self._rack
            if hole_end is not None:
                rack.reached(hole_end, False)
            rack.reached(ack, True)
            rack.delivered(sent_at, ack, retransmitted, now, self._echo_older(ts_ecr, sent_at))
        sample = None
        if sent_at is not None and not retransmitted:
            sample = now - sent_at
            self.rtt.sample(sample)
        elif self.ts_ok and ts_ecr:
            delta = (self._ts_now(now) - ts_ecr) & mask
            if delta <= _MAX_TS_RTT_MS:
                self.rtt.sample(delta / 1000)
        self._retries = 0
        self._persist_backoff = 0
        self._dupacks = 0
        self._consecutive_rtos = 0
        flight = seq.sub(self.snd_nxt, self.snd_una)
        if not self.in_recovery:
            # Keep the recovery marks just behind SND.UNA, so that they never lag 2**31
            # behind and flip meaning.
            if seq.gt(ack, self._recover):
                self._recover = ack
            if seq.gt(ack, self._high_rxt):
                self._high_rxt = ack
            self.cc.on_ack(acked, now, self.rtt.srtt, ack, self.snd_nxt, sample,
                           self._is_cwnd_limited())
            if 2 * self.cc.cwnd > self.snd_buf_size < self._snd_buf_cap:
                self._grow_snd_buf(2 * self.cc.cwnd)  # Linux tcp_sndbuf_expand
        elif seq.ge(ack, self._recover):
            # Full acknowledgment: recovery is over (RFC 6582 §3.2 step 3, RFC 6675 §5).
            self.in_recovery = False
            self.cc.on_recovery_exit(flight)
            if self._rack.on_recovery_exit():
                self.counters["tcp_rack_reo_wnd_changes"] += 1
                self._note("reo_wnd", "min RTT / 4 again")
        elif self._uses_rack():
            pass  # RACK looks at the flight after every ACK (`_detect_loss`)
        elif self.sack_ok:
            self._mark_lost()  # RFC 6675: the scoreboard says what else is missing
        else:
            # RFC 6582 §3.2 step 5, partial acknowledgment: resend the next hole at once
            # and deflate the window by what was acknowledged (adding one SMSS back).
            self._flight.lose_range(self.snd_una, seq.add(self.snd_una, self._max_payload()))
            self._force_one = True
            self.cc.cwnd = max(self.snd_mss, self.cc.cwnd - acked
                               + (self.snd_mss if acked >= self.snd_mss else 0))
        # RFC 6298 (5.2)/(5.3): stop the timer when all is acknowledged, else restart it
        # (or the probe timer in its place, RFC 8985 §7.2: `_update_timers`).
        if self.timers.kind in (timers.RETRANSMIT, timers.LOSS_PROBE):
            if self.snd_una == self.snd_nxt:
                self.timers.disarm()
            else:
                self.timers.arm(timers.RETRANSMIT, now + self.rtt.rto)
        self._tlp_due = True

    def _update_window(self, seg: Segment) -> None:
        # RFC 7323 §2.3: the window field of a SYN is never scaled.
        reopened = self.snd_wnd == 0
        self.snd_wnd = seg.wnd if seg.flags & SYN else seg.wnd << self.snd_wscale
        if reopened and self.snd_wnd and self.snd_una != self.snd_nxt:
            # What we sent into the zero window (probes) was not accepted: resend it now.
            self._flight.lose_range(self.snd_una, self.snd_nxt)
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)

    def _fin_acked(self) -> bool:
        return self._fin_queued and self.snd_una == self._fin_seq_end()

    def _fin_sent(self) -> bool:
        return self._fin_queued and self.snd_nxt == self._fin_seq_end()

    def _fin_seq_end(self) -> int:
        """The sequence number just after our FIN."""
        return seq.add(self._snd_buf_seq, len(self._snd_buf) + 1)

    def _set_irs(self, irs: int) -> None:
        """IRS and RCV.NXT from the peer's SYN; the window already offered keeps its size."""
        offered = seq.sub(self._rcv_adv, self.rcv_nxt)
        self.irs = irs
        self.rcv_nxt = seq.add(irs, 1)
        self._rcv_adv = seq.add(self.rcv_nxt, offered)
        self.last_ack_sent = self.rcv_nxt

    def _set_peer_mss(self, mss: int | None) -> None:
        # MUST-15/16: 536 without the option; never above what we can receive in one piece.
        # A floor, as Linux's tcp_min_snd_mss: a tiny MSS (leaving no room for data next
        # to options) would stall the connection or split it into 1-byte segments.
        wanted = mss if mss is not None else DEFAULT_MSS
        self.snd_mss = max(MIN_SND_MSS, min(wanted, self.rcv_mss))
        self.cc.set_mss(self.snd_mss)

    def _ts_now(self, now: float) -> int:
        return ts_clock(now, self._ts_offset)

    # ----------------------------------------------------------------- timers

    def on_timer(self, now: float) -> None:
        """§3.10.8: a deadline has passed (an early call does nothing)."""
        self._now = now
        t = self.timers
        if t.delack_at is not None and now >= t.delack_at:
            t.delack_at = None
            self._ack_now = self._ack_now or self._ack_delayed
            self._fired("delayed_ack")
        if t.keepalive_at is not None and now >= t.keepalive_at:
            t.keepalive_at = None
            self._fired("keepalive")
            self._on_keepalive_timeout()
        if t.pace_at is not None and now >= t.pace_at:
            t.pace_at = None  # the next release is due: poll sends it (not an RFC timer)
            self._pace_wait = False
        if t.slot_at is not None and now >= t.slot_at:
            kind = t.kind
            t.disarm()
            if kind is not None:
                self._fired(kind)
            if kind in (timers.TIME_WAIT, timers.FIN_WAIT_2):
                self._close(None)
            elif kind == timers.PERSIST:
                # MUST-36: probe the zero window. Like Linux (tcp_xmit_probe_skb) the probe
                # is <SEQ=SND.UNA-1>, which the peer must answer with its current window.
                self._probe_owed = True
                self._persist_backoff += 1
                self.counters["tcp_window_probes"] += 1
            elif kind == timers.RETRANSMIT:
                self._on_retransmission_timeout()
            elif kind == timers.LOSS_PROBE:
                self._tlp_owed = True  # poll sends it; the RTO is armed behind it
            elif kind == timers.REORDER:
                self.counters["tcp_rack_reo_timeouts"] += 1
                if self._uses_rack() and self.snd_una != self.snd_nxt:
                    self._detect_loss(now)
        self._update_timers(now)

    def _fired(self, kind: str) -> None:
        if self.on_timer_fired is not None:
            self.on_timer_fired(self, kind)

    def _note(self, kind: str, detail: str = "") -> None:
        """A step of loss recovery, for the ladder (its counter is counted by the caller)."""
        if self.on_recovery is not None:
            self.on_recovery(self, kind, detail)

    def _on_retransmission_timeout(self) -> None:
        syn = self.state in (State.SYN_SENT, State.SYN_RCVD)
        # A peer that keeps answering with a zero window is alive (MUST-37): only
        # silence counts towards giving up.
        if syn or self.snd_wnd or self._now - self._last_rcv >= MAX_RTO:
            self._retries += 1
        if self._retries > (self.config.syn_retries if syn else self.config.max_retries):
            self._close(TimeoutError("connection timed out"))
            return
        # RFC 6298 (5.4)-(5.6): retransmit the earliest unacknowledged segment and
        # back off; Karn: the retransmitted segment gives no RTT sample (MUST-18).
        self.rtt.backoff()
        if syn:
            self._syn_owed = True
            self._syn_timed_out = True
        else:
            if self._consecutive_rtos == 0 and self.ts_ok and self._unacked_text():
                # RFC 3522: the first ACK after the retransmission tells whether it was
                # needed; keep what the reduction below would undo (RFC 4015). Not for a
                # lone FIN: a peer in TIME-WAIT answers its retransmission with the TSecr
                # of the first copy (Linux tcp_timewait_state_process echoes tw_ts_recent
                # to an out-of-window segment), so every lost ACK would look spurious; and
                # there is nothing left to send for an undo to help.
                self._eifel = Eifel(self.snd_una, self.cc.snapshot())
            # RFC 5681 §3.1: ssthresh is held when the same data times out again.
            self._consecutive_rtos += 1
            self.cc.on_rto(seq.sub(self.snd_nxt, self.snd_una), self._now,
                           repeated=self._consecutive_rtos > 1)
            # RFC 6582: after a timeout, recover = the highest sequence sent; everything
            # outstanding is resent but what the peer SACKed (Linux tcp_timeout_mark_lost
            # keeps those marks: resending them was most of the retransmissions on a
            # lossy, reordering path, all answered by D-SACKs). A peer that reneges is
            # caught by the next ACK (`Scoreboard.reneged`).
            self.in_recovery = False
            self._recover = self.snd_nxt
            self._dupacks = 0
            self._high_rxt = self.snd_una
            self._tlp = None
            self._dsack_undo = None
            self._flight.lose_range(self.snd_una, self.snd_nxt)
            # The earliest segment goes out even if the window has shrunk since (as Linux's
            # tcp_retransmit_timer): to a zero window it is the probe of MUST-36.
            self._force_one = True
        self.retransmits += 1
        self.counters["tcp_rto"] += 1

    def _check_spurious_retransmit(self, ack: int, ts_ecr: int) -> None:
        """The first ACK since a retransmission timeout or a fast retransmit (RFC 3522):
        if it acknowledges the original transmission, undo the reduction: the window and
        ssthresh of before and no resending of what was never lost (new data goes next);
        after a timeout also the RTO without its backoff (RFC 4015), after a fast
        retransmit the end of the recovery. A fast recovery that resent several segments
        is judged by every ACK up to the last of them (Linux tcp_try_undo_recovery, at its
        end): each must echo an original; one that echoes a retransmission, or a hole
        still to resend, says a loss was real. Judged by the first ACK alone, reordering
        that RACK took for loss (two or three segments late) was never undone: a 10 MB
        download through 5 % reordering ran at 0.24 of the kernel's speed."""
        eifel = self._eifel
        if eifel is None:
            return
        if not eifel.spurious(ts_ecr):
            self._eifel = None
            return
        if not eifel.timeout and (seq.lt(ack, self._high_rxt) or self._flight.lost_bytes):
            return  # so far so good: the next ACKs tell the rest
        self._eifel = None
        self._dsack_undo = None
        self.cc.restore(eifel.cc_state)
        self._flight.clear_lost()
        self._note("undo", "timeout" if eifel.timeout else "fast retransmit")
        if eifel.timeout:
            self.counters["tcp_spurious_rto"] += 1
            self.rtt.undo_backoff()
            self._consecutive_rtos = 0
        else:
            self.counters["tcp_spurious_fast_retransmit"] += 1
            self.in_recovery = False

    def _undo_if_nothing_resent(self) -> None:
        """What RACK took for lost arrived before it could be resent (one ACK of a batch
        marks, the next ones SACK or ACK it): reordering, and nothing left to wait for
        (Linux may undo when undo_retrans is 0). The window cut used to stay."""
        undo = self._dsack_undo
        if (self.in_recovery and undo is not None and not undo.resent_any
                and not self._flight.lost_bytes):
            self._undo_recovery("nothing resent: the segments came late")

    def _undo_recovery(self, why: str) -> None:
        """Every segment the last fast recovery resent came back D-SACKed (RFC 3708), or
        it resent none: it was reordering, not loss. Put the window back, unless it has
        grown past that since (Linux tcp_try_undo_dsack, tcp_undo_cwnd_reduction), and end
        the recovery if it still runs."""
        undo, self._dsack_undo = self._dsack_undo, None
        assert undo is not None
        self.counters["tcp_dsack_undo" if undo.resent_any else "tcp_reorder_undo"] += 1
        self._note("undo", why)
        if self.cc.cwnd < undo.cc_state["cwnd"]:
            self.cc.restore(undo.cc_state)
        if self.in_recovery:
            self.in_recovery = False
            self._flight.clear_lost()
        self._eifel = None

    def _on_keepalive_timeout(self) -> None:
        # RFC 9293 §3.8.4: a probe <SEQ=SND.NXT-1> makes a live peer answer with an ACK.
        if self._keepalive_probes >= self.config.keepalive_count:
            self._close(TimeoutError("connection timed out (keepalive)"))  # MUST-29 aside
            return
        self._keepalive_probes += 1
        self._probe_owed = True
        self.counters["tcp_keepalive_probes"] += 1

    def _enter_time_wait(self, now: float) -> None:
        """Keep only the compact record; the send side, the out-of-order queue and the
        recovery state go (unread text stays for the application). "Start the time-wait
        timer, turn off the other timers" (§3.10.7.4 eighth)."""
        lifetime = 2 * self.config.msl
        self.time_wait = timewait.TimeWait(
            self.local_port, self.remote_port, self.snd_nxt, self.rcv_nxt, self._window(),
            self.rcv_wscale, self.ts_ok, self.ts_recent, self._ts_offset, now + lifetime,
            lifetime, self._challenge_second, self._challenge_count)
        self._snd_buf.clear()
        self._ooo.clear()
        self.scoreboard.clear()
        self._flight.clear()
        self.timers.clear()
        self._release_growth()

    def take_time_wait(self) -> timewait.TimeWait | None:
        """Hand the TIME-WAIT record over (to the host's table): from then on this TCB only
        holds what the application has not read yet, and no timer. Its state stays
        TIME_WAIT for good (the record, not the TCB, reaches CLOSED): an application is
        done with it once it has read the rest and closed, as with a kernel socket."""
        tw, self.time_wait = self.time_wait, None
        self.timers.clear()
        return tw

    def _update_timers(self, now: float) -> None:
        """Keep the deadlines consistent with what is outstanding (after every event)."""
        t = self.timers
        if self.state is State.TIME_WAIT:
            if self.time_wait is not None:
                t.arm(timers.TIME_WAIT, self.time_wait.deadline)
            return
        if self.state is State.CLOSED:
            return
        if self.snd_una != self.snd_nxt:
            if self._tlp_due:
                # RFC 8985 §7.2: after new data goes out or SND.UNA moves, the probe timer
                # in place of the RTO (which it never outlasts), where a probe may go.
                self._tlp_due = False
                pto = self._probe_timeout()
                if pto is not None and t.kind != timers.REORDER:
                    at = now + pto
                    if t.kind == timers.RETRANSMIT and t.slot_at is not None:
                        at = min(at, t.slot_at)  # never later than the RTO would fire
                    t.arm(timers.LOSS_PROBE, at)
            if t.kind not in _RTO_LIKE:
                t.arm(timers.RETRANSMIT, now + self.rtt.rto)  # RFC 6298 (5.1)
        elif self._unsent() and self.snd_wnd == 0:
            if t.kind != timers.PERSIST:
                backoff = 1 << min(self._persist_backoff, 10)
                t.arm(timers.PERSIST, now + min(MAX_RTO, self.rtt.rto * backoff))
        elif self.state is State.FIN_WAIT_2 and self.orphaned:
            if t.kind != timers.FIN_WAIT_2:
                t.arm(timers.FIN_WAIT_2, now + FIN_WAIT_2_TIMEOUT)
        elif t.kind is not None:
            t.disarm()
        if self._ack_delayed and not self._ack_now:
            if t.delack_at is None:
                t.delack_at = now + self.config.delayed_ack
        else:
            t.delack_at = None
        t.pace_at = self._pace_at if self._pace_wait else None
        if (self.config.keepalive and self.state in (State.ESTABLISHED, State.CLOSE_WAIT)
                and self.snd_una == self.snd_nxt):
            cfg = self.config
            t.keepalive_at = (self._last_rcv + cfg.keepalive_idle
                              + self._keepalive_probes * cfg.keepalive_interval)
        else:
            t.keepalive_at = None

    # ----------------------------------------------------------------- output

    def poll(self, now: float) -> list[Segment]:
        """The segments to transmit now (MUST-58: one ACK for everything processed)."""
        self._now = now
        out = self._outbox
        self._outbox = []
        state = self.state
        if state is State.CLOSED:
            self._ack_now = self._ack_delayed = self._probe_owed = False
            return out
        if state is State.SYN_SENT or state is State.SYN_RCVD:
            if self._syn_owed:
                self._syn_owed = False
                self._transmit(out, SYN if state is State.SYN_SENT else SYN | ACK, self.iss,
                               b"", now)
        elif state is State.TIME_WAIT:
            if self._ack_now and self.time_wait is not None:
                out.append(timewait.ack(self.time_wait, now))  # of the peer's FIN
            self._ack_now = self._ack_delayed = self._probe_owed = False
            self._update_timers(now)
            return out
        elif state is not State.FIN_WAIT_2:
            self._send_text(out, now)
        if self._probe_owed:
            self._probe_owed = False
            out.append(self._segment(ACK, seq_no=seq.sub(self.snd_una, 1)))
        elif self._ack_now:
            # Every segment built carries every ACK owed (`_acked_all`): one still owed was
            # owed after them (a window opened by a read, more SACK news, a FIN).
            out.append(self._segment(ACK, seq_no=self.snd_nxt))
        self._update_timers(now)
        return out

    def _unacked_text(self) -> bool:
        """Whether data (not only the FIN) is still unacknowledged."""
        return seq.lt(self.snd_una, seq.add(self._snd_buf_seq, len(self._snd_buf)))

    def _unsent(self) -> int:
        """Data bytes never sent yet (0 once SND.NXT has passed the FIN)."""
        return max(0, len(self._snd_buf) - seq.sub(self.snd_nxt, self._snd_buf_seq))

    def _send_text(self, out: list[Segment], now: float) -> None:
        """Retransmissions first, then new data and the FIN: within SND.WND (MUST-17) and
        within what congestion control allows in the network (MUST-19, RFC 6675 pipe),
        paced, and no more per wake-up than `pacing.wakeup_cap` (see `_allowance`)."""
        self._pace_wait = False
        buf_end = seq.add(self._snd_buf_seq, len(self._snd_buf))
        if self._tlp_owed:
            self._send_loss_probe(out, now, buf_end)
        lost = self._flight.lost_bytes
        if not lost and self.snd_nxt == seq.add(buf_end, self._fin_queued):
            return  # all sent (the FIN too, if queued), nothing to resend: the common case
        wnd_end = seq.add(self.snd_una, self.snd_wnd)
        max_payload = self._max_payload()
        # TSO: one segment of whole MSS-sized pieces, which the device cuts apart.
        burst = max_payload
        if self.tso_max > max_payload:
            burst = self.tso_max // max_payload * max_payload
        cap = pacing.wakeup_cap(burst)
        pace_rate = self._pace_rate()
        if pace_rate is not None and not pacing.worth_pacing(pace_rate, cap):
            pace_rate = None
        allowance, base = self._allowance(pace_rate, now, max_payload, cap)
        if not allowance:
            return  # too early for the next release: the pacing timer comes back
        self._pace_backlog = False
        spent = 0
        while lost:
            # What is presumed lost goes first, lowest first, never what the peer SACKed
            # (RFC 6675 NextSeg rule 1; Linux tcp_xmit_retransmit_queue).
            start, end = self._flight.next_lost(max_payload)
            if not self._force_one and (self.cc.cwnd - self._pipe() < max_payload
                                        or not seq.lt(start, wnd_end)):
                break
            if not self._force_one and spent >= allowance:
                self._pace_wait = self._pace_backlog = True
                break
            self._force_one = False
            spent += self._retransmit(out, start, seq.sub(end, start), buf_end, now)
            lost = self._flight.lost_bytes
        self._force_one = False  # it only ever forces a retransmission
        if not self._pace_wait:
            spent = self._send_new(out, now, buf_end, wnd_end, max_payload, burst, allowance,
                                   spent)
        limited = self.cc.cwnd - self._pipe() < max_payload
        if spent or limited:
            self._validate_cwnd(limited)
        if pace_rate is not None and spent:
            # The next release waits until these bytes have had their time at the rate.
            self._pace_at = base + spent / pace_rate
        elif self._pace_wait:
            # Not pacing, but the wake-up's share is spent: back on the loop's next turn.
            self._pace_at = now + pacing.NEXT_TURN

    def _validate_cwnd(self, limited: bool) -> None:
        """After a send: remember, for the current window of data, whether the congestion
        window held sending back, else the most that was in flight (Linux
        tcp_cwnd_validate, which tracks the strongest signal of the window being used)."""
        flight = seq.sub(self.snd_nxt, self.snd_una)
        if (limited or not seq.lt(self.snd_una, self._cwnd_usage_seq)
                or (not self._cwnd_limited and flight > self._max_flight)):
            self._cwnd_limited = limited
            self._max_flight = flight
            self._cwnd_usage_seq = self.snd_nxt

    def _is_cwnd_limited(self) -> bool:
        """Whether the congestion window may grow (Linux tcp_is_cwnd_limited; RFC 9438
        §5.8, RFC 7661): it held sending back in the current window, or, in slow start,
        it is less than twice what was in flight. A sender limited by the receiver's
        window, the application or pacing does not learn from its ACKs that the path
        could take more: without this its window grows without bound (to tens of
        thousands of segments in a long rwnd-limited transfer), its pacing rate with it,
        and pacing stops meaning anything."""
        if self._cwnd_limited:
            return True
        cc = self.cc
        return cc.cwnd < cc.ssthresh and cc.cwnd < 2 * self._max_flight

    def _pace_rate(self) -> float | None:
        """The pacing rate in bytes/s, or None when not pacing (switched off, no RTT yet,
        or the initial window still going out)."""
        srtt = self.rtt.srtt
        if (not self.config.pacing or srtt is None or seq.sub(self.snd_nxt, self.iss)
                < congestion.INITIAL_WINDOW_SEGMENTS * self.snd_mss + 1):  # + the SYN
            return None
        cc = self.cc
        return pacing.rate(cc.cwnd, seq.sub(self.snd_nxt, self.snd_una), cc.ssthresh, srtt)

    def _allowance(self, pace_rate: float | None, now: float, max_payload: int,
                   cap: int) -> tuple[int, float]:
        """The bytes this wake-up may hand the device (at most `cap`) and the time they
        count from (`pacing.release`); 0 (and the pacing timer armed) if the next paced
        release is not due (or, unpaced, its share spent until the loop's next turn). A
        forced retransmission is never held."""
        if now < self._pace_at and not self._force_one:
            self._pace_wait = True
            return 0, now
        if pace_rate is None:
            return cap, now
        return pacing.release(self._pace_at, now, pace_rate, max_payload, cap,
                              self._pace_backlog)

    def _send_new(self, out: list[Segment], now: float, buf_end: int, wnd_end: int,
                  max_payload: int, burst: int, allowance: int, spent: int) -> int:
        """New data and the FIN, up to `allowance` bytes this wake-up; the bytes spent."""
        budget = self.cc.cwnd - self._pipe()
        wnd = -1  # one window field and one option list serve the whole burst: nothing
        opts = NO_OPTIONS  # that shapes them changes while it is built
        while True:
            cursor = self.snd_nxt
            pending = seq.sub(buf_end, cursor) if seq.lt(cursor, buf_end) else 0
            if not pending:
                if self._fin_queued and cursor == buf_end:
                    self._transmit(out, FIN | ACK, cursor, b"", now)
                return spent
            if spent >= allowance:
                self._pace_wait = self._pace_backlog = True
                return spent
            room = seq.sub(wnd_end, cursor) if seq.lt(cursor, wnd_end) else 0
            n = min(burst, pending, room, max(0, budget), max(allowance - spent, max_payload))
            if n <= 0:
                return spent
            if n < max_payload and self._hold_small(n, pending):
                return spent
            tail = n % max_payload
            if n > max_payload and tail and (
                    n < pending or (not self.nodelay and not self._fin_queued)):
                # Whole pieces only: no small piece in mid-stream (sender SWS,
                # §3.8.6.2.1), and a small last piece waits as Nagle would make it wait
                # behind the pieces now going out (§3.7.4; Linux tcp_mss_split_point).
                n -= tail
            flags = ACK
            if n == pending:
                flags |= PSH  # MUST-61: push when the buffer empties
                if self._fin_queued:
                    flags |= FIN
            dsack = False
            if wnd < 0:
                wnd = self._window()
                dsack = self._dsack is not None
                opts = self._options(ACK)
                self._acked_all()  # this burst carries every ACK we owed
            seg = Segment(self.local_port, self.remote_port, cursor, self.rcv_nxt, flags, wnd,
                          self._payload(cursor, n), opts)
            if n > max_payload:
                seg.gso = max_payload
            self._sent(out, seg, now)
            if dsack:
                opts = self._options(ACK)  # a D-SACK block goes in one segment only
            spent += n
            # Recovery state makes the pipe more than a sum: count it again then.
            budget = (budget - n if not self._flight.lost_bytes
                      else self.cc.cwnd - self._pipe())

    def _retransmit(self, out: list[Segment], start: int, n: int, buf_end: int,
                    now: float) -> int:
        """Send [start, start + n) again; the FIN rides along if it is next. Returns the
        bytes sent."""
        data = min(n, seq.sub(buf_end, start)) if seq.lt(start, buf_end) else 0
        flags = ACK
        end = seq.add(start, data)
        if self._fin_queued and end == buf_end and seq.lt(end, self.snd_nxt):
            flags |= FIN  # the FIN was sent before: it is lost with the data
        if data and end == buf_end:
            flags |= PSH
        if not data and not flags & FIN:
            self._flight.resent(start, seq.add(start, n), now)  # nothing there to send
            return 0
        self._transmit(out, flags, start, self._payload(start, data), now)
        if self._eifel is not None and self.ts_ok:
            self._eifel.on_retransmit(start, self._ts_now(now))
        if self._dsack_undo is not None and self.in_recovery:
            self._dsack_undo.on_retransmit()
        end = seq.add(end, 1 if flags & FIN else 0)
        if seq.gt(end, self._high_rxt):
            self._high_rxt = end
        return data

    def _payload(self, start: int, n: int) -> bytes | memoryview:
        offset = seq.sub(start, self._snd_buf_seq)
        return self._snd_buf.slice(offset, n)  # a view of the user's bytes, mostly

    def _pipe(self) -> int:
        """RFC 6675 §4 SetPipe, in effect: bytes sent and still believed in the network,
        i.e. outstanding minus SACKed minus what is presumed lost and not yet resent
        (Linux tcp_packets_in_flight, in bytes)."""
        flight = seq.sub(self.snd_nxt, self.snd_una)
        return max(0, flight - self.scoreboard.sacked - self._flight.lost_bytes)

    # ---------------------------------------------------------- loss recovery

    def _is_duplicate_ack(self, seg: Segment, new_sack: bool) -> bool:
        """RFC 5681 §2 DUPLICATE ACKNOWLEDGMENT (RFC 6675 §2: or one with new SACK data)."""
        if seg.ack != self.snd_una or self.snd_una == self.snd_nxt:
            return False
        if seg.flags & (SYN | FIN):
            return False
        if new_sack:
            return True  # RFC 6675 §2: new SACK information, even on a segment with data
        if seg.payload:
            return False
        # Unchanged window; a D-SACK (old data) brings no new SACK information, so a
        # duplicate of a spurious retransmission does not feed a retransmission storm.
        return not seg.opts.sack and (seg.wnd << self.snd_wscale) == self.snd_wnd

    def _on_duplicate_ack(self, now: float) -> None:
        self._dupacks += 1
        if self._uses_rack():
            return  # RACK, not a count of duplicates, says what is lost (`_detect_loss`)
        if self.in_recovery:
            if self.sack_ok:
                self._mark_lost()
            else:
                self.cc.cwnd += self.snd_mss  # RFC 6582 §3.2 step 4: inflate
            return
        sack_loss = self.sack_ok and self.scoreboard.lost_edge(self.snd_mss) is not None
        if self._dupacks < DUP_THRESH and not sack_loss:
            return
        # RFC 6582 §3.2 step 2, RFC 6675 §5.1: no new recovery until everything sent
        # before the last one (or the last timeout) is acknowledged.
        if seq.lt(self.snd_una, self._recover):
            return
        self._enter_recovery(now, f"{self._dupacks} duplicate ACKs")
        # RFC 6675 §5 (4.3) / RFC 5681 §3.2 step 2: resend the first unacknowledged segment,
        # whatever cwnd says.
        self._flight.lose_range(self.snd_una, seq.add(self.snd_una, self._max_payload()))
        if self.sack_ok:
            self._mark_lost()
        else:
            self.cc.cwnd = self.cc.ssthresh + DUP_THRESH * self.snd_mss  # RFC 6582 step 2

    def _enter_recovery(self, now: float, cause: str) -> None:
        """Fast recovery begins (RFC 6582 §3.2 step 2, RFC 6675 §5, RFC 8985 §6.3): the
        window is reduced (RFC 6937 spreads the reduction), and the first retransmission
        goes whatever the window says."""
        flight = seq.sub(self.snd_nxt, self.snd_una)
        if self.ts_ok:
            # RFC 3522: the first ACK that covers the retransmission tells whether the
            # segment was lost or only overtaken (reordering); keep what to undo.
            self._eifel = Eifel(self.snd_una, self.cc.snapshot(), timeout=False)
        if self.sack_ok:
            self._dsack_undo = DsackUndo(self.snd_una, self.cc.snapshot())
        self.in_recovery = True
        self._recover = self.snd_nxt
        self._high_rxt = self.snd_una
        self.cc.on_loss(flight, now)
        self._prr.start(flight)
        self._tlp = None  # recovery takes over from a probe (Linux tcp_enter_recovery)
        self.counters["tcp_fast_retransmits"] += 1
        self.retransmits += 1
        self._force_one = True
        self._note("fast_recovery", cause)

    # ------------------------------------------------------------ RACK-TLP

    def _uses_rack(self) -> bool:
        """RACK-TLP needs SACK; with timestamps it can also tell which copy of a
        retransmitted segment an ACK is for. Without them RFC 6675 stays in charge."""
        return self.sack_ok and self.ts_ok and self.config.rack

    def _echo_older(self, ts_ecr: int | None, sent_at: float) -> bool:
        """RFC 8985 §6.2 step 1: the ACK echoes a TSval older than a transmission at
        `sent_at` (it is for an earlier copy)."""
        return bool(self.ts_ok and ts_ecr and seq.lt(ts_ecr, self._ts_now(sent_at)))

    def _sacked(self, blocks: list[tuple[int, int]], ts_ecr: int | None, now: float) -> None:
        """SACK blocks with news (as `Scoreboard.update` found them): mark what they cover
        in the flight; each segment newly SACKed is delivered, for RACK."""
        rack = self._rack if self._uses_rack() else None
        for left, right in blocks:
            for entry in self._flight.sack(left, right):
                if rack is not None:
                    rack.reached(entry[END], entry[RETRANS])
                    rack.delivered(entry[SENT_AT], entry[END], entry[RETRANS], now,
                                   self._echo_older(ts_ecr, entry[SENT_AT]))

    def _detect_loss(self, now: float) -> None:
        """RFC 8985 §6.2 RACK_detect_loss_and_arm_timer, after every ACK with SACK news or
        in recovery, and when the reordering timer fires: mark what is lost by now, start
        a fast recovery for it, and come back when more may be."""
        rack = self._rack
        recovering = self.in_recovery or seq.lt(self.snd_una, self._recover)
        reo_wnd = rack.reo_wnd(recovering,
                               self.scoreboard.sacked > (DUP_THRESH - 1) * self.snd_mss,
                               self.rtt.srtt)
        marked, timeout = rack.detect(self._flight, now, reo_wnd)
        if marked:
            self.counters["tcp_rack_lost"] += marked
            if not recovering:
                self._enter_recovery(now, f"RACK: {marked} lost")
            else:
                self._note("rack_lost", str(marked))
        if timeout > 0:
            # Linux adds TCP_TIMEOUT_MIN (2 jiffies) to this timer: a little late is
            # better than early and again.
            self.timers.arm(timers.REORDER, now + timeout + REORDER_SLACK)
        elif self.timers.kind == timers.REORDER:
            self.timers.arm(timers.RETRANSMIT, now + self.rtt.rto)

    def _probe_timeout(self) -> float | None:
        """RFC 8985 §7.2: the time to the tail loss probe, or None if none may go: only
        with RACK, in the open state (not in a recovery, nor a timeout's), with data in
        flight, nothing presumed lost, and no probe of an earlier episode unjudged."""
        if (not self._uses_rack() or self.in_recovery or self._tlp is not None
                or self.state not in _PROBING or self.snd_una == self.snd_nxt
                or seq.lt(self.snd_una, self._recover) or self._flight.lost_bytes):
            return None
        return tlp.probe_timeout(self.rtt.srtt, seq.sub(self.snd_nxt, self.snd_una),
                                 self.snd_mss, self.rtt.rto)

    def _send_loss_probe(self, out: list[Segment], now: float, buf_end: int) -> None:
        """RFC 8985 §7.3 TLP_send_probe: one new segment if the window allows it, else the
        last segment again; the congestion window is not consulted or changed."""
        self._tlp_owed = False
        if self.snd_una == self.snd_nxt:
            return
        max_payload = self._max_payload()
        wnd_end = seq.add(self.snd_una, self.snd_wnd)
        pending = seq.sub(buf_end, self.snd_nxt) if seq.lt(self.snd_nxt, buf_end) else 0
        room = seq.sub(wnd_end, self.snd_nxt) if seq.lt(self.snd_nxt, wnd_end) else 0
        if pending and room:
            n = min(max_payload, pending, room)
            flags = ACK
            if n == pending:
                flags |= PSH | (FIN if self._fin_queued else 0)
            self._transmit(out, flags, self.snd_nxt, self._payload(self.snd_nxt, n), now)
            is_retrans = False
        else:
            end = self.snd_nxt
            start = seq.sub(end, max_payload + (1 if self._fin_sent() else 0))
            if seq.lt(start, self.snd_una):
                start = self.snd_una
            self._retransmit(out, start, seq.sub(end, start), buf_end, now)
            is_retrans = True
        self._note("loss_probe", "the last segment again" if is_retrans else "new data")
        self._tlp = tlp.Episode(self.snd_nxt, is_retrans)
        self._tlp_due = False  # the probe itself does not rearm the probe timer
        self.counters["tcp_tlp_probes"] += 1

    def _judge_loss_probe(self, seg: Segment, dsack: bool, news: bool) -> None:
        """RFC 8985 §7.4.2 (as Linux tcp_process_tlp_ack): once an ACK covers the probe,
        say whether it repaired a loss. A probe of new data needs no judging; a D-SACK of
        the probe, or a pure duplicate, says the original arrived too; an ACK beyond it
        without either says the probe repaired a loss, which the window pays for."""
        episode = self._tlp
        if episode is None or seq.lt(seg.ack, episode.end_seq):
            return
        if not episode.is_retrans or dsack:
            self._tlp = None
        elif seq.gt(seg.ack, episode.end_seq):
            self._tlp = None
            self.counters["tcp_tlp_recovered"] += 1
            self._note("probe_repaired")
            flight = seq.sub(self.snd_nxt, self.snd_una)
            self.cc.on_loss(flight, self._now)  # Linux: CWR, straight to ssthresh
            self.cc.on_recovery_exit(flight)
        elif not news and not seg.payload:
            self._tlp = None

    def _mark_lost(self) -> None:
        """RFC 6675 IsLost: unsacked data below the lost edge and above what was already
        resent in this recovery (HighRxt) is resent."""
        edge = self.scoreboard.lost_edge(self.snd_mss)
        start = self._high_rxt if seq.gt(self._high_rxt, self.snd_una) else self.snd_una
        if edge is not None and seq.lt(start, edge):
            self._flight.lose_range(start, edge)

    def _hold_small(self, n: int, pending: int) -> bool:
        """Whether a new segment of `n` < MSS bytes should wait for an ACK."""
        if self.snd_una == self.snd_nxt:
            return False  # nothing in flight: no ACK is coming to trigger us
        if n < pending:
            # Window-limited: sender SWS avoidance (§3.8.6.2.1), send at least Fs = 1/2
            # of the largest window the peer offered.
            return n < self.max_snd_wnd // 2
        # All that is queued fits: Nagle (§3.7.4) unless no-delay, or the FIN goes too.
        return not self.nodelay and not self._fin_queued

    def _transmit(self, out: list[Segment], flags: int, seq_no: int,
                  payload: bytes | memoryview, now: float) -> None:
        self._sent(out, self._segment(flags, seq_no=seq_no, payload=payload), now)

    def _sent(self, out: list[Segment], seg: Segment, now: float) -> None:
        """`seg` goes out: SND.NXT advances past new data; the flight records when."""
        start, end = seg.seq, seq.add(seg.seq, seg.seg_len)
        nxt = self.snd_nxt
        if seq.gt(end, nxt):
            if seq.lt(start, nxt):  # old data and new in one segment
                self._flight.resent(start, nxt, now)
                start = nxt
            self._flight.sent(start, end, now)
            self.snd_nxt = end
            self._tlp_due = True
        else:
            self._flight.resent(start, end, now)
            self.counters["tcp_retransmitted_segments"] += 1
        if self.in_recovery:
            self._prr.sent(seg.seg_len)
        out.append(seg)

    def _segment(self, flags: int, *, seq_no: int, payload: bytes | memoryview = b"") -> Segment:
        if flags & RST:
            ack = self.rcv_nxt if flags & ACK else 0
            return Segment(self.local_port, self.remote_port, seq_no, ack, flags, 0)
        if self.state is not State.SYN_SENT:
            flags |= ACK
        seg = Segment(self.local_port, self.remote_port, seq_no, self.rcv_nxt if flags & ACK
                      else 0, flags, self._window(syn=bool(flags & SYN)), payload,
                      self._options(flags))
        if flags & ACK:
            self._acked_all()  # this segment carries every ACK we owed
        return seg

    def _acked_all(self) -> None:
        self.last_ack_sent = self.rcv_nxt
        self._ack_now = self._ack_delayed = False
        self._full_segments_unacked = 0
        self.timers.delack_at = None

    def _options(self, flags: int) -> Options:
        opts = Options()
        if flags & SYN:
            # RFC 9293 §3.7.1 (MUST-14) MSS; RFC 7323 §2.2 WS and RFC 2018 §2 SACK-permitted
            # in a SYN-ACK only if the SYN had them (our SYN offers what is configured).
            opts.mss = self.rcv_mss
            syn_ack = bool(flags & ACK)
            if self.wscale_ok if syn_ack else self.config.window_scaling:
                opts.wscale = self.rcv_wscale
            opts.sack_permitted = self.sack_ok if syn_ack else self.config.sack
            if self.ts_ok if syn_ack else self.config.timestamps:
                opts.ts_val, opts.ts_ecr = self._ts_now(self._now), self.ts_recent
            return opts
        if self.ts_ok:
            opts.ts_val, opts.ts_ecr = self._ts_now(self._now), self.ts_recent
        if self.sack_ok and (self._ooo or self._dsack is not None):
            opts.sack = self._sack_blocks()
            if self._dsack is not None:
                self._dsack = None  # RFC 2883 §4: in one segment only (Linux too)
                self.counters["tcp_dsack_sent"] += 1
        return opts

    def _sack_blocks(self) -> tuple[tuple[int, int], ...]:
        """RFC 2018 §3-4: up to 4 blocks, 3 beside a timestamp, the newest first; RFC 2883:
        a duplicate range first of all."""
        limit = 3 if self.ts_ok else 4
        if self._dsack is None:
            return tuple(self._ooo.sack_blocks(limit))
        return (self._dsack, *self._ooo.sack_blocks(limit - 1))

    def _max_payload(self) -> int:
        """Data per segment: the MSS less the options we send (RFC 9293 §3.7.1)."""
        return self.snd_mss - self._option_space()

    def _option_space(self) -> int:
        space = TIMESTAMP_SPACE if self.ts_ok else 0
        if self.sack_ok and (self._ooo or self._dsack is not None):
            space += 4 + 8 * len(self._sack_blocks())
        return space

    # ------------------------------------------------------ receive window

    def _free_space(self) -> int:
        return max(0, self.rcv_buf_size - self._rcv_len - self._ooo.held)

    def _window(self, syn: bool = False) -> int:
        """The window field to send, with receiver SWS avoidance (RFC 9293 §3.8.6.2.2).

        The right edge RCV.NXT + RCV.WND never moves left; scaled windows are rounded up
        to the scale unit for that reason (as Linux does), never down.
        """
        shift = 0 if syn else self.rcv_wscale
        current = self._offered()
        grown = self._grown_window(MAX_UNSCALED_WINDOW << shift)
        if grown is not None:
            current = grown
        field = min(-(-current >> shift), MAX_UNSCALED_WINDOW)  # ceil(current / 2**shift)
        self._rcv_adv = seq.add(self.rcv_nxt, field << shift)
        return field

    def _window_update_due(self) -> bool:
        return self._grown_window(MAX_UNSCALED_WINDOW << self.rcv_wscale) is not None

    def _offered(self) -> int:
        """RCV.WND as last advertised (0 if RCV.NXT has passed the edge)."""
        return seq.ahead(self._rcv_adv, self.rcv_nxt)

    def _grown_window(self, limit: int) -> int | None:
        """The larger window to offer, if free space has grown by at least
        min(buffer / 2, MSS) over what was offered (§3.8.6.2.2); else None."""
        free = min(self._free_space(), limit)
        if free - self._offered() >= min(self.rcv_buf_size // 2, self.rcv_mss):
            return free
        return None

    # ------------------------------------------------------------------ state

    def _set_state(self, new: State) -> None:
        old, self.state = self.state, new
        if new is State.CLOSED:
            self._release_growth()  # LAST-ACK ends here without _close
        if new is State.ESTABLISHED and self._syn_timed_out and self.rtt.srtt is None:
            self.rtt.rto = max(self.rtt.rto, RTO_AFTER_SYN_TIMEOUT)  # RFC 6298 (5.7)
        if self.on_state_change is not None and old is not new:
            self.on_state_change(self, old, new)

    def _close(self, error: Exception | None) -> None:
        """Enter CLOSED: flush the queues; the stack deletes the TCB."""
        self.error = error
        self._snd_buf.clear()
        self._ooo.clear()
        self._flight.clear()
        self.timers.clear()
        self._set_state(State.CLOSED)
