"""Property: over any mix of loss, duplication, corruption and reordering, with and
without offloads, over IPv4 and IPv6, both byte streams arrive complete and identical,
and both ends finish closing."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.simlink import Faults, Pair, transfer
from ustack.tcp.config import TcpConfig
from ustack.tcp.states import State

configs = st.builds(
    TcpConfig,
    congestion=st.sampled_from(["cubic", "newreno"]),
    sack=st.booleans(),
    timestamps=st.booleans(),
    window_scaling=st.booleans(),
    nodelay=st.booleans(),
)
faults = st.builds(
    Faults,
    loss=st.floats(0, 0.2),
    dup=st.floats(0, 0.1),
    corrupt=st.floats(0, 0.05),
    delay=st.floats(0.0005, 0.02),
    jitter=st.floats(0, 0.01),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=faults, seed=st.integers(0, 2**32), up_len=st.integers(0, 30_000),
       down_len=st.integers(0, 30_000), chunk=st.integers(1, 5000), config=configs,
       offload=st.booleans(), ipv6=st.booleans())
def test_streams_arrive_intact(faults: Faults, seed: int, up_len: int, down_len: int,
                               chunk: int, config: TcpConfig, offload: bool,
                               ipv6: bool) -> None:
    """With `offload` the hosts send TSO super-packets, which the injector cuts into
    wire segments, each lost, duplicated or corrupted on its own."""
    data = random.Random(seed)
    up, down = data.randbytes(up_len), data.randbytes(down_len)
    pair = Pair(faults, seed, config, offload, ipv6)
    got_down, got_up, client, server = transfer(pair, up, down, chunk=chunk)
    assert got_up == up
    assert got_down == down
    assert server.state is State.CLOSED
    assert client.state in (State.TIME_WAIT, State.CLOSED)
