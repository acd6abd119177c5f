"""The host layer: its addresses (IPv4, IPv6), connections, listeners and timers (sans-IO).

`host.py` (the `Host`: demultiplexing, the IP and TCP input and output paths, polling),
`timerheap.py` (one heap of connections by their earliest deadline), `probe.py` (the
probe's events for the segments, states and timers of the host's connections).
"""

from ustack.host.host import TSO_MAX, Host
from ustack.host.ports import EPHEMERAL_PORTS

__all__ = ["EPHEMERAL_PORTS", "TSO_MAX", "Host"]
