"""SYN cookies (RFC 4987 §3.6): answer a SYN without keeping any state.

The ISN of our SYN-ACK encodes everything needed to rebuild the connection from
the ACK that completes the handshake:

    top 5 bits   t: a counter that ticks every 64 s (cookies live two ticks)
    next 3 bits  m: the peer's MSS, as an index into MSS_TABLE
    low 24 bits  s: a keyed hash of the 4-tuple, t and the peer's ISN

Options other than the MSS (window scale, SACK, timestamps) cannot be kept, so a
connection opened by cookie runs without them, as on Linux without timestamps.
"""

import hashlib
import os

MSS_TABLE = (536, 1220, 1360, 1440, 1460, 4312, 8960, 65495)
TICK = 64.0
COOKIE_LIFETIME = 2 * TICK  # a cookie is valid for the tick it was made in and the next


class SynCookies:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(16)

    def _hash(self, local: bytes, lport: int, remote: bytes, rport: int, t: int,
              irs: int) -> int:
        key = (local + lport.to_bytes(2, "big") + remote + rport.to_bytes(2, "big")
               + bytes([t]) + irs.to_bytes(4, "big"))
        return int.from_bytes(hashlib.blake2s(key, key=self._secret, digest_size=3).digest(),
                              "big")

    def make(self, local: bytes, lport: int, remote: bytes, rport: int, irs: int,
             peer_mss: int, now: float) -> int:
        """The ISN for a SYN-ACK answering a SYN with sequence number `irs`."""
        t = int(now / TICK) & 0x1F
        m = max(i for i, mss in enumerate(MSS_TABLE) if mss <= max(peer_mss, MSS_TABLE[0]))
        return (t << 27) | (m << 24) | self._hash(local, lport, remote, rport, t, irs)

    def check(self, local: bytes, lport: int, remote: bytes, rport: int, irs: int,
              isn: int, now: float) -> int | None:
        """The MSS a valid cookie encodes, or None (wrong hash, or older than two ticks)."""
        t = isn >> 27
        age = (int(now / TICK) - t) & 0x1F
        if age > 1:
            return None
        if self._hash(local, lport, remote, rport, t, irs) != isn & 0xFF_FFFF:
            return None
        return MSS_TABLE[(isn >> 24) & 0x7]
