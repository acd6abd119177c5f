"""A pcap writer stage: what crossed the TUN, as `tcpdump -i ustack0` would show it."""

from __future__ import annotations

import errno
import fcntl
import heapq
import os
import struct
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

from ustack.link.stage import Packets, Stage
from ustack.packet import Packet, ip_of

# ------------------------------------------------------------------------------- pcap

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
PCAP_VERSION = (2, 4)
PCAP_SNAPLEN = 65535
# LINKTYPE_RAW (101): each record is a bare IP packet, IPv4 or IPv6 by its version
# nibble. Older than LINKTYPE_IPV4 (228), so every tcpdump/Wireshark/dpkt knows it, and
# a record whose version bits were corrupted is still shown (as a bad packet).
LINKTYPE_RAW = 101
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")


FLUSH_INTERVAL = 0.1  # seconds a captured packet may wait in the buffer for the file


class CaptureError(OSError):
    """The capture file cannot be written, or another ustack is writing it."""


def open_capture(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for a new capture: locked (flock) so that a second ustack refuses it,
    and emptied only once the lock is held, so the capture of a running ustack is never
    truncated. Raises CaptureError with one line for the user."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise CaptureError(e.errno, f"cannot write the capture {os.fspath(path)!r}: "
                                    f"{e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CaptureError(errno.EBUSY, f"the capture {os.fspath(path)!r} is being written "
                                        "by another process (it holds the file's lock)") from None
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


class PcapWriter(Stage):
    """Classic pcap of every packet in both directions, as it passes this stage.

    Time stamps are wall-clock: `now + wall_offset`, where the caller sets `wall_offset`
    once to `time.time() - aio.clock()` (the writer reads no clock; tests fix it), in
    microseconds. They never go backwards: the driver's timer may run a hair ahead of
    the loop's clock (it serves a deadline as "now"), so a stamp is at least the last.

    A file named by path is locked while written (`open_capture`). Records reach it
    within FLUSH_INTERVAL (`poll`): `tcpdump -r` can read the capture while ustack runs.
    """

    def __init__(self, dest: str | os.PathLike[str] | BinaryIO, *, wall_offset: float = 0.0,
                 snaplen: int = PCAP_SNAPLEN) -> None:
        if isinstance(dest, str | os.PathLike):
            self._file: BinaryIO = open_capture(dest)
            self._owned = True
        else:
            self._file = dest
            self._owned = False
        self.wall_offset = wall_offset
        self.snaplen = snaplen
        self.counters: Counter[str] = Counter(pcap_packets=0)
        self._closed = False
        self._last = 0
        self._flush_at: float | None = None  # when the oldest unflushed record is due
        self._file.write(_GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen,
                                             LINKTYPE_RAW))
        self._file.flush()  # a capture with no packet yet is still a valid file

    def _record(self, packet: Packet, now: float) -> None:
        if self._closed:
            return
        usec = round((now + self.wall_offset) * 1_000_000)
        if usec < self._last:
            usec = self._last
        self._last = usec
        sec, usec = divmod(usec, 1_000_000)
        # The IP packet only. With offloads it may be a super-packet, and its TCP
        # checksum partial: tcpdump shows the same on a TSO interface.
        ip = ip_of(packet)
        size = len(ip)
        kept = min(size, self.snaplen)
        write = self._file.write
        write(_RECORD_HEADER.pack(sec, usec, kept, size))
        write(ip if kept == size else ip[:kept])
        self.counters["pcap_packets"] += 1
        if self._flush_at is None:
            self._flush_at = now + FLUSH_INTERVAL

    def poll(self, now: float) -> tuple[Packets, Packets]:
        if self._flush_at is not None and now >= self._flush_at:
            self.flush()
        return [], []

    def next_deadline(self) -> float | None:
        return self._flush_at

    def rx(self, packet: Packet, now: float) -> Packets:
        self._record(packet, now)
        return [packet]

    def tx(self, packet: Packet, now: float) -> Packets:
        self._record(packet, now)
        return [packet]

    def flush(self) -> None:
        self._flush_at = None
        if not self._closed:
            self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._file.flush()
        self._closed = True
        if self._owned:
            self._file.close()


# ------------------------------------------------------------------------- merging


def records(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """The records of a capture this module wrote: (microseconds, header and data).
    A record cut short (its writer was killed) ends it."""
    with open(path, "rb") as f:
        head = f.read(_GLOBAL_HEADER.size)
        if len(head) < _GLOBAL_HEADER.size or _GLOBAL_HEADER.unpack(head)[0] != PCAP_MAGIC:
            return
        while len(header := f.read(_RECORD_HEADER.size)) == _RECORD_HEADER.size:
            sec, usec, kept, _ = _RECORD_HEADER.unpack(header)
            data = f.read(kept)
            if len(data) < kept:
                return
            yield sec * 1_000_000 + usec, header + data


def merge_captures(parts: list[str], dest: BinaryIO) -> int:
    """Write the records of the captures `parts` into `dest` as one capture, in time
    order (each part is in order already: a merge, as mergecap does); return how many."""
    dest.write(_GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, PCAP_SNAPLEN,
                                   LINKTYPE_RAW))
    count = 0
    for _, record in heapq.merge(*(records(p) for p in parts), key=lambda r: r[0]):
        dest.write(record)
        count += 1
    dest.flush()
    return count


def merge_fault_logs(parts: list[str], dest: str) -> None:
    """The `<capture>.faults` lines of several parts, in time order (each starts with
    its wall-clock time) into `dest`. A line cut short (its writer was killed) or without
    a time is left out."""
    def lines(path: str) -> Iterator[tuple[float, str]]:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                stamp = line.split(" ", 1)[0]
                if line.endswith("\n") and stamp.replace(".", "", 1).isdecimal():
                    yield float(stamp), line

    with open(dest, "w", encoding="utf-8") as out:
        out.writelines(line for _, line in heapq.merge(*(lines(p) for p in parts)))


def merge_parts(path: str, dest: BinaryIO, parts: list[str]) -> int:
    """Captures written in parts (one per worker of `ustack serve --workers`) into one,
    `dest` (the file at `path`, closed here), and their fault logs into `<path>.faults`;
    the parts are removed. Returns the packets merged; OSError if it cannot."""
    parts = [p for p in parts if os.path.exists(p)]
    faults = [f"{p}.faults" for p in parts if os.path.exists(f"{p}.faults")]
    with dest:
        count = merge_captures(parts, dest)
    if faults:
        merge_fault_logs(faults, f"{path}.faults")
    for part in parts + faults:
        os.unlink(part)
    return count
