"""The ladder renderer, the capture reader and tools/ladder.py (issue 7)."""

import io
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import dpkt
import pytest

from ustack.ladder import (
    Endpoint,
    Ladder,
    RecoveryEvent,
    SegmentEvent,
    StateEvent,
    TimerEvent,
    capture_events,
    svg,
)
from ustack.tcp import options
from ustack.tcp.options import Options
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "ladder.py"

PEER = Endpoint("10.77.0.1", 40000)
US = Endpoint("10.77.0.2", 80)
T0 = 1000.0

SYN_OPTS = Options(mss=1460, wscale=7, sack_permitted=True, ts_val=1, ts_ecr=0)
SYNACK_OPTS = Options(mss=1460, wscale=7, sack_permitted=True, ts_val=7, ts_ecr=1)


def seg(ms, outbound, flags, seq, ack=0, length=0, wnd=None, opts=None, a=PEER, b=US):
    src, dst = (b, a) if outbound else (a, b)
    wnd = wnd if wnd is not None else (65535 if outbound else 64240)
    return SegmentEvent(T0 + ms / 1000, src, dst, outbound, flags, seq, ack, wnd, length,
                        opts or Options())


def state(ms, old, new, a=PEER, b=US):
    return StateEvent(T0 + ms / 1000, b, a, old, new)


def golden_events():
    """Client (peer) ISN 100, server (ustack) ISN 300; 1000 bytes up, 2000 down; the
    client closes first (FIN seq 1101); the server ACKs 1102 from 2301, sends 50 more,
    FIN seq 2351; the client's last ACK acknowledges 2352."""
    return [
        seg(0, False, SYN, 100, opts=SYN_OPTS),
        state(0, "LISTEN", "SYN_RCVD"),
        seg(0, True, SYN | ACK, 300, 101, opts=SYNACK_OPTS),
        seg(1, False, ACK, 101, 301),
        state(1, "SYN_RCVD", "ESTABLISHED"),
        seg(2, False, PSH | ACK, 101, 301, 1000),
        seg(3, True, ACK, 301, 1101),
        seg(4, True, ACK, 301, 1101, 1000),
        seg(4, True, PSH | ACK, 1301, 1101, 1000),
        seg(5, False, ACK, 1101, 2301),
        seg(10, False, FIN | ACK, 1101, 2301),
        state(10, "ESTABLISHED", "CLOSE_WAIT"),
        seg(10, True, ACK, 2301, 1102),
        seg(11, True, PSH | ACK, 2301, 1102, 50),
        seg(12, False, ACK, 1102, 2351),
        state(13, "CLOSE_WAIT", "LAST_ACK"),
        seg(13, True, FIN | ACK, 2351, 1102),
        seg(14, False, ACK, 1102, 2352),
        state(14, "LAST_ACK", "CLOSED"),
    ]


