"""Edge cases found in review, each pinned to the rule it protects."""

from tests.unit.tcp.helpers import IRS, ISS, established, new_tcb, peer, recv, send
from ustack.tcp import seq, timers
from ustack.tcp.config import TcpConfig
from ustack.tcp.handshake import MIN_SND_MSS
from ustack.tcp.segment import ACK, FIN, SYN
from ustack.tcp.states import State
from ustack.tcp.tcb import RTO_AFTER_SYN_TIMEOUT


def test_closed_connection_in_fin_wait_2_times_out_even_facing_a_zero_window() -> None:
    tcb = established()
    tcb.close()
    recv(tcb, 0.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 2, wnd=0), 0.1)  # FIN acked, window closed
    assert tcb.state is State.FIN_WAIT_2
    assert tcb.timer_kind == timers.FIN_WAIT_2  # not a persist timer: nothing to send
    tcb.on_timer(tcb.next_deadline)
    assert tcb.state is State.CLOSED


def test_a_tiny_peer_mss_is_raised_to_a_floor() -> None:
    tcb = new_tcb()
    tcb.open_passive(peer(SYN, IRS, mss=8, ts_val=1), 0.0)
    assert tcb.snd_mss == MIN_SND_MSS
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, ts_val=2, ts_ecr=0))
    tcb.send(b"y" * 100)
    tcb.shutdown()
    out = recv(tcb)
    assert sum(len(s.payload) for s in out) == 100 and out[-1].flags & FIN
    assert all(len(s.payload) >= 48 for s in out[:-1])


def test_window_shrunk_to_zero_under_data_in_flight_is_probed_not_timed_out() -> None:
    tcb = established(config=TcpConfig(nodelay=True, max_retries=3))
    tcb.send(b"d" * 3000)
    recv(tcb, 0.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 1001, wnd=0), 0.1)
    now = 0.1
    for _ in range(10):  # far more timeouts than max_retries
        now = tcb.next_deadline
        tcb.on_timer(now)
        out = recv(tcb, now)
        assert [s.seq for s in out] == [ISS + 1001]  # one segment beyond the window
        send(tcb, peer(ACK, IRS + 1, ISS + 1001, wnd=0), now + 0.01)  # alive, still full
    assert tcb.state is State.ESTABLISHED
    # The window opens: what went into the zero window is sent again, at the one-segment
    # congestion window the timeouts left (RFC 5681 §3.1), and the rest follows its ACK.
    send(tcb, peer(ACK, IRS + 1, ISS + 1001, wnd=5000), now + 0.02)
    assert [s.seq for s in recv(tcb, now + 0.02)] == [ISS + 1001]
    send(tcb, peer(ACK, IRS + 1, ISS + 2461, wnd=5000), now + 0.03)
    assert [len(s.payload) for s in recv(tcb, now + 0.03)] == [540]


def test_a_fin_at_the_right_edge_leaves_a_zero_window_not_a_huge_one() -> None:
    tcb = established(config=TcpConfig(rcv_buf=100, nodelay=True))
    send(tcb, peer(ACK | FIN, IRS + 1, ISS + 1, payload=b"f" * 100))
    assert tcb.state is State.CLOSE_WAIT
    assert seq.sub(tcb._rcv_adv, tcb.rcv_nxt) == 0
    send(tcb, peer(ACK, IRS + 5000, ISS + 1, ts_val=10**9))  # blind: not acceptable
    assert tcb.ts_recent == 0


def test_rto_is_3_s_after_a_syn_timeout_without_rtt_sample() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    recv(tcb, 0.0)
    tcb.on_timer(1.0)  # the SYN timed out once: RTO 2 s
    recv(tcb, 1.0)
    send(tcb, peer(SYN | ACK, IRS, ISS + 1, mss=1460), 1.5)  # no sample (Karn)
    assert tcb.state is State.ESTABLISHED
    assert tcb.rtt.rto == RTO_AFTER_SYN_TIMEOUT  # RFC 6298 (5.7)
