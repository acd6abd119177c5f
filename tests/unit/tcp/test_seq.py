from hypothesis import given
from hypothesis import strategies as st

from ustack.tcp import seq

u32 = st.integers(0, seq.MASK)
delta = st.integers(1, 2**31 - 1)


@given(u32, delta)
def test_lt_across_the_wrap(a: int, d: int) -> None:
    b = seq.add(a, d)
    assert seq.lt(a, b) and seq.le(a, b) and seq.gt(b, a) and seq.ge(b, a)
    assert not seq.lt(b, a) and not seq.gt(a, b)
    assert seq.sub(b, a) == d


@given(u32)
def test_equal_is_le_not_lt(a: int) -> None:
    assert seq.le(a, a) and seq.ge(a, a) and not seq.lt(a, a) and not seq.gt(a, a)


@given(u32, st.integers(0, 2**20), st.integers(0, 2**20))
def test_in_range_matches_offsets(lo: int, width: int, offset: int) -> None:
    v = seq.add(lo, offset)
    assert seq.in_range(v, lo, seq.add(lo, width)) == (offset < width)


def test_wrap_examples() -> None:
    assert seq.lt(0xFFFF_FFF0, 0x10)
    assert seq.add(0xFFFF_FFFF, 2) == 1
    assert seq.in_range(0, 0xFFFF_FFFF, 5)
    assert not seq.in_range(5, 0xFFFF_FFFF, 5)
