"""The golden connection of the ladder, driven through two real hosts on a virtual clock.

Client ISN 100, server (the traced ustack) ISN 300: 1000 bytes up, 2000 down; the client
closes first with FIN seq 1101; the server ACKs 1102 from seq 2301, sends 50 more bytes,
then its FIN at seq 2351 (its SYN took one number too: not 2300/2350), and the client's
last ACK acknowledges 2352 while it waits 2 x MSL in TIME_WAIT.
"""

import io

from ustack.host import Host
from ustack.ladder import Ladder, SegmentEvent, StateEvent
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import ACK, FIN, PSH, SYN
from ustack.tcp.states import State

PLAIN = TcpConfig(nodelay=True, timestamps=False, sack=False, window_scaling=False)


class FixedIsn:
    def __init__(self, isn: int) -> None:
        self.isn = isn

    def __call__(self, *args: object) -> int:
        return self.isn


def run_golden() -> tuple[list[object], Host, Host]:
    client = Host("10.77.0.1", isn=FixedIsn(100), config=PLAIN)  # the kernel's side
    server = Host("10.77.0.2", isn=FixedIsn(300), config=PLAIN)  # ustack, traced
    events: list[object] = []
    server.probe = events.append
    listener = server.listen(80)
    now = 0.0

    def exchange(rounds: int = 4) -> None:
        nonlocal now
        for _ in range(rounds):
            now += 0.001
            for p in client.poll(now):
                server.receive(p, now)
            now += 0.001
            for p in server.poll(now):
                client.receive(p, now)

    c = client.connect("10.77.0.2", 80, now)
    exchange()
    s = listener.accept_queue.popleft()
    c.send(b"u" * 1000)
    exchange()
    assert s.read() == b"u" * 1000
    s.send(b"d" * 2000)
    exchange()
    assert c.read() == b"d" * 2000
    c.shutdown()
    exchange()
    s.send(b"e" * 50)
    exchange()
    s.shutdown()
    exchange()
    assert c.state is State.TIME_WAIT and s.state is State.CLOSED
    return events, client, server


def test_the_golden_segments_carry_the_true_numbers() -> None:
    events, _, _ = run_golden()
    segs = [(e.outbound, e.flags, e.seq, e.ack if e.flags & ACK else 0, e.length)
            for e in events if isinstance(e, SegmentEvent)]
    assert segs[:3] == [(False, SYN, 100, 0, 0), (True, SYN | ACK, 300, 101, 0),
                        (False, ACK, 101, 301, 0)]
    assert (False, ACK | PSH, 101, 301, 1000) in segs
    assert (True, ACK, 301, 1101, 1460) in segs and (True, ACK | PSH, 1761, 1101, 540) in segs
    assert (False, FIN | ACK, 1101, 2301, 0) in segs  # the client's FIN
    assert (True, ACK, 2301, 1102, 0) in segs  # the server ACKs it from 2301
    assert (True, ACK | PSH, 2301, 1102, 50) in segs
    assert (True, FIN | ACK, 2351, 1102, 0) in segs  # not 2350: the SYN took one
    assert segs[-1] == (False, ACK, 1102, 2352, 0)
    states = [(e.old, e.new) for e in events if isinstance(e, StateEvent)]
    assert states == [("LISTEN", "SYN_RCVD"), ("SYN_RCVD", "ESTABLISHED"),
                      ("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                      ("LAST_ACK", "CLOSED")]


def test_the_golden_ladder_renders_absolute_and_relative_numbers() -> None:
    events, _, _ = run_golden()
    out = io.StringIO()
    ladder = Ladder(out)
    for e in events:
        ladder.feed(e)
    text = out.getvalue()
    for number in ("2301", "2351", "2352", "1101", "1102"):
        assert number in text
    for state in ("LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"):
        assert state in text
    assert "\x1b" not in text  # plain text when not asked for colour
    assert all(len(line) <= 80 for line in text.splitlines())
