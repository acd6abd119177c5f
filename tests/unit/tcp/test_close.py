"""Both close orders, simultaneous close and TIME-WAIT (RFC 9293 §3.6, §3.10.4, §3.10.7.4)."""

from tests.unit.tcp.helpers import IRS, ISS, brief, established, peer, recv, send
from ustack.tcp import seq
from ustack.tcp.config import DEFAULT_MSL
from ustack.tcp.segment import ACK, FIN, PSH, RST
from ustack.tcp.states import State


def test_passive_close_close_wait_then_last_ack() -> None:
    tcb = established()
    send(tcb, peer(FIN | ACK, IRS + 1, ISS + 1))
    assert tcb.state is State.CLOSE_WAIT and tcb.fin_received
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 2, b"")]  # the FIN takes one number
    tcb.send(b"bye")
    tcb.shutdown()
    assert tcb.state is State.LAST_ACK
    assert brief(recv(tcb)) == [(ACK | PSH | FIN, ISS + 1, IRS + 2, b"bye")]
    send(tcb, peer(ACK, IRS + 2, ISS + 5))
    assert tcb.state is State.CLOSED and tcb.error is None


def test_active_close_fin_wait_to_time_wait_and_expiry() -> None:
    tcb = established()
    tcb.shutdown()
    assert tcb.state is State.FIN_WAIT_1
    assert brief(recv(tcb, 1.0)) == [(FIN | ACK, ISS + 1, IRS + 1, b"")]
    send(tcb, peer(ACK, IRS + 1, ISS + 2), 1.1)
    assert tcb.state is State.FIN_WAIT_2
    assert tcb.next_deadline is None  # not orphaned: no FIN-WAIT-2 timeout
    send(tcb, peer(FIN | ACK, IRS + 1, ISS + 2), 2.0)
    assert tcb.state is State.TIME_WAIT
    assert brief(recv(tcb, 2.0)) == [(ACK, ISS + 2, IRS + 2, b"")]
    assert tcb.next_deadline == 2.0 + 2 * DEFAULT_MSL
    tcb.on_timer(2.0 + 2 * DEFAULT_MSL - 0.001)
    assert tcb.state is State.TIME_WAIT
    tcb.on_timer(2.0 + 2 * DEFAULT_MSL)
    assert tcb.state is State.CLOSED


def test_time_wait_reacks_retransmitted_fin() -> None:
    tcb = established()
    tcb.shutdown()
    recv(tcb)
    send(tcb, peer(FIN | ACK, IRS + 1, ISS + 2), 1.0)
    recv(tcb, 1.0)
    send(tcb, peer(FIN | ACK, IRS + 1, ISS + 2), 5.0)  # our ACK was lost
    assert brief(recv(tcb, 5.0)) == [(ACK, ISS + 2, IRS + 2, b"")]
    assert tcb.state is State.TIME_WAIT


def test_fin_ack_together_in_fin_wait_1_goes_to_time_wait() -> None:
    tcb = established()
    tcb.shutdown()
    recv(tcb)
    send(tcb, peer(FIN | ACK, IRS + 1, ISS + 2))
    assert tcb.state is State.TIME_WAIT


def test_simultaneous_close_through_closing() -> None:
    tcb = established()
    tcb.shutdown()
    recv(tcb)
    send(tcb, peer(FIN | ACK, IRS + 1, ISS + 1))  # their FIN crossed ours
    assert tcb.state is State.CLOSING
    assert brief(recv(tcb)) == [(ACK, ISS + 2, IRS + 2, b"")]
    send(tcb, peer(ACK, IRS + 2, ISS + 2), 0.5)
    assert tcb.state is State.TIME_WAIT
    assert tcb.next_deadline == 0.5 + 2 * DEFAULT_MSL


def test_fin_waits_for_queued_data() -> None:
    tcb = established(peer_wnd=10)
    tcb.send(b"0123456789abc")
    tcb.shutdown()
    assert brief(recv(tcb)) == [(ACK, ISS + 1, IRS + 1, b"0123456789")]
    send(tcb, peer(ACK, IRS + 1, ISS + 11, wnd=10))
    assert brief(recv(tcb)) == [(ACK | PSH | FIN, ISS + 11, IRS + 1, b"abc")]


def test_orphaned_fin_wait_2_times_out() -> None:
    tcb = established()
    tcb.close()
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 2), 1.0)
    assert tcb.state is State.FIN_WAIT_2
    assert tcb.next_deadline is not None
    tcb.on_timer(tcb.next_deadline)
    assert tcb.state is State.CLOSED


def test_data_after_close_is_answered_with_rst() -> None:
    tcb = established()
    tcb.close()
    recv(tcb)
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 2, payload=b"late"))
    assert tcb.state is State.CLOSED
    assert [s.flags & 0x04 for s in recv(tcb)] == [0x04]


def test_rst_with_the_fins_sequence_number_resets_after_the_fin() -> None:
    """The peer closed (FIN at IRS+1) and then answers from its dead socket with a RST at
    the FIN's own sequence number, RCV.NXT - 1: Linux's tcp_reset_check takes it, and so
    do we (it used to be dropped as out of window, costing a FIN and a second RST)."""
    tcb = established()
    fin_seq = seq.add(IRS, 1)
    send(tcb, peer(FIN | ACK, fin_seq, seq.add(ISS, 1)))
    recv(tcb)
    assert tcb.state is State.CLOSE_WAIT
    send(tcb, peer(RST, fin_seq))
    assert tcb.state is State.CLOSED
    assert isinstance(tcb.error, ConnectionResetError)
    assert recv(tcb) == []


def test_rst_two_behind_after_the_fin_is_still_not_acceptable() -> None:
    tcb = established()
    send(tcb, peer(FIN | ACK, seq.add(IRS, 1), seq.add(ISS, 1)))
    recv(tcb)
    send(tcb, peer(RST, IRS))
    assert tcb.state is State.CLOSE_WAIT
