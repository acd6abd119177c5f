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


def test_public_api_modules_are_strict() -> None:
    public = {"ustack", ustack.testing.__name__, ustack.Stack.__module__,
              ustack.ConnectionInfo.__module__}
    assert public <= strict_modules(), public - strict_modules()