GOLDEN = """\
#1 ── peer 10.77.0.1:40000 ⇄ ustack 10.77.0.2:80 ──
#1  0.000000  peer ──SYN────────────▶ ustack  seq 100 (0) win 64240 len 0
                   mss 1460 ws 7 sackOK TS 1/0
#1  0.000000      LISTEN → SYN_RCVD ▶ ustack
#1  0.000000  peer ◀──SYN,ACK──────── ustack  seq 300 (0) ack 101 (1)
                   win 65535 len 0 mss 1460 ws 7 sackOK TS 7/1
#1  0.001000  peer ──ACK────────────▶ ustack  seq 101 (1) ack 301 (1)
                   win 8222720 (64240<<7) len 0
#1  0.001000  SYN_RCVD → ESTABLISHED ▶ ustack
#1  0.002000  peer ──PSH,ACK────────▶ ustack  seq 101 (1) ack 301 (1)
                   win 8222720 (64240<<7) len 1000
#1  0.003000  peer ◀──ACK──────────── ustack  seq 301 (1) ack 1101 (1001)
                   win 8388480 (65535<<7) len 0
#1  0.004000  peer ◀──ACK──────────── ustack  seq 301 (1) ack 1101 (1001)
                   win 8388480 (65535<<7) len 1000
#1  0.004000  peer ◀──PSH,ACK──────── ustack  seq 1301 (1001) ack 1101 (1001)
                   win 8388480 (65535<<7) len 1000
#1  0.005000  peer ──ACK────────────▶ ustack  seq 1101 (1001) ack 2301 (2001)
                   win 8222720 (64240<<7) len 0
#1  0.010000  peer ──FIN,ACK────────▶ ustack  seq 1101 (1001) ack 2301 (2001)
                   win 8222720 (64240<<7) len 0
#1  0.010000  ESTABLISHED → CLOSE_WAIT ▶ ustack
#1  0.010000  peer ◀──ACK──────────── ustack  seq 2301 (2001) ack 1102 (1002)
                   win 8388480 (65535<<7) len 0
#1  0.011000  peer ◀──PSH,ACK──────── ustack  seq 2301 (2001) ack 1102 (1002)
                   win 8388480 (65535<<7) len 50
#1  0.012000  peer ──ACK────────────▶ ustack  seq 1102 (1002) ack 2351 (2051)
                   win 8222720 (64240<<7) len 0
#1  0.013000  CLOSE_WAIT → LAST_ACK ▶ ustack
#1  0.013000  peer ◀──FIN,ACK──────── ustack  seq 2351 (2051) ack 1102 (1002)
                   win 8388480 (65535<<7) len 0
#1  0.014000  peer ──ACK────────────▶ ustack  seq 1102 (1002) ack 2352 (2052)
                   win 8222720 (64240<<7) len 0
#1  0.014000      LAST_ACK → CLOSED ▶ ustack
"""


def render(events, **kw):
    out = io.StringIO()
    ladder = Ladder(out, **kw)
    for ev in events:
        ladder.feed(ev)
    ladder.close()
    return out.getvalue()


def test_golden_ladder():
    text = render(golden_events())
    assert text == GOLDEN
    assert "seq 2301 (2001) ack 1102" in text  # the server's ACK of the FIN
    assert "FIN,ACK──────── ustack  seq 2351 (2051) ack 1102" in text
    assert "ack 2352 (2052)" in text
    assert "seq 2300" not in text and "seq 2350" not in text
    assert "\x1b" not in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_color_only_on_request():
    assert "\x1b[" in render(golden_events(), color=True)
    assert "\x1b" not in render(golden_events(), color=False)


def test_relative_numbers_across_the_wrap():
    events = [
        seg(0, False, SYN, 2**32 - 10, opts=SYN_OPTS),
        seg(0, True, SYN | ACK, 2**32 - 1, 2**32 - 9),
        seg(1, False, PSH | ACK, 2**32 - 9, 0, length=20),
        seg(2, True, ACK, 0, 11),
    ]
    text = render(events)
    assert f"seq {2**32 - 9} (1) ack 0 (1)" in text
    assert "seq 0 (1) ack 11 (21)" in text


def test_before_a_syn_the_first_seq_is_the_base():
    text = render([seg(0, False, ACK, 5000, 9000), seg(1, True, ACK, 9000, 5010)])
    assert "seq 5000 (0) ack 9000 (0)" in text
    assert "seq 9000 (0) ack 5010 (10)" in text


def test_interleaved_connections_get_their_own_ladders():
    other = Endpoint("10.77.0.3", 50000)
    events = [
        seg(0, False, SYN, 100),
        seg(1, False, SYN, 7000, a=other),
        seg(2, True, SYN | ACK, 300, 101),
        seg(3, True, SYN | ACK, 900, 7001, a=other),
        TimerEvent(T0 + 0.2, US, other, "retransmit"),
        state(4, "SYN_RCVD", "ESTABLISHED", a=other),
    ]
    lines = render(events).splitlines()
    assert lines[0].startswith("#1 ── peer 10.77.0.1:40000")
    heads = [i for i, line in enumerate(lines) if "⇄" in line]
    assert len(heads) == 2 and "10.77.0.3:50000" in lines[heads[1]]
    assert any(line.startswith("#2  0.002000  peer ◀──SYN,ACK") and "seq 900 (0) ack 7001 (1)"
               in line for line in lines)
    assert any(line.startswith("#1  0.002000  peer ◀──SYN,ACK") and "seq 300 (0) ack 101 (1)"
               in line for line in lines)
    assert any(line.startswith("#2  0.199000") and "retransmission timeout" in line
               for line in lines)
    assert any(line.startswith("#2  0.003000") and "SYN_RCVD → ESTABLISHED" in line
               for line in lines)


