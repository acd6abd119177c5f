"""Header prediction must change nothing: for every segment it takes, the TCB ends in
exactly the state (and sends exactly the segments) that the full path of RFC 9293
§3.10.7.4 produces. Differential: each random segment goes to two copies of a TCB, one
through on_segment (which tries the fast path) and one through the full path alone.
The two copies are made alike (the same calls from the start) rather than copied, so
that the test runs on the compiled core too."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp import buffers, receive, seq, timeouts
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import ACK, FIN, PSH, SYN, Segment
from ustack.tcp.tcb import Tcb

from .helpers import IRS, ISS, new_tcb, peer

MSS = 1448


def _established(sack: bool, ts: bool) -> Tcb:
    tcb = new_tcb(config=TcpConfig(nodelay=True))
    opts = {"wscale": 7}
    if ts:
        opts["ts_val"] = 1000
    tcb.open_passive(peer(SYN, IRS, mss=1460, sack_permitted=sack, **opts), 0.0)
    tcb.poll(0.0)
    tcb.on_segment(peer(ACK, seq.add(IRS, 1), seq.add(ISS, 1), wnd=512,
                        **({"ts_val": 1001, "ts_ecr": 0} if ts else {})), 0.0)
    tcb.poll(0.0)
    return tcb


def _state(obj: object, depth: int = 0) -> object:
    """A comparable picture of an object's attributes (callbacks and counters aside)."""
    if depth > 3 or isinstance(obj, int | float | str | bytes | bool | type(None)):
        return obj
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    if isinstance(obj, list | tuple):
        return [_state(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {k: _state(v, depth + 1) for k, v in obj.items()}
    # Instance dict, slots, or a compiled class's attributes (mypyc's __mypyc_attrs__).
    names = dict.fromkeys([*getattr(obj, "__dict__", {}), *getattr(type(obj), "__slots__", ()),
                           *getattr(type(obj), "__mypyc_attrs__", ())])
    return {n: _state(getattr(obj, n), depth + 1) for n in names
            if n not in ("counters", "config", "on_state_change", "on_timer_fired", "_now")}


SEGMENTS = st.lists(st.tuples(
    st.sampled_from(["ack", "ack+data", "data", "dupack", "old_ts", "window", "fin", "sack"]),
    st.integers(0, 6),  # segments acknowledged
    st.integers(1, 3 * MSS),  # data size
    st.sampled_from([512, 512, 300, 1000, 1, 0]),  # the window offered (scaled by 2**7)
), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(SEGMENTS, st.booleans(), st.booleans())
def test_fast_path_agrees_with_the_full_path(script, sack, ts) -> None:
    fast, slow = _established(sack, ts), _established(sack, ts)
    now = 0.01
    for tcb in (fast, slow):
        tcb.send(bytes(40 * MSS))
        tcb.poll(now)
    tcb = fast
    peer_seq = seq.add(IRS, 1)
    ts_val = 2000
    for kind, acked, size, offered in script:
        now += 0.001
        ts_val += 1
        ack = min(seq.sub(tcb.snd_nxt, ISS + 1), seq.sub(tcb.snd_una, ISS + 1) + acked * MSS)
        ack = seq.add(ISS + 1, ack)
        payload, flags, wnd, opts = b"", ACK, offered, {}
        if ts:
            opts = {"ts_val": ts_val if kind != "old_ts" else 5, "ts_ecr": 1}
        if kind in ("ack+data", "data", "fin"):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            flags |= PSH
        if kind == "data" or kind == "dupack":
            ack = tcb.snd_una
        if kind == "window":
            wnd = 300
        if kind == "fin":
            flags |= FIN
        if kind == "sack" and sack:
            left = seq.add(tcb.snd_una, MSS)
            opts["sack"] = ((left, seq.add(left, MSS)),)
        fast.on_segment(Segment(40000, 80, peer_seq, ack, flags, wnd, payload,
                                peer(ACK, 0, **opts).opts), now)
        slow._now = now
        receive.synchronized(slow, Segment(40000, 80, peer_seq, ack, flags, wnd, payload,
                                           peer(ACK, 0, **opts).opts), now)
        if not slow.snd_wnd:  # the rest of on_segment, as the fast copy took it
            buffers.grow_snd_buf_if_stuck(slow)
        timeouts.rearm(slow, now)
        assert _state(fast) == _state(slow), (kind, acked, size)
        out_fast, out_slow = fast.poll(now), slow.poll(now)
        assert [(s.flags, s.seq, s.ack, s.wnd, bytes(s.payload), s.opts) for s in out_fast] \
            == [(s.flags, s.seq, s.ack, s.wnd, bytes(s.payload), s.opts) for s in out_slow]
        if fast.fin_received:
            return
        peer_seq = seq.add(peer_seq, len(payload))
        if fast.readable:
            fast.read()
            slow.read()
