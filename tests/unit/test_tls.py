"""TLS pieces that need no TUN: certificates, argument checks, the CLI's https options."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat

import pytest

from ustack import cli
from ustack.api import Stack, tls
from ustack.cli import args as cli_args
from ustack.cli import serve as cli_serve

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@pytest.fixture(scope="module")
def cert_and_key(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    return tls.self_signed_certificate(tmp_path_factory.mktemp("tls"),
                                       addresses=["10.77.0.2", "127.0.0.1"])


# ------------------------------------------------------------------ certificates


def test_self_signed_certificate_names_the_addresses(cert_and_key):
    cert, key = cert_and_key
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    decoded = ssl._ssl._test_decode_cert(str(cert))
    assert ("IP Address", "10.77.0.2") in decoded["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in decoded["subjectAltName"]
    assert ("DNS", "ustack") in decoded["subjectAltName"]
    assert decoded["subject"] == ((("commonName", "ustack"),),)


def test_server_context_loads_the_pair(cert_and_key):
    context = tls.server_context(*cert_and_key)
    assert isinstance(context, ssl.SSLContext)
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


def test_server_context_bad_files(tmp_path, cert_and_key):
    with pytest.raises(tls.TlsSetupError, match="No such file"):
        tls.server_context(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(tls.TlsSetupError, match="is not a PEM certificate"):
        tls.server_context(junk)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.TlsSetupError, match="cannot load certificate"):
        tls.server_context(broken)
    cert, _ = cert_and_key
    with pytest.raises(tls.TlsSetupError):
        tls.server_context(cert)  # no key in it, none given


def test_self_signed_without_openssl(tmp_path):
    with pytest.raises(tls.TlsSetupError, match="openssl command is needed"):
        tls.self_signed_certificate(tmp_path, openssl=str(tmp_path / "no-openssl"))


@needs_openssl
def test_self_signed_rejects_zero_days(tmp_path):
    with pytest.raises(ValueError):
        tls.self_signed_certificate(tmp_path, days=0)


# ------------------------------------------------------------------ argument checks


def test_server_args_like_create_server():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert tls.check_server_args(ctx, 5.0, 5.0) is ctx
    assert tls.check_server_args(None, None, None) is None
    with pytest.raises(TypeError, match="SSLContext or None"):
        tls.check_server_args(True, None, None)
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
        tls.check_server_args(None, 1.0, None)
    with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful"):
        tls.check_server_args(None, None, 1.0)


def test_client_args_like_create_connection():
    ctx = ssl.create_default_context()
    assert tls.check_client_args(None, "h", None, None, None) is None
    assert tls.check_client_args(ctx, "h", None, None, None) == (ctx, "h")
    assert tls.check_client_args(True, "h", "name", 1.0, 1.0) == (None, "name")
    with pytest.raises(ValueError, match="server_hostname is only meaningful"):
        tls.check_client_args(None, "h", "name", None, None)
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
        tls.check_client_args(False, "h", None, 1.0, None)
    with pytest.raises(TypeError):
        tls.check_client_args("yes", "h", None, None, None)


def test_server_factory_rejects_bad_timeouts():
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with pytest.raises(ValueError, match="positive"):
            tls.server_protocol_factory(asyncio.Protocol, ctx, loop, ssl_handshake_timeout=0)
        factory = tls.server_protocol_factory(asyncio.Protocol, ctx, loop)
        assert isinstance(factory(), asyncio.BufferedProtocol)  # asyncio's SSLProtocol
    finally:
        loop.close()


def test_stack_start_tls_rejects_misuse():
    stack = Stack()
    ctx = ssl.create_default_context()

    async def check() -> None:
        with pytest.raises(TypeError, match="SSLContext"):
            await stack.start_tls(object(), asyncio.Protocol(), None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not supported by start_tls"):
            await stack.start_tls(asyncio.Transport(), asyncio.Protocol(), ctx)
        with pytest.raises(TypeError, match="SSLContext or None"):
            await stack.create_server(asyncio.Protocol, None, 443, ssl=True)  # type: ignore
        with pytest.raises(ValueError, match="server_hostname is only meaningful"):
            await stack.create_connection(asyncio.Protocol, "10.77.0.1", 443,
                                          server_hostname="x")

    asyncio.run(check())


# ------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(("spec", "expected"), [
    ("https", ("https", 443)),
    ("HTTPS:8443", ("https", 8443)),
    ("http", ("http", 80)),
])
def test_cli_service_specs(spec, expected):
    assert cli_args._service(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("https:0", "'https:0' is out of range"),
    ("https:x", "invalid port 'x' in 'https:x'"),
    ("ftp", "expected one of: chargen, discard, echo, http, https"),
])
def test_cli_bad_service_specs(spec, message):
    with pytest.raises(Exception, match=message):
        cli_args._service(spec)


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "https"], "https needs a certificate"),
    (["serve", "--key", "k.pem", "https"], "--key needs --cert"),
    (["serve", "--self-signed", "echo"], "no https service"),
    (["serve", "--cert", "/nonexistent/c.pem", "https"], "cannot load certificate"),
])
def test_cli_https_needs_a_certificate(argv, message, capsys):
    # These fail before any TUN is opened.
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_cert_and_self_signed_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--cert", "c.pem", "--self-signed", "https"])
    assert exit_info.value.code == 2


def test_cli_builds_the_server_context(cert_and_key):
    cert, key = cert_and_key
    args = cli.build_parser().parse_args(["serve", "--cert", str(cert), "--key", str(key),
                                          "https", "echo"])
    assert isinstance(cli_serve.server_tls(args), ssl.SSLContext)
    args = cli.build_parser().parse_args(["serve", "--self-signed", "https:8443"])
    assert isinstance(cli_serve.server_tls(args), ssl.SSLContext)
    args = cli.build_parser().parse_args(["serve", "http"])
    assert cli_serve.server_tls(args) is None
