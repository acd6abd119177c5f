"""Initial sequence numbers per RFC 6528: ISN = M + F(4-tuple, secret).

M is a 4 µs clock (RFC 9293 §3.4.1) taken from the `now` the caller passes in;
F is a keyed hash that cannot be computed from outside (MUST-9).

And the timestamp clock's offset (RFC 7323 §5.4, §7.1): a keyed hash of the address
pair, not of the 4-tuple, as Linux's secure_tcp_ts_off. Per connection it would hide the
clock as well, but a new connection to the same peer could then start below the last
TSval its old one sent, and a peer holding that old one in TIME-WAIT refuses the SYN
(RFC 6191 needs timestamps that only grow between two hosts).
"""

import hashlib
import os
from collections.abc import Callable

from ustack.tcp.seq import MASK

# What picks a connection's initial sequence number: (local address, local port, remote
# address, remote port, now) -> ISS. `IsnGenerator` is RFC 6528's; a test may fix it.
IsnSource = Callable[[bytes, int, bytes, int, float], int]


class IsnGenerator:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(16)

    def __call__(
        self, local: bytes, local_port: int, remote: bytes, remote_port: int, now: float
    ) -> int:
        key = local + local_port.to_bytes(2, "big") + remote + remote_port.to_bytes(2, "big")
        f = hashlib.blake2s(key, key=self._secret, digest_size=4).digest()
        m = int(now * 250_000)  # RFC 6528 §3: a timer ticking every 4 microseconds
        return (m + int.from_bytes(f, "big")) & MASK


class TsOffsets:
    """The random offset of our timestamp clock towards one peer address."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(16)

    def __call__(self, local: bytes, remote: bytes) -> int:
        f = hashlib.blake2s(local + remote, key=self._secret, digest_size=4).digest()
        return int.from_bytes(f, "big")
