"""Buffer autotuning (ustack.tcp.autotune): the receive buffer grows by what the
application reads per RTT (Linux tcp_rcv_space_adjust), the send buffer with cwnd
(tcp_sndbuf_expand) and with what the application queued, all within the host's budget."""

from tests.unit.tcp.helpers import IRS, ISS, MSS, established, new_tcb, peer, recv, send
from ustack.stats import Counters
from ustack.tcp import seq
from ustack.tcp.autotune import BufferBudget, ReceiveSpace
from ustack.tcp.config import MAX_RCV_BUF, TcpConfig
from ustack.tcp.segment import ACK, PSH, SYN
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

START = 64 * 1024
CONFIG = TcpConfig(nodelay=True, rcv_buf=START, snd_buf=START)


def test_receive_space_follows_linux_tcp_rcv_space_adjust() -> None:
    space = ReceiveSpace(10 * MSS)
    assert space.on_read(5_000, 0.0, MSS) is None  # no RTT estimate yet
    space.window_reached(1000, 0.0)
    space.window_reached(2000, 0.010)
    space.window_reached(3000, 0.030)
    assert space.rtt == 0.010  # the minimum of the window samples
    # 30,000 bytes read within one RTT, against 14,600 before: twice that, plus 16
    # segments, plus the slow-start term for a rate that grew by a quarter or more.
    want = space.on_read(25_000, 0.011, MSS)
    base = 2 * 30_000 + 16 * MSS
    assert want == base + 2 * base * (30_000 - 10 * MSS) // (10 * MSS)
    assert space.on_read(10_000, 0.015, MSS) is None  # within the RTT: still counting
    assert space.on_read(1_000, 0.030, MSS) is None  # read less than before: no growth


def established_scaled(config: TcpConfig = CONFIG, **kw: object) -> Tcb:
    """ESTABLISHED with window scaling (the peer offers a shift of 7)."""
    tcb = new_tcb(config=config, **kw)
    tcb.open_passive(peer(SYN, IRS, mss=MSS, wscale=7), 0.0)
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000))
    assert tcb.state is State.ESTABLISHED
    return tcb


def feed(tcb, rounds: int, now: float, step: float) -> float:
    """A window-limited sender: each round fills what the TCB offers; the application
    reads everything at once."""
    nxt = IRS + 1
    for _ in range(rounds):
        (ack,) = recv(tcb, now) or [None]
        window = tcb._offered() if ack is None else ack.wnd << tcb.rcv_wscale
        sent = 0
        while sent + MSS <= window:
            send(tcb, peer(ACK | PSH, nxt, ISS + 1, payload=b"x" * MSS), now)
            nxt = seq.add(nxt, MSS)
            sent += MSS
        now += step
        tcb.read()
    return now


def test_the_receive_window_grows_for_a_reader_that_keeps_up() -> None:
    tcb = established_scaled()
    assert tcb.rcv_wscale == 7  # sized for rcv_buf_max (6 MB), not for the start (2)
    feed(tcb, 12, 0.0, 0.005)
    assert tcb.rcv_buf_size > 8 * START
    assert tcb.rcv_buf_size <= MAX_RCV_BUF
    assert tcb.counters["tcp_rcvbuf_grown"] >= 2


def test_a_buffer_set_by_the_user_is_not_autotuned() -> None:
    tcb = established_scaled()
    tcb.set_receive_buffer(START)
    feed(tcb, 12, 0.0, 0.005)
    assert tcb.rcv_buf_size == START


def test_the_send_buffer_grows_by_what_the_application_queued() -> None:
    # A peer that does not read (its window is closed) and an application that keeps
    # writing: where Linux would block the writer, the buffer grows, up to snd_buf_max.
    tcb = established(config=CONFIG, peer_wnd=0)
    for _ in range(40):
        tcb.send(b"y" * 100_000)
    assert tcb.snd_buf_size >= tcb.send_buffered == 4_000_000
    tcb.send(b"z" * 1_000_000)
    assert tcb.snd_buf_size == CONFIG.snd_buf_max < tcb.send_buffered


def test_the_send_buffer_grows_with_cwnd() -> None:
    tcb = established(config=CONFIG)
    nxt = ISS + 1
    for i in range(60):
        tcb.send(b"d" * 20 * MSS)
        for s in recv(tcb, 0.01 * i):
            nxt = seq.add(s.seq, len(s.payload))
        send(tcb, peer(ACK, IRS + 1, nxt), 0.01 * i + 0.005)
    assert tcb.cc.cwnd > START
    assert tcb.snd_buf_size >= 2 * tcb.cc.cwnd


def test_the_budget_bounds_growth_and_is_given_back() -> None:
    counters = Counters()
    budget = BufferBudget(limit=200_000, counters=counters)
    a = established(config=CONFIG, peer_wnd=0, budget=budget, counters=counters)
    b = established(config=CONFIG, peer_wnd=0, budget=budget, counters=counters)
    a.send(b"a" * 200_000)  # grows by 136 KB: 64 KB of the budget is left
    assert a.snd_buf_size == 200_000 and budget.claimed == 200_000 - START
    b.send(b"b" * 200_000)  # would need 136 KB more: refused, counted
    assert b.snd_buf_size == START
    assert counters["tcp_buffer_growth_denied"] >= 1
    a.abort()
    assert a.state is State.CLOSED and budget.claimed == 0
    b.send(b"b")
    assert b.snd_buf_size > START  # room again
