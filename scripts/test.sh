#!/usr/bin/env bash
# The whole test suite: lint, unit, property, fuzz and integration tests.
#
#   scripts/test.sh [PYTEST ARGS...]
#
# On a fresh Debian machine run as root: installs what it needs (apt packages, a .venv in
# the repo with ustack and its test extras), then runs `ruff check`, `mypy` and `pytest`.
# The integration tests make their own private network namespaces; without root they skip
# (with USTACK_REQUIRE_NETNS=1, as under CI, such a skip is a failure).
set -euo pipefail

# shellcheck source=_bootstrap.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
ustack_bootstrap
cd "$USTACK_ROOT"

echo "+ ruff check ustack tests tools examples" >&2
"$USTACK_VENV/bin/ruff" check ustack tests tools examples

echo "+ mypy (config in pyproject.toml)" >&2
"$USTACK_VENV/bin/mypy"

echo "+ pytest $*" >&2
# A hard bound on the whole run, well inside CI's 30 minutes.
status=0
timeout --signal=INT --kill-after=60 25m "$USTACK_PY" -m pytest "$@" || status=$?
if ((status == 124)); then
    echo "test.sh: pytest did not finish within 25 minutes" >&2
fi
exit "$status"
