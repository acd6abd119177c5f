"""The host layer: its addresses (IPv4, IPv6), connections, listeners and timers (sans-IO).

`host.py` (the `Host`: the user's calls, timers, polling and packets out), `demux.py`
(its packets in: each TCP segment to its connection, TIME-WAIT record or listener, and
ICMP's path MTU reports), `network.py` (the IP layer of both families), `ports.py`
(ephemeral ports, the listener table), `timerheap.py` (one heap of connections by their
earliest deadline), `probe.py` (the probe's events for the segments, states and timers
of the host's connections).
"""

from ustack.host.host import TSO_MAX, Host
from ustack.host.ports import EPHEMERAL_PORTS

__all__ = ["EPHEMERAL_PORTS", "TSO_MAX", "Host"]
