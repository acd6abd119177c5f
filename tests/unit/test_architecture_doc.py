"""ARCHITECTURE.md's walk through the code names real things: every `module.name` or
`Class.method` in backticks, and every file path, exists in the code."""

import asyncio
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "ARCHITECTURE.md").read_text()
CLASSES = {
    "Host": "ustack.host", "Tcb": "ustack.tcp.tcb", "Driver": "ustack.aio",
    "TunDevice": "ustack.tun", "Transport": "ustack.api", "Stack": "ustack.api",
    "Listener": "ustack.tcp.listener", "Network": "ustack.host.network",
    "Dispatch": "ustack.api.dispatch",
}


def resolve(prefix: str) -> object:
    if prefix in CLASSES:
        return getattr(importlib.import_module(CLASSES[prefix]), prefix)
    if prefix == "StreamWriter":
        return asyncio.StreamWriter
    if prefix in ("asyncio", "ustack"):
        return importlib.import_module(prefix)
    for package in ("ustack.tcp", "ustack.host", "ustack.api", "ustack.cli", "ustack.devices",
                    "ustack.link", "ustack.services", "ustack"):
        try:
            return importlib.import_module(f"{package}.{prefix}")
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"ARCHITECTURE.md names `{prefix}`, which is no module or class")


def has(owner: object, name: str) -> bool:
    """An attribute of a module or class, or one a class's methods set on its instances."""
    if hasattr(owner, name):
        return True
    return inspect.isclass(owner) and re.search(
        rf"\bself\.{name}(: [^=]+)? = ", inspect.getsource(owner)) is not None


def test_every_dotted_name_in_the_walk_exists() -> None:
    names = {(a, b) for a, b in re.findall(r"`([A-Za-z_]\w*)\.([A-Za-z_]\w*)`", DOC)
             if b not in ("py", "md")}
    assert len(names) > 30  # the walk, the tables
    missing = [f"{a}.{b}" for a, b in sorted(names) if not has(resolve(a), b)]
    assert not missing, missing


def test_every_path_in_the_document_exists() -> None:
    paths = set(re.findall(r"`((?:ustack/|tests/|tcp/)[\w/.]*)`", DOC))
    missing = [p for p in sorted(paths)
               if not (ROOT / p).exists() and not (ROOT / "ustack" / p).exists()]
    assert not missing, missing
