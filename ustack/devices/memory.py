"""Two stacks joined in one process, no root and no namespace: `MemoryLink().ends` are
two devices, what one writes the other receives on the event loop's next turn, a batch at
a time. Faults, shaping and capture are each stack's own link middleware (`Stack.faults`,
`pcap=`): the same fault injector the tests' simulated link uses, not a second model.
"""

from __future__ import annotations

from collections import Counter

from ustack.devices.base import Inbox
from ustack.packet import Offloaded, Packet

DEFAULT_QUEUE = 4096  # packets waiting per direction; more are dropped, as a full TUN queue


class MemoryEnd:
    """One end of a `MemoryLink`: a device for `Stack(device=...)`."""

    def __init__(self, link: MemoryLink, name: str) -> None:
        self.link = link
        self.name = name
        self.mtu = link.mtu
        self.offload = link.offload
        self.counters: Counter[str] = Counter()
        self.peer: MemoryEnd | None = None
        self.inbox = Inbox(self.counters, link.queue)
        self.attach = self.inbox.attach
        self.detach = self.inbox.detach
        self.closed = False

    def write(self, packet: Packet) -> bool:
        """To the other end; False (counted) when its queue is full or it is closed."""
        peer = self.peer
        if peer is None or peer.closed or self.closed:
            self.counters["tx_dropped_link_down"] += 1
            return False
        if type(packet) is Offloaded:
            # As two offloading devices pass it: a super-packet whose checksum is vouched for.
            packet = Offloaded(packet.ip, csum_ok=True, gso=packet.gso)
        else:
            packet = bytes(packet)  # type: ignore[arg-type]
        if not peer.inbox.put(packet):
            return False
        self.counters["tx_packets"] += 1
        return True

    def close(self) -> None:
        self.closed = True
        self.inbox.clear()


class MemoryLink:
    """A link between two stacks in one process (and one event loop): `a` and `b` are
    its ends. `mtu` as a device's; with `offload`, the stacks pass 64 KB TCP
    super-packets whose checksums they vouch for, as two offloading devices would."""

    def __init__(self, mtu: int = 1500, *, offload: bool = False,
                 queue: int = DEFAULT_QUEUE) -> None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu} is not in 68..65535")
        self.mtu, self.offload, self.queue = mtu, offload, queue
        self.a, self.b = MemoryEnd(self, "mem-a"), MemoryEnd(self, "mem-b")
        self.a.peer, self.b.peer = self.b, self.a

    @property
    def ends(self) -> tuple[MemoryEnd, MemoryEnd]:
        return self.a, self.b