def test_a_new_syn_after_the_end_starts_a_new_ladder():
    events = [*golden_events(), seg(100, False, SYN, 5000)]
    text = render(events)
    assert "#2 ── peer 10.77.0.1:40000" in text
    assert "#2  0.000000  peer ──SYN" in text and "seq 5000 (0)" in text


def test_loss_recovery_steps_and_dsacks_show_on_the_ladder():
    events = [
        seg(0, False, SYN, 100),
        seg(1, True, SYN | ACK, 300, 101),
        seg(2, False, ACK, 101, 301),
        TimerEvent(T0 + 0.1, US, PEER, "loss_probe"),
        RecoveryEvent(T0 + 0.1, US, PEER, "loss_probe", "the last segment again"),
        RecoveryEvent(T0 + 0.2, US, PEER, "fast_recovery", "RACK: 3 lost"),
        seg(300, False, ACK, 101, 1301, opts=Options(sack=((1301, 2301),))),
        seg(301, False, ACK, 101, 2301, opts=Options(sack=((1301, 2301),))),
    ]
    text = render(events)
    assert "timer: tail loss probe" in text
    assert "recovery: probe sent (the last segment again)" in text
    assert "recovery: fast recovery (RACK: 3 lost)" in text
    assert "sack 1001-2001" in text  # SACK blocks relative to our ISN
    assert "dsack 1001-2001" in text  # below the cumulative ACK: a duplicate (RFC 2883)
    assert "fast recovery (RACK: 3 lost)" in svg(events)


def test_rst_and_flags():
    text = render([seg(0, False, SYN, 1), seg(0, True, RST | ACK, 0, 2)])
    assert "◀──RST,ACK" in text


# ------------------------------------------------------------------------------ captures

def ip_packet(ev: SegmentEvent, payload_fill: bool = True) -> bytes:
    opt = options.encode(ev.opts)
    tcp = dpkt.tcp.TCP(sport=ev.src.port, dport=ev.dst.port, seq=ev.seq, ack=ev.ack,
                       flags=ev.flags, win=ev.wnd, opts=opt, data=b"x" * ev.length)
    tcp.off = 5 + len(opt) // 4
    ip = dpkt.ip.IP(src=bytes(map(int, ev.src.addr.split("."))),
                    dst=bytes(map(int, ev.dst.addr.split("."))), p=6, data=tcp)
    return bytes(ip)


def segments_only(events):
    return [e for e in events if isinstance(e, SegmentEvent)]


def frames(kind: str, pkt: bytes) -> bytes:
    if kind == "raw":
        return pkt
    if kind == "eth":
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6,
                                            type=0x0800, data=pkt))
    if kind == "vlan":
        return b"\x04" * 6 + b"\x02" * 6 + b"\x81\x00\x00\x05\x08\x00" + pkt
    if kind == "sll":  # Linux cooked v1, by hand
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", 0x0800) + pkt
    if kind == "sll2":
        return struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + pkt
    raise AssertionError(kind)


LINKTYPES = {"raw": 101, "eth": 1, "vlan": 1, "sll": 113, "sll2": 276}


def write_pcap(path: Path, kind: str, nano: bool = False, extra=()) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=LINKTYPES[kind], nano=nano)
        for ts, frame in extra:
            w.writepkt(frame, ts=ts)
        for ev in segments_only(golden_events()):
            w.writepkt(frames(kind, ip_packet(ev)), ts=ev.time)


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, env=env, check=False)



def expected_segments_text():
    return render(segments_only(golden_events()))


