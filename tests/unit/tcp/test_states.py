"""The state diagram (RFC 9293 §3.3.2, Figure 5), half-close and ABORT."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, brief, established, new_tcb, peer, recv, send
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN
from ustack.tcp.states import ON_CLOSE, ON_FIN_ACKED, ON_FIN_RECEIVED, State

# The arcs of Figure 5 that these tables encode: (from, event, to).
FIGURE_5 = {
    (State.ESTABLISHED, "close", State.FIN_WAIT_1),
    (State.CLOSE_WAIT, "close", State.LAST_ACK),
    (State.SYN_RCVD, "close", State.FIN_WAIT_1),
    (State.FIN_WAIT_1, "ack of fin", State.FIN_WAIT_2),
    (State.CLOSING, "ack of fin", State.TIME_WAIT),
    (State.LAST_ACK, "ack of fin", State.CLOSED),
    (State.ESTABLISHED, "rcv fin", State.CLOSE_WAIT),
    (State.SYN_RCVD, "rcv fin", State.CLOSE_WAIT),  # RFC 9293 §3.10.7.4 eighth
    (State.FIN_WAIT_1, "rcv fin", State.CLOSING),
    (State.FIN_WAIT_2, "rcv fin", State.TIME_WAIT),
}


def test_transition_tables_match_figure_5() -> None:
    arcs = {(a, "close", b) for a, b in ON_CLOSE.items()}
    arcs |= {(a, "ack of fin", b) for a, b in ON_FIN_ACKED.items()}
    arcs |= {(a, "rcv fin", b) for a, b in ON_FIN_RECEIVED.items()}
    assert arcs == FIGURE_5


def test_eleven_states() -> None:
    assert len(State) == 11


def test_half_close_we_keep_receiving_after_our_fin() -> None:
    tcb = established()
    tcb.shutdown()
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 2))
    assert tcb.state is State.FIN_WAIT_2
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 2, payload=b"still talking"))
    assert tcb.read() == b"still talking"  # §3.10.7.4 seventh: FIN-WAIT-2 takes text


def test_half_close_we_keep_sending_after_their_fin() -> None:
    tcb = established()
    send(tcb, peer(ACK | FIN, IRS + 1, ISS + 1))
    assert tcb.state is State.CLOSE_WAIT and tcb.fin_received
    recv(tcb)
    tcb.send(b"more from us")
    assert brief(recv(tcb)) == [(ACK | PSH, ISS + 1, IRS + 2, b"more from us")]


def test_text_after_the_peers_fin_is_ignored() -> None:
    tcb = established()
    send(tcb, peer(ACK | FIN, IRS + 1, ISS + 1))
    send(tcb, peer(ACK, IRS + 2, ISS + 1, payload=b"bogus"))  # CLOSE-WAIT: ignore text
    assert tcb.readable == 0


def test_abort_sends_rst_at_snd_nxt() -> None:
    tcb = established()
    tcb.send(b"pending")
    recv(tcb)
    tcb.abort()
    assert tcb.state is State.CLOSED and tcb.error is None
    assert brief(recv(tcb)) == [(RST, ISS + 8, 0, b"")]  # §3.10.5 <SEQ=SND.NXT><CTL=RST>


def test_abort_in_syn_sent_sends_nothing() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    recv(tcb)
    tcb.abort()
    assert tcb.state is State.CLOSED and recv(tcb) == []


def test_close_in_syn_sent_deletes_the_tcb() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    tcb.shutdown()
    assert tcb.state is State.CLOSED  # §3.10.4: "delete the TCB"


def test_close_in_syn_rcvd_waits_for_established_then_sends_fin() -> None:
    tcb = new_tcb()
    tcb.open_passive(peer(SYN, IRS, mss=1460), 0.0)
    recv(tcb)
    tcb.shutdown()
    assert tcb.state is State.SYN_RCVD
    send(tcb, peer(ACK, IRS + 1, ISS + 1))
    assert tcb.state is State.FIN_WAIT_1
    assert brief(recv(tcb)) == [(ACK | FIN, ISS + 1, IRS + 1, b"")]


def test_rst_in_closing_states_closes_quietly() -> None:
    for closing in ("last_ack", "time_wait"):
        tcb = established()
        if closing == "last_ack":
            send(tcb, peer(ACK | FIN, IRS + 1, ISS + 1))
            tcb.shutdown()
            recv(tcb)
            send(tcb, peer(RST, IRS + 2))
        else:
            tcb.shutdown()
            recv(tcb)
            send(tcb, peer(ACK | FIN, IRS + 1, ISS + 2))
            send(tcb, peer(RST, IRS + 2))
        assert tcb.state is State.CLOSED and tcb.error is None


def test_sending_after_close_is_a_user_error() -> None:
    tcb = established()
    tcb.shutdown()
    with pytest.raises(ConnectionError):
        tcb.send(b"late")
