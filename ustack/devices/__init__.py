"""Links other than a TUN: what a stack's packets go in and out of when there is no TUN,
or no root. Each is a device for `Stack(device=...)`, with the same capture, trace and
fault injection as the TUN path (the link middleware sits between any device and the
host):

- `MemoryLink` (memory.py): two stacks joined in one process;
- `PacketLink` (packets.py): a link the application drives, packets in by `feed`, out by
  a callback or an async iterator;
- `StreamLink` (stream.py): back-to-back IP packets over a byte stream (`framing.py`
  frames them), an asyncio stream pair or a kernel TCP connection it opens.

They hand the driver their packets themselves (`attach`), a batch per loop turn
(`base.Inbox`), where a TUN is watched through its file descriptor.
"""

from ustack.devices.framing import Framer, FramingError
from ustack.devices.memory import MemoryEnd, MemoryLink
from ustack.devices.packets import LinkClosed, PacketLink
from ustack.devices.stream import LinkLost, StreamLink

__all__ = ["Framer", "FramingError", "LinkClosed", "LinkLost", "MemoryEnd", "MemoryLink",
           "PacketLink", "StreamLink"]
