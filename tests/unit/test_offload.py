"""Checksum and segmentation offload (virtio-net header) without a device.

The host with `offload=True` must trust only what the kernel vouches for, leave its own
TCP checksums partial in exactly the form the kernel completes, and ask for TSO only
for segments of whole MSS-sized pieces. Frames go through the device adapter's framing
(`vnet.unframe` in, `vnet.frame_header` out), as `TunDevice` does: the host itself
sees IP packets with their metadata (`ustack.packet.Offloaded`), never the header. The
kernel's side is simulated by completing checksums and cutting super-packets here as
Linux's skb_checksum_help and tcp_gso_segment do; the real kernel does the same in
tests/integration/test_netns_offload.py.
"""

import os
import random
import socket
import struct
import tracemalloc

import dpkt
import pytest

from ustack import vnet
from ustack.checksum import ones_sum
from ustack.host import TSO_MAX, Host
from ustack.link import FaultInjector, PcapWriter, flip_bit
from ustack.packet import Offloaded, Packet
from ustack.stats import DropReason
from ustack.tcp import seq
from ustack.tcp.config import TcpConfig
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.segment import ACK, FIN, PSH, SYN
from ustack.tcp.tcb import Tcb
from ustack.tun import TunDevice

from .tcp.helpers import IRS, ISS, MSS, established, new_tcb, peer, recv, send
from .test_host import PEER, US, tcp_packet

SYN_FLAG = dpkt.tcp.TH_SYN


def offload_host() -> Host:
    h = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1), offload=True)
    h.listen(7)
    return h


def frame(packet: bytes, flags: int = 0) -> Packet:
    """A frame from the kernel as the device adapter hands it up."""
    unframed = vnet.unframe(vnet.header(flags=flags) + packet)
    assert unframed is not None
    return unframed


def wire(packets: list[Packet]) -> list[bytes]:
    """The host's packets as the device adapter writes them: header, then packet."""
    return [b"".join(vnet.frame_header(p)) for p in packets]


def with_bad_tcp_checksum(packet: bytes) -> bytes:
    data = bytearray(packet)
    data[20 + 16] ^= 0x5A  # the TCP checksum field: now wrong (or "partial")
    return bytes(data)


def complete_checksum(frame_: bytes) -> bytes:
    """What the kernel does with a NEEDS_CSUM frame: sum from csum_start to the end,
    starting from the field's value, and store the complement at csum_offset."""
    flags, _, _, _, start, offset = vnet.parse(frame_)
    assert flags & vnet.NEEDS_CSUM
    packet = bytearray(frame_[vnet.HDR_LEN:])
    total = ones_sum(packet[start:])
    packet[start + offset:start + offset + 2] = (0xFFFF - total if total else 0).to_bytes(
        2, "big")
    return bytes(packet)


def tcp_checksum_ok(packet: bytes) -> bool:
    ip = dpkt.ip.IP(packet)
    pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 6, len(packet) - 20)
    return (ones_sum(pseudo) + ones_sum(packet[20:])) % 0xFFFF == 0


# ---------------------------------------------------------------- receive side


def test_trusted_frames_are_not_verified_again() -> None:
    for flags in (vnet.NEEDS_CSUM, vnet.DATA_VALID):
        h = offload_host()
        h.receive(frame(with_bad_tcp_checksum(tcp_packet(SYN_FLAG, dport=7)), flags), 0.0)
        assert h.stats().get(DropReason.TCP_BAD_CHECKSUM, 0) == 0
        (out,) = wire(h.poll(0.0))
        assert dpkt.ip.IP(out[vnet.HDR_LEN:]).data.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK


def test_untrusted_frames_are_verified_must_3() -> None:
    h = offload_host()
    h.receive(frame(with_bad_tcp_checksum(tcp_packet(SYN_FLAG, dport=7))), 0.0)
    assert h.stats()[DropReason.TCP_BAD_CHECKSUM] == 1
    assert wire(h.poll(0.0)) == []


def test_a_frame_shorter_than_its_header_is_a_counted_drop() -> None:
    assert vnet.unframe(b"\x01\x00\x00") is None
    r, w = os.pipe()
    os.set_blocking(r, False)

    class Dev:  # what TunDevice needs of pytun's device: an fd
        def fileno(self) -> int:
            return r

        def close(self) -> None:
            os.close(r)

    device = TunDevice(Dev(), "t0", 1500, created=False, offload=True)  # type: ignore[arg-type]
    os.write(w, b"\x01\x00\x00")
    assert device.read_batch() == []
    assert device.counters[DropReason.VNET_TRUNCATED] == 1
    device.close()
    os.close(w)