@pytest.mark.parametrize("kind", ["raw", "eth", "vlan", "sll", "sll2"])
def test_tool_on_pcap_matches_the_events(tmp_path, kind):
    path = tmp_path / f"{kind}.pcap"
    write_pcap(path, kind)
    res = run_tool(path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected_segments_text()


def test_tool_on_nanosecond_pcap_and_skips_non_tcp(tmp_path):
    path = tmp_path / "ns.pcap"
    udp = bytes(dpkt.ip.IP(src=b"\x0a\0\0\x09", dst=b"\x0a\0\0\x08", p=17,
                           data=dpkt.udp.UDP(sport=1, dport=2, data=b"hi")))
    write_pcap(path, "raw", nano=True, extra=[(T0 - 1, udp)])
    res = run_tool(path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected_segments_text()
    assert "skipped 1 packets (1 not TCP)" in res.stderr


def test_big_endian_pcap(tmp_path):
    out = io.BytesIO()
    out.write(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    for ev in segments_only(golden_events()):
        pkt = ip_packet(ev)
        usec = round(ev.time * 1e6)
        out.write(struct.pack(">IIII", usec // 10**6, usec % 10**6, len(pkt), len(pkt)) + pkt)
    out.seek(0)
    events, skipped = capture_events(out)
    assert not skipped
    assert render(events) == expected_segments_text()


def test_tool_on_pcapng(tmp_path):
    path = tmp_path / "x.pcapng"
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f, linktype=1)
        for ev in segments_only(golden_events()):
            w.writepkt(frames("eth", ip_packet(ev)), ts=ev.time)
    res = run_tool(path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected_segments_text()


def test_pcapng_two_interfaces_and_spb():
    """Hand-built pcapng: IDB 0 Ethernet, IDB 1 raw IP with ns resolution, EPBs on both."""
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = io.BytesIO()
    out.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    out.write(block(1, struct.pack("<HHI", 1, 0, 0)))
    out.write(block(1, struct.pack("<HHI", 101, 0, 0) + struct.pack("<HHB3x", 9, 1, 9)
                    + struct.pack("<HH", 0, 0)))
    for i, ev in enumerate(segments_only(golden_events())):
        pkt = ip_packet(ev)
        iface = i % 2
        if iface == 0:
            pkt, ts = frames("eth", pkt), round(ev.time * 1e6)
        else:
            ts = round(ev.time * 1e9)
        out.write(block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF,
                                       len(pkt), len(pkt)) + pkt))
    out.write(block(3, struct.pack("<I", 60) + frames("eth", b"\x45" + b"\0" * 45)))
    out.seek(0)
    events, skipped = capture_events(out)
    assert render(events) == expected_segments_text()
    assert sum(skipped.values()) == 1


def test_us_option_and_passive_default(tmp_path):
    """Without 10.77.0.2, ustack is the side that answered the first SYN; --us overrides."""
    a, b = Endpoint("192.0.2.1", 5555), Endpoint("192.0.2.2", 22)
    evs = [seg(0, False, SYN, 100, a=a, b=b), seg(1, True, SYN | ACK, 300, 101, a=a, b=b)]
    path = tmp_path / "x.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=101)
        for ev in evs:
            w.writepkt(ip_packet(ev), ts=ev.time)
    res = run_tool(path)
    assert "peer 192.0.2.1:5555 ⇄ ustack 192.0.2.2:22" in res.stdout
    res = run_tool(path, "--us", "192.0.2.1")
    assert "peer 192.0.2.2:22 ⇄ ustack 192.0.2.1:5555" in res.stdout
    assert "peer ◀──SYN──" in res.stdout


# ------------------------------------------------------------------------------ SVG

def test_svg_parses_and_names_every_segment(tmp_path):
    path = tmp_path / "g.pcap"
    write_pcap(path, "raw")
    out = tmp_path / "g.svg"
    res = run_tool(path, "--svg", out)
    assert res.returncode == 0, res.stderr
    for doc in (out.read_text(), svg(golden_events())):
        root = ET.fromstring(doc)
        ns = "{http://www.w3.org/2000/svg}"
        texts = [t.text for t in root.iter(ns + "text")]
        labels = [t for t in texts if t and ("seq=" in t)]
        assert len(labels) == len(segments_only(golden_events()))
        # With the window as the text ladder shows it (scaled: both SYNs offered ws 7).
        assert "FIN,ACK seq=2051 ack=1002 win 8388480 (65535<<7)" in labels
        assert "ACK seq=1002 ack=2052 win 8222720 (64240<<7)" in labels
        assert len(list(root.iter(ns + "line"))) >= len(labels) + 2
    states = [t.text for t in ET.fromstring(svg(golden_events())).iter(
        "{http://www.w3.org/2000/svg}text")]
    assert "CLOSE_WAIT → LAST_ACK" in states


def test_svg_selects_one_connection():
    events = [*golden_events(), seg(100, False, SYN, 5000)]
    root = ET.fromstring(svg(events, conn=2))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "#2" in texts and "#1" not in texts


# ------------------------------------------------------------- issue 15: what it shows


def test_window_shown_scaled_once_both_syns_offered_it():
    text = render(golden_events())
    # The SYNs' own windows are never scaled (RFC 7323 §2.2); later ones are, by 7.
    assert "seq 100 (0) win 64240 len 0" in text
    assert f"win {65535 << 7} (65535<<7)" in text and f"win {64240 << 7} (64240<<7)" in text
    unscaled = render([seg(0, False, SYN, 100), seg(0, True, SYN | ACK, 300, 101,
                                                     opts=SYNACK_OPTS),
                       seg(1, False, ACK, 101, 301, wnd=500)])
    assert "win 500 len 0" in unscaled and "<<" not in unscaled  # only one side offered it


def test_segments_sent_again_are_marked():
    assert "retransmission" not in render(golden_events())
    events = [*golden_events()[:8], seg(6, True, ACK, 301, 1101, 1000)]  # 301 again
    text = render(events)
    assert text.count("retransmission") == 1
    assert text.index("seq 301 (1)", text.index("0.006000")) < text.index("retransmission")


def test_fault_events_in_the_ladder_and_svg():
    from ustack.ladder import FaultEvent, fault_event

    pkt = bytes(dpkt.ip.IP(src=bytes([10, 77, 0, 1]), dst=bytes([10, 77, 0, 2]), p=6,
                           data=dpkt.tcp.TCP(sport=40000, dport=80, seq=101, ack=301,
                                             flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH,
                                             data=b"x" * 100)))
    dropped = fault_event("dropped", pkt, False, T0 + 0.0015)
    assert isinstance(dropped, FaultEvent)
    assert (dropped.src, dropped.dst, dropped.seq, dropped.length) == (PEER, US, 101, 100)
    assert fault_event("dropped", b"\x45" + b"\0" * 10, False, T0) is None  # not TCP
    events = [*golden_events()[:5], dropped]
    text = render(events)
    line = next(line for line in text.splitlines() if "fault" in line)
    assert "✕" in line and "fault: dropped" in line and "seq 101 (1)" in line, line
    texts = [t.text for t in ET.fromstring(svg(events)).iter(
        "{http://www.w3.org/2000/svg}text")]
    assert any(t and t.startswith("fault: dropped PSH,ACK from peer seq=1") for t in texts)


def test_tool_conn_filters_and_refuses_a_missing_one_before_printing(tmp_path):
    path = tmp_path / "g.pcap"
    write_pcap(path, "raw")
    res = run_tool(path, "--conn", "1")
    assert res.returncode == 0 and res.stdout == expected_segments_text(), res.stderr
    res = run_tool(path, "--conn", "2")
    assert res.returncode == 2 and res.stdout == ""
    assert "no connection #2" in res.stderr and "has 1" in res.stderr


def test_a_capture_cut_short_still_shows_every_segment():
    # tcpdump -s 54 on a path with timestamps: the snap length cuts into the TCP
    # options. Each segment still shows, its length from the IP and TCP headers.
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 54, 101))
    wanted = segments_only(golden_events())
    for ev in wanted:
        pkt = ip_packet(ev)
        usec = round(ev.time * 1e6)
        kept = pkt[:54]
        out.write(struct.pack("<IIII", usec // 10**6, usec % 10**6, len(kept), len(pkt)) + kept)
    out.seek(0)
    events, skipped = capture_events(out)
    assert not skipped
    assert [(e.flags, e.seq, e.ack, e.length) for e in events] == [
        (e.flags, e.seq, e.ack, e.length) for e in wanted]
