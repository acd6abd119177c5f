"""Faults that know TCP (`ustack.link.rules`) on the simulated link (virtual clock): two
SYN-ACKs dropped and the handshake still completes, the segment carrying a byte offset
corrupted once and the stream still intact, a connection black-holed past N bytes
never finishes; and rules that cannot be, refused with why."""

from __future__ import annotations

import random

import pytest

from tests.unit.simlink import Faults, Pair, transfer
from ustack.link.rules import Rule, TcpRules, parse_rule
from ustack.link.stage import RX, TX
from ustack.link.track import Conn

DATA = random.Random(3).randbytes(300_000)


def run(*rules: str, limit: float = 600.0,
        down: bool = False) -> tuple[Pair, bytes, TcpRules, list[str]]:
    """DATA from A ("ustack": its packets are the stage's tx) to B, or from B (`down`)."""
    stage = TcpRules([parse_rule(r) for r in rules], seed=1)
    fired: list[str] = []
    stage.probe = lambda kind, d, packet, now: fired.append(kind)
    pair = Pair(Faults(delay=0.002), seed=4, stage=stage)
    got_down, got_up, _, _ = transfer(pair, b"" if down else DATA, DATA if down else b"",
                                      limit=limit)
    return pair, got_down if down else got_up, stage, fired


def test_two_syn_acks_dropped_then_the_handshake_completes() -> None:
    pair, got, stage, fired = run("drop flags=SA count=2 port=5000")
    assert got == DATA
    assert fired == ["dropped (drop flags=SA port=5000 count=2)"] * 2
    assert stage.rules[0].fired == 2 and stage.counters["rule_fired"] == 2
    assert pair.b.stats()["tcp_rto"] >= 2  # the server's SYN-ACK timer resent it twice


def test_the_segment_carrying_a_byte_is_corrupted_once() -> None:
    pair, got, _, fired = run("corrupt offset=100000 dir=tx")
    assert got == DATA and fired == ["corrupted (corrupt offset=100000 dir=tx)"]
    assert pair.b.stats()["drop_tcp_bad_checksum"] == 1  # the receiver caught it


def test_a_black_hole_past_n_bytes_stalls_the_connection() -> None:
    _, got, stage, fired = run("blackhole after=50000", limit=30.0)
    assert 0 < len(got) <= 50_000 + 1460 and got == DATA[:len(got)]
    assert stage.rules[0].fired == 1 and len(fired) > 5  # every later packet of it
    assert all(kind.startswith("dropped") for kind in fired)


@pytest.mark.parametrize(("text", "words"), [
    ("", "an empty rule"),
    ("explode flags=S", "one of drop, corrupt, blackhole, reset"),
    ("drop flags=SX", "letters of S, A, F, R"),
    ("drop port=http", "is not a number"),
    ("drop colour=red", "is not one of"),
    ("blackhole", "takes after=BYTES"),
    ("reset", "after=BYTES, state=STATE or both"),
    ("reset state=OPEN", "one of SYN-SENT"),
    ("drop final=syn", "handshake or close"),
    ("drop after=10", "for blackhole, reset and zerowindow only"),
    ("zerowindow", "takes ms=MILLISECONDS"),
    ("drop dir=up", "rx, tx or both"),
])
def test_rules_that_cannot_be_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_rule(text)


def test_a_rule_reads_back_as_written() -> None:
    assert parse_rule("drop flags=SA count=2 port=80").describe() == (
        "drop flags=SA port=80 count=2")
    assert Rule("blackhole", after=10, port=80).describe() == "blackhole port=80 after=10"


def test_a_reset_injected_after_n_bytes_ends_the_connection() -> None:
    pair, got, stage, fired = run("reset after=100000 dir=tx", limit=30.0)
    assert 100_000 <= len(got) < len(DATA) and got == DATA[:len(got)]
    assert fired == ["reset injected (reset after=100000 dir=tx)"]
    assert stage.rules[0].fired == 1
    # The server took it at once (its sequence number is exactly RCV.NXT): reset.
    assert pair.b.stats()["tcp_rst_in"] == 1
    assert "tcp_challenge_acks" not in pair.b.stats()


def test_a_zero_window_for_a_while_holds_the_sender_back() -> None:
    pair, got, _, fired = run("zerowindow ms=300 after=50000", down=True)
    assert got == DATA  # B's data to A, held back while A said its window was 0
    assert fired == ["window zeroed for 300 ms (zerowindow after=50000 ms=300)"]
    assert pair.now >= 0.3
    assert pair.b.stats()["tcp_window_probes"] >= 1  # B probed the closed window (MUST-36)


def test_the_handshakes_final_ack_dropped_the_data_carries_it() -> None:
    _, got, stage, fired = run("drop final=handshake dir=tx")
    assert got == DATA and fired == ["dropped (drop final=handshake dir=tx)"]
    assert stage.rules[0].fired == 1


def test_the_closes_final_ack_dropped_the_fin_is_sent_again() -> None:
    pair, got, _, fired = run("drop final=close dir=tx")
    assert got == DATA and fired == ["dropped (drop final=close dir=tx)"]
    # B, in LAST-ACK, resent its FIN (a tail loss probe, RFC 8985 §7); A, in TIME-WAIT,
    # answered it, and B closed (`transfer` waits for that).
    assert pair.b.stats()["tcp_retransmitted_segments"] == 1


