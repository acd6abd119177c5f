"""Buffer autotuning (ustack.tcp.autotune): the receive buffer grows by what the
application reads per RTT (Linux tcp_rcv_space_adjust), the send buffer with cwnd
(tcp_sndbuf_expand) and with what the application queued when both ways are blocked, all
within the host's budget, which every connection gives back when it ends."""

from tests.unit.tcp.helpers import IRS, ISS, MSS, established, new_tcb, peer, recv, send
from ustack.stats import Counters
from ustack.tcp import rcvwnd, seq
from ustack.tcp.autotune import BufferBudget, ReceiveSpace
from ustack.tcp.config import MAX_RCV_BUF, TcpConfig
from ustack.tcp.segment import ACK, FIN, PSH, SYN
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

START = 64 * 1024
CONFIG = TcpConfig(nodelay=True, rcv_buf=START, snd_buf=START)


def test_receive_space_follows_linux_tcp_rcv_space_adjust() -> None:
    space = ReceiveSpace(10 * MSS)
    assert space.on_read(50_000, 0.0, MSS) is None  # no RTT estimate yet
    space.window_reached(1000, 0.0)
    space.window_reached(2000, 0.010)  # the first estimate: counting starts here
    space.window_reached(3000, 0.030)
    assert space.rtt == 0.010  # the minimum of the window samples
    # 30,000 bytes read in one RTT against 14,600 before: twice that plus 16 segments,
    # plus twice that again in the proportion the rate grew (Linux 4.19 and later).
    want = space.on_read(30_000, 0.021, MSS)
    base = 2 * 30_000 + 16 * MSS
    assert want == base + 2 * (base * (30_000 - 10 * MSS) // (10 * MSS))
    assert space.on_read(10_000, 0.025, MSS) is None  # within the RTT: still counting
    assert space.on_read(1_000, 0.032, MSS) is None  # read less than before: no growth


def established_scaled(config: TcpConfig = CONFIG, wscale: int | None = 7,
                       **kw: object) -> Tcb:
    """ESTABLISHED with window scaling (the peer offers a shift of 7), or without."""
    tcb = new_tcb(config=config, **kw)
    tcb.open_passive(peer(SYN, IRS, mss=MSS, wscale=wscale), 0.0)
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000))
    assert tcb.state is State.ESTABLISHED
    return tcb


def feed(tcb: Tcb, rounds: int, now: float, step: float) -> float:
    """A window-limited sender: each round fills what the TCB offers; the application
    reads everything at once."""
    nxt = IRS + 1
    for _ in range(rounds):
        acks = recv(tcb, now)  # the last one carries the window after the read
        ack = acks[-1] if acks else None
        window = rcvwnd.offered(tcb) if ack is None else ack.wnd << tcb.rcv_wscale
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
    assert tcb.rcv_wscale == 7  # sized for rcv_buf_max (6 MB), not for the start
    feed(tcb, 12, 0.0, 0.005)
    assert tcb.rcv_buf_size > 8 * START
    assert tcb.rcv_buf_size <= MAX_RCV_BUF
    assert tcb.counters["tcp_rcvbuf_grown"] >= 2


def test_without_window_scaling_the_buffer_grows_no_larger_than_64_kb() -> None:
    tcb = established_scaled(TcpConfig(nodelay=True, rcv_buf=16 * 1024), wscale=None)
    assert tcb.rcv_wscale == 0
    feed(tcb, 12, 0.0, 0.005)
    assert 16 * 1024 < tcb.rcv_buf_size <= 0xFFFF  # what the window field can say


def test_a_buffer_set_by_the_user_is_not_autotuned() -> None:
    tcb = established_scaled()
    tcb.set_receive_buffer(START)
    feed(tcb, 12, 0.0, 0.005)
    assert tcb.rcv_buf_size == START


def blocked_both_ways(config: TcpConfig = CONFIG, **kw: object) -> Tcb:
    """The peer has closed its window and sent text our application has not read."""
    tcb = established(config=config, peer_wnd=0, **kw)
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 1, wnd=0, payload=b"q" * 1000))
    return tcb


def test_the_send_buffer_grows_by_what_the_application_queued_when_both_ways_block() -> None:
    # Where Linux would keep the writer waiting for the peer to read, and the peer waits
    # for us to read: the buffer grows instead, up to snd_buf_max.
    tcb = blocked_both_ways()
    for _ in range(40):
        tcb.send(b"y" * 100_000)
    assert tcb.snd_buf_size >= tcb.send_buffered == 4_000_000
    tcb.send(b"z" * 1_000_000)
    assert tcb.snd_buf_size == CONFIG.snd_buf_max < tcb.send_buffered


def test_a_closed_window_alone_keeps_the_usual_backpressure() -> None:
    # A client that does not read and sends nothing (chargen, a large download): no
    # growth beyond what the congestion window asks for.
    tcb = established(config=CONFIG, peer_wnd=0)
    tcb.send(b"y" * 1_000_000)
    assert tcb.snd_buf_size == START


def test_growth_waits_for_text_arriving_while_the_window_is_closed() -> None:
    tcb = established(config=CONFIG, peer_wnd=0)
    tcb.send(b"y" * 200_000)
    assert tcb.snd_buf_size == START
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 1, wnd=0, payload=b"q" * 1000))
    assert tcb.snd_buf_size >= 200_000  # the application can go on and read


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


def test_the_budget_bounds_growth_counts_a_refusal_once_and_is_given_back() -> None:
    counters = Counters()
    budget = BufferBudget(limit=200_000)
    a = blocked_both_ways(budget=budget, counters=counters)
    b = blocked_both_ways(budget=budget, counters=counters)
    a.send(b"a" * 200_000)  # grows by 136 KB: 64 KB of the budget is left
    assert a.snd_buf_size == 200_000 and budget.claimed == 200_000 - START
    b.send(b"b" * 200_000)  # would need 136 KB more: refused, counted
    b.send(b"b" * 1000)
    assert b.snd_buf_size == START
    assert counters["tcp_buffer_growth_denied"] == 1
    a.abort()
    assert a.state is State.CLOSED and budget.claimed == 0
    b.send(b"b")
    assert b.snd_buf_size > START  # room again


def test_a_passive_close_gives_the_growth_back() -> None:
    # LAST-ACK ends in CLOSED without an abort: the claim must still be returned.
    budget = BufferBudget()
    tcb = blocked_both_ways(budget=budget)
    tcb.send(b"a" * 200_000)
    assert budget.claimed > 0
    send(tcb, peer(FIN | ACK, IRS + 1001, ISS + 1, wnd=65535))
    tcb.read()
    tcb.shutdown()
    now = 0.0
    while tcb.state is State.LAST_ACK and now < 10:  # the peer acknowledges everything
        now += 0.01
        for s in recv(tcb, now):
            send(tcb, peer(ACK, IRS + 1002, seq.add(s.seq, s.seg_len), wnd=65535), now)
    assert tcb.state is State.CLOSED and budget.claimed == 0


def test_setting_the_receive_buffer_leaves_the_send_buffer_alone() -> None:
    tcb = blocked_both_ways()
    tcb.send(b"a" * 200_000)
    grown = tcb.snd_buf_size
    tcb.set_receive_buffer(10_000)
    assert tcb.snd_buf_size == grown and tcb.rcv_buf_size == 10_000
