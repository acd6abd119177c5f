"""Faults that know TCP (`ustack.link.rules`) on the simulated link (virtual clock): two
SYN-ACKs dropped and the handshake still completes, the segment carrying a byte offset
corrupted once and the stream still intact, a connection black-holed past N bytes
never finishes; and rules that cannot be, refused with why."""

from __future__ import annotations

import random

import pytest

from tests.unit.simlink import Faults, Pair, transfer
from ustack.link.rules import Rule, TcpRules, parse_rule

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
    ("blackhole", "take after=BYTES"),
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