@pytest.mark.parametrize("refusal", ["open", "ioctl"])
def test_a_device_that_refuses_offloads_is_opened_without(monkeypatch, refusal) -> None:
    """Offloads are on by default where the device takes them: a TUN that refuses
    IFF_VNET_HDR (EINVAL on open) or TUNSETOFFLOAD is opened again without, and says why
    (the start-up line shows it), rather than failing the start."""
    import errno
    import fcntl

    from ustack import tun

    opened: list[int] = []

    class Dev:  # pytun's device, on a pipe
        def __init__(self, name: str, flags: int) -> None:
            if refusal == "open" and flags & tun.IFF_VNET_HDR:
                raise OSError(errno.EINVAL, "Invalid argument")
            opened.append(flags)
            self._r, self._w = os.pipe()
            self.mtu = 1500

        def fileno(self) -> int:
            return self._r

        def close(self) -> None:
            os.close(self._r)
            os.close(self._w)

    real_ioctl = fcntl.ioctl

    def ioctl(fd: int, request: int, arg: object = 0) -> object:
        if request in (tun.TUNSETOFFLOAD, tun.TUNSETVNETHDRSZ):
            if refusal == "ioctl" and request == tun.TUNSETOFFLOAD and arg:
                raise OSError(errno.EINVAL, "Invalid argument")
            return 0
        return real_ioctl(fd, request, arg)  # type: ignore[arg-type]

    monkeypatch.setattr(tun, "TunTapDevice", Dev)
    monkeypatch.setattr(tun, "_exists", lambda name: True)
    monkeypatch.setattr(tun.os.path, "exists", lambda path: True)
    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    device = tun.TunDevice.open("t0")
    try:
        assert not device.offload and device.offloads == ()
        why = device.offload_refused or ""
        assert ("virtio-net header" if refusal == "open" else "refuses") in why, why
        assert opened[-1] & tun.IFF_VNET_HDR == 0
    finally:
        device.close()
    device = tun.TunDevice.open("t0", offload=False)
    assert device.offload_refused is None  # not asked for: nothing refused
    device.close()


def test_ip_header_checksum_is_still_verified() -> None:
    h = offload_host()
    packet = bytearray(tcp_packet(SYN_FLAG, dport=7))
    packet[10] ^= 0xFF
    h.receive(frame(bytes(packet), vnet.NEEDS_CSUM), 0.0)
    assert h.stats()[DropReason.IP_BAD_CHECKSUM] == 1


def test_a_super_packet_is_one_large_segment() -> None:
    """64 KB of data in one GSO frame from the kernel arrives whole and in order."""
    h = offload_host()
    h.receive(frame(tcp_packet(SYN_FLAG, dport=7, seq=100)), 0.0)
    (synack,) = wire(h.poll(0.0))
    our_iss = dpkt.ip.IP(synack[vnet.HDR_LEN:]).data.seq
    h.receive(frame(tcp_packet(dpkt.tcp.TH_ACK, dport=7, seq=101, ack=our_iss + 1)), 0.0)
    data = bytes(random.Random(2).randbytes(60_000))
    big = tcp_packet(dpkt.tcp.TH_ACK, dport=7, seq=101, ack=our_iss + 1, payload=data)
    gso = vnet.header(flags=vnet.NEEDS_CSUM, gso_type=vnet.GSO_TCPV4, hdr_len=40,
                      gso_size=1448, csum_start=20, csum_offset=16)
    h.receive(vnet.unframe(gso + with_bad_tcp_checksum(big)), 0.0)  # type: ignore[arg-type]
    (tcb,) = h.connections()
    assert bytes(tcb.read()) == data


# ------------------------------------------------------------------- send side