def test_a_reset_into_a_given_state_aborts_it() -> None:
    # A sends nothing and closes at once: it sits in FIN-WAIT-2 while B's data comes.
    pair, got, _, fired = run("reset state=FIN-WAIT-2 dir=rx", limit=30.0, down=True)
    assert len(got) < len(DATA) and got == DATA[:len(got)]
    assert fired == ["reset injected (reset state=FIN-WAIT-2 dir=rx)"]
    assert pair.a.stats()["tcp_rst_in"] == 1


def _states(steps: list[tuple[int, int, int, int, int]]) -> list[tuple[str, str | None]]:
    """(ustack's state, final ACK or None) after each (direction, seq, ack, flags, len)."""
    conn = Conn()
    out = []
    for d, s, a, f, n in steps:
        final = conn.see(d, s, a, f, n)
        out.append((conn.state(), final))
    return out


S, SA, A_, FA = 0x02, 0x12, 0x10, 0x11


def test_the_tracker_follows_a_passive_open_and_a_passive_close() -> None:
    assert _states([
        (RX, 100, 0, S, 0), (TX, 500, 101, SA, 0), (RX, 101, 501, A_, 0),
        (RX, 101, 501, A_, 10), (RX, 111, 501, FA, 0), (TX, 501, 112, FA, 0),
        (RX, 112, 502, A_, 0),
    ]) == [("SYN-RECEIVED", None), ("SYN-RECEIVED", None), ("ESTABLISHED", "handshake"),
           ("ESTABLISHED", None), ("CLOSE-WAIT", None), ("LAST-ACK", None),
           ("CLOSED", "close")]


def test_the_tracker_follows_an_active_open_and_close_and_a_simultaneous_one() -> None:
    opening = [(TX, 500, 0, S, 0), (RX, 100, 501, SA, 0), (TX, 501, 101, A_, 0)]
    assert _states([*opening, (TX, 501, 101, FA, 0), (RX, 101, 502, A_, 0),
                    (RX, 101, 502, FA, 0), (TX, 502, 102, A_, 0)]) == [
        ("SYN-SENT", None), ("ESTABLISHED", None), ("ESTABLISHED", "handshake"),
        ("FIN-WAIT-1", None), ("FIN-WAIT-2", None), ("TIME-WAIT", None),
        ("TIME-WAIT", "close")]
    both = _states([*opening, (TX, 501, 101, FA, 0), (RX, 101, 501, FA, 0),
                    (TX, 502, 102, A_, 0), (RX, 102, 502, A_, 0)])
    assert [s for s, _ in both[3:]] == ["FIN-WAIT-1", "CLOSING", "CLOSING", "TIME-WAIT"]
    assert _states([*opening, (RX, 101, 501, 0x14, 0)])[-1] == ("CLOSED", None)  # RST


def test_the_tracker_starts_again_on_a_new_syn_and_joins_a_running_connection() -> None:
    conn = Conn()
    for step in [(TX, 500, 0, S, 0), (RX, 100, 501, SA, 0), (TX, 501, 101, A_, 0),
                 (RX, 100, 501, 0x14, 0)]:
        conn.see(*step)
    assert conn.state() == "CLOSED" and conn.new_incarnation(TX, 900, S)
    assert not Conn().new_incarnation(TX, 500, S) and not conn.new_incarnation(RX, 5, SA)
    midway = Conn()
    midway.see(RX, 7000, 9000, A_, 100)
    assert midway.state() == "ESTABLISHED"
    midway.see(RX, 7100, 9000, FA, 0)
    assert midway.state() == "CLOSE-WAIT"


def test_crossing_fins_are_a_simultaneous_close() -> None:
    opening = [(TX, 500, 0, S, 0), (RX, 100, 501, SA, 0), (TX, 501, 101, A_, 0)]
    # The peer's FIN arrives first, but ours (not acknowledging it) was already sent.
    assert [s for s, _ in _states([*opening, (RX, 101, 501, FA, 0), (TX, 501, 101, FA, 0),
                                   (RX, 102, 502, A_, 0)])][3:] == [
        "CLOSE-WAIT", "CLOSING", "TIME-WAIT"]


def test_a_dropped_final_ack_sent_again_is_final_again() -> None:
    stage = TcpRules([parse_rule("drop final=handshake count=2 dir=tx")])
    fired: list[str] = []
    stage.probe = lambda kind, d, packet, now: fired.append(kind)
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def packet(seq: int, ack: int, flags: int) -> bytes:
        from ustack import ip
        from ustack.tcp.segment import Segment, encode
        header, data = encode(Segment(1000, 80, seq, ack, flags, 100), a, b)
        return ip.header(a, b, ip.PROTO_TCP, len(header) + len(data), 0) + header + data

    stage.tx(packet(500, 0, S), 0.0)
    stage.rx(bytes(ip_swap(packet(100, 501, SA))), 0.0)
    assert stage.tx(packet(501, 101, A_), 0.0) == []
    assert stage.tx(packet(501, 101, A_), 0.1) == []  # the same ACK again: final again
    assert len(stage.tx(packet(501, 101, A_), 0.2)) == 1 and len(fired) == 2


def ip_swap(ip4: bytes) -> bytearray:
    """An IPv4 TCP packet as if sent the other way (addresses and ports swapped; the
    checksums do not matter to the rules)."""
    out = bytearray(ip4)
    out[12:16], out[16:20] = ip4[16:20], ip4[12:16]
    out[20:22], out[22:24] = ip4[22:24], ip4[20:22]
    return out
