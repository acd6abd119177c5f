"""The pieces of `ustack serve --workers N` that need no device: the capture parts
merged in time order (a part cut short by a killed worker included), the fault logs
beside them, a worker's `[wI]` trace prefix, and its connection rows' trip through
JSON to the supervisor."""

from __future__ import annotations

import io
import json

import dpkt

from ustack import conninfo, ip, link
from ustack.cli.worker import Prefixed


def _packet(ident: int) -> bytes:
    return ip.header(b"\x0a\x4d\x00\x02", b"\x0a\x4d\x00\x01", 6, 0, ident)


def _part(path, stamps: list[float]) -> None:
    writer = link.PcapWriter(path)
    for ident, now in stamps:
        writer.tx(_packet(ident), now)
    writer.close()


def test_parts_merge_into_one_capture_in_time_order(tmp_path):
    a, b = tmp_path / "cap.w0", tmp_path / "cap.w1"
    _part(a, [(1, 1.0), (3, 3.0), (5, 5.0)])
    _part(b, [(2, 2.0), (4, 4.0), (6, 6.5)])
    out = io.BytesIO()
    assert link.merge_captures([str(a), str(b)], out) == 6
    out.seek(0)
    got = [(ts, dpkt.ip.IP(raw).id) for ts, raw in dpkt.pcap.Reader(out)]
    assert [ident for _, ident in got] == [1, 2, 3, 4, 5, 6]
    assert [ts for ts, _ in got] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.5]


def test_a_part_cut_short_keeps_its_whole_records(tmp_path):
    a, b = tmp_path / "cap.w0", tmp_path / "cap.w1"
    _part(a, [(1, 1.0), (2, 2.0)])
    _part(b, [(3, 3.0)])
    a.write_bytes(a.read_bytes()[:-7])  # its writer was killed mid-record
    out = io.BytesIO()
    assert link.merge_captures([str(a), str(b)], out) == 2
    out.seek(0)
    assert [dpkt.ip.IP(raw).id for _, raw in dpkt.pcap.Reader(out)] == [1, 3]


def test_an_empty_or_foreign_part_adds_nothing(tmp_path):
    empty, foreign = tmp_path / "e", tmp_path / "f"
    empty.write_bytes(b"")
    foreign.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(60))  # pcapng
    out = io.BytesIO()
    assert link.merge_captures([str(empty), str(foreign)], out) == 0
    out.seek(0)
    assert list(dpkt.pcap.Reader(out)) == []


def test_fault_logs_merge_by_their_leading_time(tmp_path):
    a, b = tmp_path / "a.faults", tmp_path / "b.faults"
    a.write_text("10.5 drop x\n12.0 dup y\n")
    b.write_text("9.25 corrupt z\n11.0 drop w\n")
    link.merge_fault_logs([str(a), str(b)], str(tmp_path / "all"))
    assert (tmp_path / "all").read_text().split("\n") == [
        "9.25 corrupt z", "10.5 drop x", "11.0 drop w", "12.0 dup y", ""]


def test_a_fault_line_cut_short_or_without_a_time_is_left_out(tmp_path):
    a, b = tmp_path / "a.faults", tmp_path / "b.faults"
    a.write_text("10.5 drop x\n12.0 dup y")  # its writer was killed mid-line
    b.write_text("garbage\n11.0 drop w\n")
    link.merge_fault_logs([str(a), str(b)], str(tmp_path / "all"))
    assert (tmp_path / "all").read_text() == "10.5 drop x\n11.0 drop w\n"


def test_each_trace_line_starts_with_the_worker_whatever_the_writes():
    out = io.StringIO()
    trace = Prefixed(out, "[w1] ")
    trace.write("one\ntw")
    trace.write("o\n")
    trace.write("\nthree\nfour\n")
    assert out.getvalue() == "[w1] one\n[w1] two\n\n[w1] three\n[w1] four\n"


def test_connection_rows_survive_the_trip_through_json():
    row = conninfo.ConnectionInfo(
        local=("10.77.0.2", 80), remote=("10.77.0.1", 40000), state="ESTABLISHED",
        recv_q=0, send_q=10, srtt=0.001, rto=0.2, cwnd=14600, mss=1460, bytes_acked=5,
        bytes_received=7, retransmits=1)
    assert conninfo.from_dict(json.loads(json.dumps(conninfo.as_dict(row)))) == row
