"""The send buffer against the obvious model (one bytearray), under random operations."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.sendbuf import SendBuffer

OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.binary(max_size=300), st.sampled_from(["b", "ba", "mv"])),
    st.tuples(st.just("drop"), st.integers(0, 400), st.just("")),
    st.tuples(st.just("slice"), st.integers(0, 400), st.integers(0, 700)),
), max_size=120)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_behaves_as_one_bytearray(ops) -> None:
    buf, model = SendBuffer(), bytearray()
    for op, a, b in ops:
        if op == "append":
            data = {"b": bytes(a), "ba": bytearray(a), "mv": memoryview(bytes(a))}[b]
            buf.append(data)
            model += a
        elif op == "drop":
            buf.drop(a)
            del model[:a]
        elif model:
            offset = a % len(model)
            n = min(b, len(model) - offset)
            assert bytes(buf.slice(offset, n)) == model[offset:offset + n]
        assert len(buf) == len(model)


def test_a_slice_inside_one_chunk_is_a_view_of_the_users_bytes() -> None:
    buf = SendBuffer()
    data = bytes(range(200))
    buf.append(data)
    view = buf.slice(10, 50)
    assert isinstance(view, memoryview) and view.obj is data
    assert buf.slice(0, 200) is data


def test_a_mutable_buffer_is_copied_so_later_changes_do_not_leak_in() -> None:
    buf = SendBuffer()
    data = bytearray(b"abc")
    buf.append(data)
    data[0] = ord("z")
    assert bytes(buf.slice(0, 3)) == b"abc"


def test_dropped_chunks_are_released() -> None:
    buf = SendBuffer()
    for _ in range(1000):
        buf.append(b"x" * 100)
        buf.drop(100)
    assert len(buf) == 0 and not buf._chunks
