"""ustack: a user-space TCP/IP stack over a Linux TUN device."""

from ustack.api import Server, Stack, Transport
from ustack.conninfo import ConnectionInfo
from ustack.heap import keep_freed_heap
from ustack.tcp.config import TcpConfig
from ustack.tun import TunError

__all__ = ["ConnectionInfo", "Server", "Stack", "TcpConfig", "Transport", "TunError",
           "compiled_core", "keep_freed_heap"]
__version__ = "0.1.0"


def compiled_core() -> bool:
    """Whether the sans-IO core runs compiled (`scripts/compile.sh`: mypyc extension
    modules beside the .py files) rather than as Python."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from ustack.tcp import tcb

    return (tcb.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
