"""The public API stays under mypy's strict flags wherever its modules move."""

import tomllib
from pathlib import Path

import ustack
import ustack.testing

ROOT = Path(__file__).resolve().parents[2]


def strict_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    return {m for o in config["overrides"] if o.get("disallow_untyped_defs")
            for m in o["module"]}


def is_strict(module: str, strict: set[str]) -> bool:
    """Named, or under a package named with `.*`."""
    return module in strict or any(
        pattern.endswith(".*") and module.startswith(pattern[:-1]) for pattern in strict)


def test_public_api_modules_are_strict() -> None:
    public = {"ustack", ustack.testing.__name__, ustack.Stack.__module__,
              ustack.ConnectionInfo.__module__}
    strict = strict_modules()
    assert all(is_strict(m, strict) for m in public), public