def test_outgoing_tcp_checksum_is_partial_and_completes_to_a_valid_one() -> None:
    h = offload_host()
    h.receive(frame(tcp_packet(SYN_FLAG, dport=7)), 0.0)
    (out,) = wire(h.poll(0.0))
    flags, gso_type, hdr_len, gso_size, start, offset = vnet.parse(out)
    assert (flags, gso_type, gso_size, start, offset) == (vnet.NEEDS_CSUM, vnet.GSO_NONE, 0,
                                                          20, 16)
    packet = out[vnet.HDR_LEN:]
    assert hdr_len == 20 + dpkt.ip.IP(packet).data.off * 4
    assert not tcp_checksum_ok(packet)  # only the pseudo-header sum is in the field
    assert tcp_checksum_ok(complete_checksum(out))


def test_icmp_goes_out_complete_with_an_empty_header() -> None:
    h = offload_host()
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping"))
    ip = dpkt.ip.IP(src=socket.inet_aton(PEER), dst=socket.inet_aton(US), p=1, data=echo)
    ip.len = 20 + len(bytes(echo))
    h.receive(frame(bytes(ip)), 0.0)
    (out,) = wire(h.poll(0.0))
    assert out[:vnet.HDR_LEN] == vnet.NO_OFFLOAD
    assert ones_sum(out[vnet.HDR_LEN + 20:]) == 0


def test_tso_sends_whole_mss_pieces_in_one_segment() -> None:
    tcb = established(tso_max=TSO_MAX)
    tcb.send(b"x" * 100_000)
    (seg,) = recv(tcb)
    # The initial window, 10 segments (RFC 6928), as one super-segment cut at the MSS.
    assert len(seg.payload) == 10 * MSS and seg.gso == MSS
    assert seg.seq == seq.add(ISS, 1)


def test_tso_rounds_down_to_whole_segments_mid_stream() -> None:
    """Window-limited: no small piece in the middle of the stream (sender SWS)."""
    tcb = established(tso_max=TSO_MAX, peer_wnd=5000)
    tcb.send(b"x" * 100_000)
    (seg,) = recv(tcb)
    assert len(seg.payload) == 3 * MSS and seg.gso == MSS
    # The remaining 620 bytes of window are less than Fs = max window / 2: they wait.
    assert recv(tcb) == []


def test_tso_tail_and_fin_ride_on_the_last_piece() -> None:
    tcb = established(tso_max=TSO_MAX)
    tcb.send(b"y" * (3 * MSS + 100))
    tcb.close()
    (seg,) = recv(tcb)
    assert len(seg.payload) == 3 * MSS + 100 and seg.gso == MSS
    assert seg.flags == ACK | PSH | FIN


def test_one_mss_or_less_asks_no_segmentation() -> None:
    tcb = established(tso_max=TSO_MAX)
    tcb.send(b"z" * MSS)
    (seg,) = recv(tcb)
    assert seg.gso == 0


def test_no_tso_without_offload() -> None:
    tcb = established()
    tcb.send(b"x" * 100_000)
    segs = recv(tcb)
    assert [len(s.payload) for s in segs] == [MSS] * 10 and all(s.gso == 0 for s in segs)


def test_host_frames_a_super_segment_for_the_kernel_to_cut() -> None:
    h = offload_host()
    h.receive(frame(tcp_packet(SYN_FLAG, dport=7, seq=IRS, opts=b"\x02\x04\x05\xb4")), 0.0)
    (synack,) = wire(h.poll(0.0))
    our_iss = dpkt.ip.IP(synack[vnet.HDR_LEN:]).data.seq
    h.receive(frame(tcp_packet(dpkt.tcp.TH_ACK, dport=7, seq=IRS + 1, ack=our_iss + 1)), 0.0)
    (tcb,) = h.connections()
    tcb.send(b"q" * 50_000)
    (out,) = wire(h.poll(0.0))
    flags, gso_type, hdr_len, gso_size, start, offset = vnet.parse(out)
    assert (flags, gso_type, gso_size, hdr_len) == (vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 1460, 40)
    assert (start, offset) == (20, 16)
    packet = complete_checksum(out)
    ip = dpkt.ip.IP(packet)
    assert ip.len == len(packet) == 40 + 10 * 1460
    assert tcp_checksum_ok(packet)
    # Cut as tcp_gso_segment does: every piece a valid segment of at most the MSS.
    tcp = ip.data
    pieces = [tcp.data[i:i + gso_size] for i in range(0, len(tcp.data), gso_size)]
    assert all(len(p) == 1460 for p in pieces)
    assert ACK & tcp.flags and not tcp.flags & SYN


