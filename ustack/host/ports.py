"""Ephemeral ports (RFC 6056): the range, and a random free one from it."""

import random
from collections.abc import Callable

# RFC 6056 §2.1: the IANA dynamic range for ephemeral ports.
EPHEMERAL_PORTS = range(49152, 65536)


def ephemeral_port(rng: random.Random, free: Callable[[int], bool], code: int,
                   scan: bool = False) -> int:
    """A random port of the ephemeral range that `free` accepts (RFC 6056 §3.3.1,
    Algorithm 1: 64 tries); with `scan`, then the first free one in order. Else
    OSError(`code`): EADDRINUSE for a bind, EADDRNOTAVAIL for a connect."""
    for _ in range(64):
        port = rng.choice(EPHEMERAL_PORTS)
        if free(port):
            return port
    if scan:
        for port in EPHEMERAL_PORTS:
            if free(port):
                return port
    raise OSError(code, "no free ephemeral port")
