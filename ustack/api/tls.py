"""TLS over ustack's transports: the standard library's `SSLProtocol`, driven by ustack.

uvloop's `loop.start_tls` refuses transports it did not create, so ustack wires
`asyncio.sslproto.SSLProtocol` (a `BufferedProtocol`) to its own `Transport` itself,
exactly as CPython's `base_events.py` does (`_create_connection_transport`,
`_accept_connection2`, `start_tls`). The same code runs on asyncio's loop and on uvloop.

Also here: a throwaway self-signed certificate made with the `openssl` command (no
Python dependency), for `ustack serve --self-signed https`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from asyncio import sslproto
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "TlsSetupError",
    "check_client_args",
    "check_server_args",
    "make_ssl_protocol",
    "self_signed_certificate",
    "server_context",
    "server_protocol_factory",
]

OPENSSL_TIMEOUT = 60.0  # seconds; an RSA-2048 key takes well under one


class TlsSetupError(Exception):
    """A certificate could not be made or loaded (missing openssl, bad files)."""


# ------------------------------------------------------------------ certificates


def self_signed_certificate(
    directory: str | os.PathLike[str], *, common_name: str = "ustack",
    addresses: Sequence[str] = ("10.77.0.2",), dns_names: Sequence[str] = ("ustack",),
    days: int = 1, openssl: str | None = None,
) -> tuple[Path, Path]:
    """Write a fresh self-signed certificate and its private key (PEM, RSA 2048) into
    `directory`; return their paths `(cert.pem, key.pem)`.

    The certificate names `addresses` (IP) and `dns_names` (DNS) as subject alternative
    names, so a client may verify it with the certificate itself as CA file. Runs
    `openssl req -x509`; raises TlsSetupError if openssl is missing or fails.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    exe = openssl or shutil.which("openssl")
    if exe is None or shutil.which(exe) is None:
        raise TlsSetupError("the openssl command is needed to make a self-signed "
                            "certificate (Debian: apt-get install openssl)")
    out = Path(directory)
    cert, key = out / "cert.pem", out / "key.pem"
    names = [f"DNS:{name}" for name in dns_names] + [f"IP:{addr}" for addr in addresses]
    cmd = [exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
           "-days", str(days), "-subj", f"/CN={common_name}",
           "-keyout", str(key), "-out", str(cert)]
    if names:
        cmd += ["-addext", "subjectAltName=" + ",".join(names)]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=OPENSSL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TlsSetupError(f"openssl failed: {e}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise TlsSetupError(f"openssl exited {done.returncode}: {last}")
    os.chmod(key, 0o600)
    return cert, key


def server_context(certfile: str | os.PathLike[str],
                   keyfile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A server SSLContext with asyncio's defaults (`ssl.create_default_context`
    for client auth) and the given certificate chain; TlsSetupError if it cannot load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for path, what in ((certfile, "certificate"), (keyfile, "key")):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            break  # load_cert_chain names the problem below
        if b"-----BEGIN " not in head:
            raise TlsSetupError(f"{os.fspath(path)} is not a PEM {what} (no '-----BEGIN' "
                                "line; DER files convert with: openssl x509 -inform der)")
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        files = f"{certfile}" + (f" and key {keyfile}" if keyfile else "")
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, ssl.SSLError):
            reason = e.reason or str(e)
        raise TlsSetupError(f"cannot load certificate {files}: {reason}") from None
    return context


# ------------------------------------------------------------ argument checks


def check_server_args(ssl_arg: object, handshake_timeout: float | None,
                      shutdown_timeout: float | None) -> ssl.SSLContext | None:
    """The checks of `loop.create_server`: `ssl` is an SSLContext or None; the
    timeouts only with ssl."""
    if isinstance(ssl_arg, bool) or not (ssl_arg is None or isinstance(ssl_arg, ssl.SSLContext)):
        raise TypeError("ssl argument must be an SSLContext or None")
    if ssl_arg is None:
        _no_timeouts(handshake_timeout, shutdown_timeout)
    return ssl_arg


def check_client_args(ssl_arg: object, host: str, server_hostname: str | None,
                      handshake_timeout: float | None, shutdown_timeout: float | None,
                      ) -> tuple[ssl.SSLContext | None, str | None] | None:
    """The checks of `loop.create_connection`. Returns None without TLS, else the
    context (None: a default one) and the server name (`host` unless given)."""
    if not ssl_arg:
        if server_hostname is not None:
            raise ValueError("server_hostname is only meaningful with ssl")
        _no_timeouts(handshake_timeout, shutdown_timeout)
        return None
    if not (ssl_arg is True or isinstance(ssl_arg, ssl.SSLContext)):
        raise TypeError("ssl argument must be an SSLContext, True or None")
    context = ssl_arg if isinstance(ssl_arg, ssl.SSLContext) else None
    return context, host if server_hostname is None else server_hostname


def _no_timeouts(handshake_timeout: float | None, shutdown_timeout: float | None) -> None:
    if handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


# ------------------------------------------------------------ the protocol


def make_ssl_protocol(
    loop: asyncio.AbstractEventLoop, app_protocol: asyncio.BaseProtocol,
    sslcontext: ssl.SSLContext | None, waiter: asyncio.Future[None] | None, *,
    server_side: bool = False, server_hostname: str | None = None,
    call_connection_made: bool = True, ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> sslproto.SSLProtocol:
    """asyncio's SSLProtocol around `app_protocol`: give it to a ustack Transport and
    the handshake starts at its `connection_made`; the app sees `._app_transport`."""
    # typeshed is narrower than SSLProtocol itself: None for a client's default context
    # and for no waiter, timeouts in float seconds, all as asyncio passes them.
    return sslproto.SSLProtocol(
        loop, app_protocol, sslcontext, waiter,  # type: ignore[arg-type]
        server_side, server_hostname, call_connection_made=call_connection_made,
        ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
        ssl_shutdown_timeout=ssl_shutdown_timeout)


def server_protocol_factory(
    protocol_factory: Callable[[], asyncio.BaseProtocol], sslcontext: ssl.SSLContext,
    loop: asyncio.AbstractEventLoop, *, ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> Callable[[], asyncio.BaseProtocol]:
    """Wrap a server's protocol factory: each accepted connection gets a server-side
    SSLProtocol around a new app protocol (asyncio's `_accept_connection2`). A failed
    handshake closes that connection only; the app protocol never hears of it."""

    def factory() -> asyncio.BaseProtocol:
        return make_ssl_protocol(
            loop, protocol_factory(), sslcontext, None, server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)

    # Fail at create_server, not at the first connection, on bad timeouts.
    for name, value in (("ssl_handshake_timeout", ssl_handshake_timeout),
                        ("ssl_shutdown_timeout", ssl_shutdown_timeout)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} should be a positive number, got {value}")
    return factory