# ------------------------------------------------------------ link middleware


def test_corruption_revokes_the_offload_metadata() -> None:
    rng = random.Random(5)
    original = Offloaded(bytes(range(200)), csum_ok=True, gso=1448)
    for _ in range(50):
        bad = flip_bit(original, rng)
        assert type(bad) is bytes and bad != original.ip
        assert vnet.frame_header(bad)[0] == vnet.NO_OFFLOAD


def test_corrupted_trusted_frame_is_dropped_by_the_host() -> None:
    h = offload_host()
    faults = FaultInjector(corrupt=1.0, seed=3)
    packet = tcp_packet(SYN_FLAG, dport=7, payload=b"")
    partial = with_bad_tcp_checksum(packet)  # stands for the kernel's partial checksum
    for passed in faults.rx(frame(partial, vnet.NEEDS_CSUM), 0.0):
        h.receive(passed, 0.0)
    stats = h.stats()
    assert stats["drops"] == 1, stats


def test_pcap_records_the_ip_packet_without_the_vnet_header(tmp_path) -> None:
    path = tmp_path / "o.pcap"
    writer = PcapWriter(str(path))
    packet = tcp_packet(SYN_FLAG)
    writer.rx(frame(packet, vnet.NEEDS_CSUM), 1.0)
    writer.close()
    with path.open("rb") as f:
        ((_, raw),) = list(dpkt.pcap.Reader(f))
    assert raw == packet


def test_tso_holds_a_small_last_piece_as_nagle_would() -> None:
    """All that is queued fits one burst but ends in a partial piece: the whole pieces go,
    the tail waits for the ACK (as without TSO, and as Linux's tcp_mss_split_point)."""
    tcb = established(tso_max=TSO_MAX, config=TcpConfig(nodelay=False))
    tcb.cc.cwnd = 100_000
    tcb.send(b"n" * (10 * MSS + 700))
    (seg,) = recv(tcb)
    assert len(seg.payload) == 10 * MSS and seg.gso == MSS
    assert recv(tcb) == []  # the 700 bytes wait
    send(tcb, peer(ACK, seq.add(IRS, 1), seq.add(ISS, 1 + 10 * MSS)))
    (tail,) = recv(tcb)
    assert len(tail.payload) == 700 and tail.gso == 0


def _with_timestamps() -> Tcb:
    tcb = new_tcb(config=TcpConfig(nodelay=True))
    tcb.open_passive(peer(SYN, IRS, mss=1460, ts_val=1, sack_permitted=True), 0.0)
    tcb.poll(0.0)
    tcb.on_segment(peer(ACK, seq.add(IRS, 1), seq.add(ISS, 1), ts_val=2, ts_ecr=0), 0.0)
    tcb.poll(0.0)
    return tcb


def test_a_super_packet_counts_as_the_segments_it_carries_with_timestamps() -> None:
    """MUST-40 / RFC 5681 §4.2 with a TSO peer: a 2-segment super-packet is two full-sized
    segments (ACK at once), and 1448-byte segments after it still count as full-sized."""
    tcb = _with_timestamps()
    at = seq.add(IRS, 1)
    acks = []
    for size in [2 * 1448, 1448, 1448, 1448, 1448]:
        tcb.on_segment(peer(ACK, at, seq.add(ISS, 1), payload=bytes(size), ts_val=3,
                            ts_ecr=1), 0.0)
        at = seq.add(at, size)
        acks.append(len(tcb.poll(0.0)))
    assert acks == [1, 0, 1, 0, 1]


def test_small_received_text_does_not_pin_its_packets() -> None:
    """1-byte segments while the application does not read: the receive buffer holds about
    what the window counts, not a 1,500-byte packet per byte."""
    tcb = established()
    at = seq.add(IRS, 1)
    packets = [bytes(1500) for _ in range(20_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, packet in enumerate(packets):
        seg = peer(ACK, at, seq.add(ISS, 1), payload=b"")
        seg.payload = memoryview(packet)[52:53]
        tcb.on_segment(seg, 0.0)
        at = seq.add(at, 1)
        packets[i] = None  # the driver keeps no packet: only the TCB could
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert tcb.readable == 20_000
    assert held < 5_000_000, held  # 20,000 views would pin 30 MB of packets
