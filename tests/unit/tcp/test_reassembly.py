"""The reassembly queue against a bytearray oracle (smoltcp's assembler test_random)."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp import seq
from ustack.tcp.reassembly import Reassembly

STREAM = os.urandom(4000)


@settings(max_examples=500, deadline=None)
@given(base=st.sampled_from([0, 1000, 0xFFFF_FF00]),
       pieces=st.lists(st.tuples(st.integers(0, 3999), st.integers(1, 600)), max_size=40))
def test_any_arrival_order_reassembles_the_stream(base: int, pieces: list[tuple[int, int]]) -> None:
    r = Reassembly(max_ranges=1000)
    rcv_nxt = base
    got = bytearray()
    for offset, length in [*pieces, (0, 4000)]:
        piece = STREAM[offset:offset + length]
        start = seq.add(base, offset)
        # What the TCB does: trim below RCV.NXT, append in-order data, hold the rest.
        behind = seq.sub(rcv_nxt, start)
        if behind < 0x8000_0000:
            piece = piece[behind:]
            start = rcv_nxt
        if not piece:
            continue
        if start == rcv_nxt:
            got += piece
            rcv_nxt = seq.add(rcv_nxt, len(piece))
            r.drop_before(rcv_nxt)
            more = r.take(rcv_nxt)
            got += more
            rcv_nxt = seq.add(rcv_nxt, len(more))
        else:
            assert r.add(start, piece)
        assert r.held <= 4000
    assert bytes(got) == STREAM
    assert not r and r.held == 0


def test_sack_blocks_most_recent_first() -> None:
    r = Reassembly()
    r.add(1100, b"a" * 100)
    r.add(1300, b"b" * 100)
    r.add(1500, b"c" * 100)
    assert r.sack_blocks(4) == [(1500, 1600), (1300, 1400), (1100, 1200)]
    r.add(1200, b"d" * 100)  # fills a hole: the merged block is now the most recent
    assert r.sack_blocks(4) == [(1100, 1400), (1500, 1600)]
    assert r.sack_blocks(1) == [(1100, 1400)]


def test_held_bytes_win_over_overlapping_new_ones() -> None:
    r = Reassembly()
    r.add(110, b"XXXX")
    r.add(108, b"abcdefgh")
    assert r.take(108) == b"abXXXXgh"


def test_too_many_holes_are_refused() -> None:
    r = Reassembly(max_ranges=2)
    assert r.add(10, b"a")
    assert r.add(20, b"b")
    assert not r.add(30, b"c")
    assert r.add(11, b"a")  # extending a held range is always fine
    assert r.held == 3
