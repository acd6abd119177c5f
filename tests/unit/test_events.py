"""The core's events for the application (`ustack.tcp.events`), and user calls that mark
their connection for the next poll by themselves: what `Host.take_events` hands over,
segment by segment, with no reading of TCB fields to find out what happened."""

import dpkt

from tests.unit.test_host import PEER, host, parse_out, tcp_packet
from ustack.tcp import events
from ustack.tcp.events import ConnEvent
from ustack.tcp.states import State

SYN, ACK, FIN, RST, PSH = (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN,
                           dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH)


def happened(h) -> dict:
    taken, _ = h.take_events()
    return {tcb: ConnEvent(bits) for tcb, bits in taken}


def established() -> tuple:
    """A host with one connection, opened to PEER:9000, its events taken: (host, TCB,
    ISS, local port)."""
    h = host()
    tcb = h.connect(PEER, 9000, 0.0)
    (syn,) = parse_out(h.poll(0.0))
    iss, port = syn.data.seq, tcb.local_port
    h.receive(tcp_packet(SYN | ACK, sport=9000, dport=port, seq=500, ack=iss + 1), 0.1)
    h.poll(0.1)
    happened(h)
    return h, tcb, iss, port


def test_an_active_open_reports_established_then_data_writable_eof_and_the_end() -> None:
    h = host()
    wakes = []
    h.on_wake = lambda: wakes.append(1)
    tcb = h.connect(PEER, 9000, 0.0)
    assert wakes, "connect asks the driver for a poll"
    (syn,) = parse_out(h.poll(0.0))
    iss = syn.data.seq
    assert happened(h) == {}
    port = tcb.local_port
    h.receive(tcp_packet(SYN | ACK, sport=9000, dport=port, seq=500, ack=iss + 1), 0.1)
    assert happened(h) == {tcb: ConnEvent.ESTABLISHED}
    h.poll(0.1)
    wakes.clear()
    tcb.send(b"hello")  # no wake() by the caller: the user call marks it
    assert wakes and len(h.poll(0.2)) == 1
    h.receive(tcp_packet(ACK | PSH, sport=9000, dport=port, seq=501, ack=iss + 6,
                         payload=b"hi"), 0.3)
    assert happened(h) == {tcb: ConnEvent.READABLE | ConnEvent.WRITABLE}
    assert tcb.read() == b"hi"
    h.receive(tcp_packet(ACK | FIN, sport=9000, dport=port, seq=503, ack=iss + 6), 0.4)
    assert happened(h) == {tcb: ConnEvent.EOF}
    h.receive(tcp_packet(RST, sport=9000, dport=port, seq=504), 0.5)
    assert happened(h) == {tcb: ConnEvent.CLOSED}
    assert tcb.state is State.CLOSED and isinstance(tcb.error, ConnectionResetError)


def test_events_of_one_batch_come_once_per_connection() -> None:
    h, tcb, iss, port = established()
    h.receive_batch([tcp_packet(ACK, sport=9000, dport=port, seq=501 + 10 * i, ack=iss + 1,
                                payload=bytes(10)) for i in range(5)], 0.2)
    assert happened(h) == {tcb: ConnEvent.READABLE}
    assert tcb.readable == 50


def test_our_fin_acknowledged_is_fin_acked_and_a_listener_hands_over_one_queue() -> None:
    h = host()
    listener = h.listen(7)
    h.receive(tcp_packet(SYN, seq=100), 0.0)
    (synack,) = parse_out(h.poll(0.0))
    iss = synack.data.seq
    h.receive(tcp_packet(ACK, seq=101, ack=iss + 1), 0.0)
    taken, accepting = h.take_events()
    assert accepting == [listener]
    tcb = listener.accept()
    assert listener.accept() is None and taken == [(tcb, events.ESTABLISHED)]
    tcb.close()
    (fin,) = parse_out(h.poll(0.1))
    assert fin.data.flags & FIN
    h.receive(tcp_packet(ACK, seq=101, ack=iss + 2), 0.2)
    assert happened(h) == {tcb: ConnEvent.FIN_ACKED}
    assert tcb.state is State.FIN_WAIT_2


def test_closing_a_listener_resets_what_nobody_accepted() -> None:
    # As closing a listening socket does (Linux inet_csk_listen_stop).
    h = host()
    listener = h.listen(7)
    h.receive(tcp_packet(SYN, seq=100), 0.0)
    (synack,) = parse_out(h.poll(0.0))
    h.receive(tcp_packet(ACK, seq=101, ack=synack.data.seq + 1), 0.0)
    (waiting,) = listener.accept_queue
    h.unlisten(listener)
    assert not listener.accept_queue and waiting.state is State.CLOSED
    (rst,) = parse_out(h.poll(0.1))
    assert rst.data.flags & RST
    assert h.take_events()[1] == []


def test_a_send_buffer_grown_for_a_stuck_writer_is_writable() -> None:
    # Both windows closed, text waiting for our application, more queued than the send
    # buffer holds: the buffer grows (`buffers.grow_snd_buf_if_stuck`), and a writer
    # paused on it must hear of the room, though no byte was acknowledged.
    h, tcb, iss, port = established()
    tcb.send(bytes(tcb.snd_buf_size + 100_000))
    h.poll(0.1)
    happened(h)
    closed = dpkt.ip.IP(tcp_packet(ACK | PSH, sport=9000, dport=port, seq=501, ack=iss + 1,
                                   payload=b"x"))
    closed.data.win = 0  # the peer's window closes; our ACK number does not move
    closed.data.sum = 0
    closed.sum = 0
    before = tcb.snd_buf_size
    h.receive(bytes(closed), 0.2)
    assert tcb.snd_buf_size > before
    assert happened(h)[tcb] & ConnEvent.WRITABLE


def test_a_failing_listener_does_not_cost_the_others_their_events() -> None:
    from ustack.api.dispatch import Dispatch

    errors: list[Exception] = []
    heard: list[int] = []
    dispatch = Dispatch(errors.append)
    a, b = host().connect(PEER, 1, 0.0), host().connect(PEER, 2, 0.0)

    def fails(bits: int) -> None:
        raise ValueError("protocol bug")

    dispatch.add(a, fails)
    dispatch.add(b, heard.append)
    dispatch.deliver([(a, events.READABLE), (b, events.EOF)])
    assert heard == [events.EOF] and isinstance(errors[0], ValueError)


def test_the_probe_can_be_switched_off_and_on_for_watched_connections() -> None:
    h = host()
    seen: list[object] = []
    h.probe = seen.append
    tcb = h.connect(PEER, 9000, 0.0)
    h.poll(0.0)
    assert seen  # the SYN, the state change
    h.probe = None
    seen.clear()
    tcb.abort()
    h.poll(0.1)
    assert seen == []  # a watched connection reports to nowhere once switched off
    h.probe = seen.append
    h.connect(PEER, 9001, 0.2)
    h.poll(0.2)
    assert seen
