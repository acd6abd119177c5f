"""The suite runs twice in CI: on the Python core, and on the same core compiled with mypyc
(`scripts/test.sh --compiled`). This makes sure the second run tests what it says."""

import os
from pathlib import Path

import ustack
from ustack.tcp import receive, tcb


def test_the_compiled_run_tests_the_compiled_core() -> None:
    if os.environ.get("USTACK_EXPECT_COMPILED") != "1":
        # The Python core, unless compiled modules sit in the checkout (scripts/compile.sh
        # without a directory): then edits to the .py files would not be what runs.
        assert not ustack.compiled_core(), (
            f"{tcb.__file__} is compiled: run scripts/compile.sh --clean, or test the "
            "compiled core on purpose with scripts/test.sh --compiled")
        return
    assert ustack.compiled_core()
    for module in (tcb, receive):
        assert not module.__file__.endswith(".py"), module.__file__
        # The copy that was compiled, not the checkout it was made from.
        assert Path(module.__file__).resolve().is_relative_to(Path.cwd().resolve())
