"""tools/lossbench.py's command line: bad arguments get a usage error, not a traceback."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "tools" / "lossbench.py"
_spec = importlib.util.spec_from_file_location("lossbench", _PATH)
assert _spec is not None and _spec.loader is not None
lossbench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lossbench)


@pytest.mark.parametrize("argv", [
    ["--loss", "100"], ["--loss", "x"], ["--reorder", "-1"], ["--mb", "0"],
    ["--repeat", "0"], ["--rtt-ms", "0"], ["--send", "bbr"], ["--receive", "vegas"],
])
def test_bad_arguments_are_a_usage_error(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        lossbench.parse_args(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_defaults_cover_the_acceptance_grid() -> None:
    args = lossbench.parse_args([])
    assert args.loss == [1.0, 2.0, 5.0] and args.reorder == [0.0, 5.0]
    assert args.rtt_ms == 10.0 and args.repeat == 3
    assert lossbench.cells(args) == [("download", "newreno"), ("download", "cubic"),
                                     ("upload", "cubic"), ("upload", "bbr")]
