"""Why no user namespace: each refusing setting named with how to allow it (the sysctls
are read from files the test points `ustack.userns` at); the sandbox's command line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ustack import userns
from ustack.cli.args import build_parser


@pytest.fixture
def sysctls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    files = {}
    table = []
    for path, refusing, sentence in userns._SYSCTLS:
        files[path.rsplit("/", 1)[1]] = here = tmp_path / path.rsplit("/", 1)[1]
        here.write_text("15000" if refusing == "0" else "0")  # allowing, to start with
        table.append((str(here), refusing, sentence))
    monkeypatch.setattr(userns, "_SYSCTLS", tuple(table))
    return files


@pytest.mark.parametrize(("name", "value", "words"), [
    ("max_user_namespaces", "0", "user.max_user_namespaces=0"),
    ("unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=1"),
    ("apparmor_restrict_unprivileged_userns", "1", "apparmor_restrict_unprivileged_userns=0"),
])
def test_each_refusing_setting_is_named(sysctls, name, value, words) -> None:
    sysctls[name].write_text(value + "\n")
    said = userns.problem(OSError(errno.EPERM, "Operation not permitted"))
    assert words in said and "sysctl -w" in said


def test_otherwise_the_errno_decides(sysctls) -> None:
    assert "limit of user namespaces" in userns.problem(OSError(errno.ENOSPC, "x"))
    assert "seccomp" in userns.problem(OSError(errno.EPERM, "Operation not permitted"))


def test_the_sandbox_takes_services_then_a_command() -> None:
    args = build_parser().parse_args(
        ["sandbox", "--trace", "--serve", "echo:7", "http:80", "--", "sh", "-c", "exit 7"])
    assert args.command == "sandbox" and args.trace
    assert args.services == [("echo", 7), ("http", 80)]
    assert args.cmd[-3:] == ["sh", "-c", "exit 7"]
    assert build_parser().parse_args(["sandbox"]).cmd == []
