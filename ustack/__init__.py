"""ustack: a user-space TCP/IP stack over a Linux TUN device."""

from ustack.api import Server, Stack, Transport
from ustack.tun import TunError

__all__ = ["Server", "Stack", "Transport", "TunError"]
__version__ = "0.1.0"
