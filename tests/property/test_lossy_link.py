"""Property: over any mix of loss, duplication, corruption and reordering, both byte
streams arrive complete and identical, and both ends finish closing."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.simlink import Faults, Pair, transfer
from ustack.tcp.states import State

faults = st.builds(
    Faults,
    loss=st.floats(0, 0.2),
    dup=st.floats(0, 0.1),
    corrupt=st.floats(0, 0.05),
    delay=st.floats(0.0005, 0.02),
    jitter=st.floats(0, 0.01),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=faults, seed=st.integers(0, 2**32), up=st.binary(max_size=20_000),
       down=st.binary(max_size=20_000), chunk=st.integers(1, 5000))
def test_streams_arrive_intact(faults: Faults, seed: int, up: bytes, down: bytes,
                               chunk: int) -> None:
    pair = Pair(faults, seed)
    got_down, got_up, client, server = transfer(pair, up, down, chunk=chunk)
    assert got_up == up
    assert got_down == down
    assert server.state is State.CLOSED
    assert client.state in (State.TIME_WAIT, State.CLOSED)
