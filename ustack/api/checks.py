"""The checks of the API's arguments: what asyncio or the socket calls would reject, with a
plain message (TypeError or ValueError) at the call, never deep in the stack."""

import ipaddress


def check_own_addr(addr: object) -> str:
    """The stack's own address: a unicast IPv4 address a host may hold (not 0.0.0.0, a
    broadcast, multicast or loopback address). ValueError with the reason."""
    if not isinstance(addr, str):
        raise TypeError(f"addr must be a str (an IPv4 address), not {type(addr).__name__}")
    try:
        ours = ipaddress.IPv4Address(addr.strip())
    except ValueError:
        raise ValueError(f"{addr!r} is not an IPv4 address") from None
    for bad, what in ((ours.is_unspecified, "the unspecified address"),
                      (ours == ipaddress.IPv4Address("255.255.255.255"), "the broadcast address"),
                      (ours.is_multicast, "a multicast address"),
                      (ours.is_loopback, "a loopback address (the kernel keeps 127/8 for lo)")):
        if bad:
            raise ValueError(f"{ours} is {what}: a stack needs a unicast address of its own, "
                             "e.g. 10.77.0.2")
    return str(ours)


def check_own_addr6(addr: object, what: str = "addr6") -> str | None:
    """An IPv6 address of the stack's own (None: no IPv6): unicast, not `::` or `::1`,
    not multicast. ValueError with the reason."""
    if addr is None:
        return None
    if not isinstance(addr, str):
        raise TypeError(f"{what} must be a str (an IPv6 address) or None, "
                        f"not {type(addr).__name__}")
    try:
        ours = ipaddress.IPv6Address(addr.strip())
    except ValueError:
        raise ValueError(f"{what} {addr!r} is not an IPv6 address") from None
    if ours.is_unspecified or ours.is_loopback or ours.is_multicast:
        raise ValueError(f"{what} {ours} is not a unicast address a host may hold, "
                         "e.g. fd77::2")
    return str(ours)


def check_port(port: object, server: bool = False) -> int:
    """A port as asyncio takes it (an int, or a str of digits as getaddrinfo takes a
    service number), checked at the call: TypeError or ValueError with a plain message.
    0 only for a server (any free port)."""
    if isinstance(port, str) and port.strip().isdecimal():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int (or a str of digits), not "
                        f"{type(port).__name__} {port!r}")
    low = 0 if server else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} is out of range ({low}..65535)")
    return port


def check_host(host: object) -> str:
    """The peer's address: an IPv4 or IPv6 literal (a link-local one may carry its zone,
    `fe80::1%ustack0`, which a stack on one link does not need). ustack does no name
    resolution (it has no resolver of its own, and the host's would answer for the
    kernel's network)."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str (an IP address), not {type(host).__name__}")
    try:
        return str(ipaddress.ip_address(host.strip().split("%", 1)[0]))
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address: ustack does not resolve host "
                         "names; give the peer's address, e.g. 10.77.0.1 or fd77::1") from None
