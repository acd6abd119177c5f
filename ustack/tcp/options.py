"""TCP options codec (RFC 9293 §3.1–3.2, RFC 7323, RFC 2018).

Understood: MSS, window scale, SACK-permitted, SACK, timestamps. Every other
option is skipped by its length (MUST-6: ignore options we do not implement).
A malformed list (a length < 2, one that runs past the header, or a known option
of the wrong length) drops the segment: guessing would be worse (MUST-7).
"""

import struct
from dataclasses import dataclass

KIND_EOL = 0
KIND_NOP = 1
KIND_MSS = 2
KIND_WSCALE = 3
KIND_SACK_PERMITTED = 4
KIND_SACK = 5
KIND_TIMESTAMP = 8

DEFAULT_MSS = 536  # RFC 9293 §3.7.1, MUST-15: assumed when no MSS option arrives
DEFAULT_MSS6 = 1220  # the same over IPv6: its minimum MTU 1280 less 60 (MUST-15)
MAX_WSCALE = 14  # RFC 7323 §2.3: a larger shift is used as 14
TIMESTAMP_SPACE = 12  # NOP, NOP, kind 8, length 10: what a timestamp costs every segment

_EXPECTED_LEN = {KIND_MSS: 4, KIND_WSCALE: 3, KIND_SACK_PERMITTED: 2, KIND_TIMESTAMP: 10}

# The list on nearly every segment of a connection with timestamps (RFC 7323 Appendix A
# layout): NOP, NOP, kind 8, length 10, TSval, TSecr. Parsed and built in one step.
_TS_ONLY = struct.Struct("!4sII")
_TS_ONLY_PREFIX = bytes((KIND_NOP, KIND_NOP, KIND_TIMESTAMP, 10))


def ts_clock(now: float, offset: int) -> int:
    """Our timestamp clock (TSval): milliseconds, from a random offset (RFC 7323 §5.4; per
    peer address, see `ustack.tcp.isn.TsOffsets`)."""
    return (int(now * 1000) + offset) & 0xFFFF_FFFF


class OptionError(ValueError):
    """The option list is malformed."""


@dataclass(slots=True)
class Options:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    ts_val: int | None = None
    ts_ecr: int = 0


def parse(buf: bytes | memoryview) -> Options:
    """Decode an option list. Raises OptionError when it is malformed."""
    if len(buf) == 12:
        prefix, ts_val, ts_ecr = _TS_ONLY.unpack_from(buf)
        if prefix == _TS_ONLY_PREFIX:
            return Options(ts_val=ts_val, ts_ecr=ts_ecr)
    opts = Options()
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
        expected = _EXPECTED_LEN.get(kind)
        if expected is not None and length != expected:
            raise OptionError(f"option {kind} of length {length}")
        if kind == KIND_MSS:
            opts.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == KIND_WSCALE:
            opts.wscale = min(buf[i + 2], MAX_WSCALE)  # RFC 7323 §2.3: log, use 14
        elif kind == KIND_SACK_PERMITTED:
            opts.sack_permitted = True
        elif kind == KIND_TIMESTAMP:
            opts.ts_val, opts.ts_ecr = struct.unpack_from("!II", buf, i + 2)
        elif kind == KIND_SACK:
            if (length - 2) % 8:
                raise OptionError(f"SACK option of length {length}")
            edges = struct.unpack_from(f"!{(length - 2) // 4}I", buf, i + 2)
            opts.sack = tuple(zip(edges[::2], edges[1::2], strict=True))
        i += length
    return opts


def encode(opts: Options) -> bytes:
    """The option list for `opts`, padded to a multiple of 4 bytes with NOPs."""
    if (opts.ts_val is not None and not opts.sack and opts.mss is None
            and opts.wscale is None and not opts.sack_permitted):
        return _TS_ONLY.pack(_TS_ONLY_PREFIX, opts.ts_val, opts.ts_ecr)
    out = bytearray()
    if opts.mss is not None:
        out += struct.pack("!BBH", KIND_MSS, 4, opts.mss)
    if opts.sack_permitted:
        out += struct.pack("!BBBB", KIND_NOP, KIND_NOP, KIND_SACK_PERMITTED, 2)
    if opts.ts_val is not None:
        out += struct.pack("!BBBBII", KIND_NOP, KIND_NOP, KIND_TIMESTAMP, 10,
                           opts.ts_val, opts.ts_ecr)
    if opts.wscale is not None:
        out += struct.pack("!BBBB", KIND_NOP, KIND_WSCALE, 3, opts.wscale)
    if opts.sack:
        out += struct.pack("!BBBB", KIND_NOP, KIND_NOP, KIND_SACK, 2 + 8 * len(opts.sack))
        for left, right in opts.sack:
            out += struct.pack("!II", left, right)
    return bytes(out)

