"""Links without a TUN between processes (issue 21): `ustack serve --link tcp-listen` and
`ustack connect --link tcp`, two processes of an ordinary user (uid 65534) joined by a
kernel TCP connection on 127.0.0.1, echo 20 MB checked by SHA-256; a peer that goes away
ends the serving side cleanly. No namespace: only the host's 127.0.0.1."""

from __future__ import annotations

import shlex
import socket

from .support import USTACK, random_file
from .test_rootless import _out, as_nobody, work  # noqa: F401  (work: the fixture)

SIZE = 20_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_of_an_ordinary_user_echo_20_mb_over_a_tcp_link(work):  # noqa: F811
    want = random_file(work / "in.bin", SIZE)
    (work / "in.bin").chmod(0o644)
    port = free_port()
    ustack = " ".join(shlex.quote(part) for part in USTACK)
    script = f"""
{ustack} serve --link tcp-listen:127.0.0.1:{port} echo:7 2>serve.err &
serving=$!
for _ in $(seq 200); do grep -q serving serve.err && break; sleep 0.05; done
{ustack} connect --link tcp:127.0.0.1:{port} 10.77.0.2 7 <in.bin | sha256sum
wait $serving
echo "serve exited $?"
"""
    done = as_nobody(["sh", "-c", script], work, tun_open=False)
    err = (work / "serve.err").read_text() if (work / "serve.err").exists() else ""
    assert done.returncode == 0, _out(done) + err
    lines = done.stdout.splitlines()
    assert lines[0].split()[0] == want, _out(done)
    assert lines[1] == "serve exited 0", _out(done) + err
    assert "dev tcp-listen:127.0.0.1" in err and "mtu 16000" in err, err
    assert "link lost: tcp-listen:127.0.0.1:" in err and "peer closed" in err, err
    assert "Traceback" not in err + done.stderr, _out(done) + err
