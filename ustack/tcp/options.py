"""TCP options codec (RFC 9293 §3.1, §3.2).

For now only MSS is interpreted; every other option is skipped by its length
(MUST-6: ignore options we do not implement). A malformed list (a length that
runs past the header or is < 2) drops the segment (MUST-7 asks for robustness,
not for guessing).
"""

import struct

KIND_EOL = 0
KIND_NOP = 1
KIND_MSS = 2

DEFAULT_MSS = 536  # RFC 9293 §3.7.1, MUST-15: assumed when no MSS option arrives


class OptionError(ValueError):
    """The option list is malformed."""


def parse_mss(buf: bytes | memoryview) -> int | None:
    """Walk the option list; return the MSS option's value or None. Raises OptionError."""
    mss: int | None = None
    i, end = 0, len(buf)
    while i < end:
        kind = buf[i]
        if kind == KIND_EOL:
            break
        if kind == KIND_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise OptionError("option kind without a length")
        length = buf[i + 1]
        if length < 2 or i + length > end:
            raise OptionError(f"option {kind} has bad length {length}")
        if kind == KIND_MSS:
            if length != 4:
                raise OptionError(f"MSS option of length {length}")
            mss = (buf[i + 2] << 8) | buf[i + 3]
        i += length
    return mss


def encode_mss(mss: int) -> bytes:
    # RFC 9293 §3.2: MSS (kind 2, length 4) only in SYN segments (MUST-65).
    return struct.pack("!BBH", KIND_MSS, 4, mss)
