"""What crosses the layers between the device and the host: an IP packet, as bytes, or,
on a device with offloads, with what the device said or is to be told of it.

Only the device adapter (`ustack.tun`, framing with `ustack.vnet`) knows how a device
carries this metadata (a virtio-net header before each packet); the link middleware
(`ustack.link`) and the host see the IP packet and these fields, nothing else.
"""

from typing import NamedTuple


class Offloaded(NamedTuple):
    """An IP packet with its offload metadata (Linux's skb fields of the same roles:
    `ip_summed`, `gso_size`)."""

    ip: bytes | memoryview
    # In: the device vouches for the TCP checksum (the kernel made the packet and left
    # the checksum partial, or has verified it): not the host's to verify.
    csum_ok: bool = False
    # Out: the TCP checksum is the device's to complete, and a segment with more data
    # than this is the device's to cut into segments of this much (TSO). In: the size
    # of the segments a super-packet stands for (the kernel's gso_size). 0: one segment.
    gso: int = 0


Packet = bytes | memoryview | Offloaded


def ip_of(packet: Packet) -> bytes | memoryview:
    """The IP packet itself, whatever the metadata."""
    return packet.ip if type(packet) is Offloaded else packet  # type: ignore[return-value]
