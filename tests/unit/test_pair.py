"""Two sans-IO hosts talking through a simulated link: whole connections, end to end."""

import os

from tests.unit.simlink import Faults, Pair, transfer
from ustack.tcp.states import State


def test_clean_link_transfers_both_ways_and_closes() -> None:
    up, down = os.urandom(300_000), os.urandom(200_000)
    pair = Pair()
    got_down, got_up, client, server = transfer(pair, up, down)
    assert got_up == up and got_down == down
    assert client.state is State.TIME_WAIT and server.state is State.CLOSED
    assert client.retransmits == server.retransmits == 0


def test_lossy_link_still_delivers_everything() -> None:
    up, down = os.urandom(50_000), os.urandom(50_000)
    pair = Pair(Faults(loss=0.1, dup=0.05, corrupt=0.02, jitter=0.003), seed=7)
    got_down, got_up, client, server = transfer(pair, up, down)
    assert got_up == up and got_down == down
    assert server.state is State.CLOSED
    assert client.state in (State.TIME_WAIT, State.CLOSED)
    assert client.retransmits + server.retransmits > 0
    assert pair.a.stats().get("drop_tcp_bad_checksum", 0) + pair.b.stats().get(
        "drop_tcp_bad_checksum", 0) + pair.a.stats().get("drop_ip_bad_checksum", 0) + \
        pair.b.stats().get("drop_ip_bad_checksum", 0) > 0
