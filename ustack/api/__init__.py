"""The application API: `Stack`, whose methods mirror asyncio's, and a real Transport.

    async with ustack.Stack(dev="ustack0", addr="10.77.0.2") as stack:
        server = await stack.start_server(handle, port=7)
        reader, writer = await stack.open_connection("10.77.0.1", 8080)

`stack.py` (the Stack: device, middleware, host, driver), `calls.py` (its asyncio-style
calls), `transport.py` (the Transport over one connection), `server.py`, `dispatch.py`
(the core's events to their Transport), `tls.py` (TLS through asyncio's SSLProtocol),
`checks.py` (argument checks).
"""

from ustack.api.calls import STREAM_LIMIT, ClientConnected
from ustack.api.checks import check_host, check_own_addr, check_own_addr6, check_port
from ustack.api.server import ListeningSocket, Server
from ustack.api.stack import Stack
from ustack.api.transport import HIGH_WATER, LOW_WATER, Transport

__all__ = ["HIGH_WATER", "LOW_WATER", "STREAM_LIMIT", "ClientConnected", "ListeningSocket",
           "Server", "Stack", "Transport", "check_host", "check_own_addr",
           "check_own_addr6", "check_port"]
