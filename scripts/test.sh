#!/usr/bin/env bash
# Quick start 2: set up, then run the whole test suite (slow tests included; GPU tests skip
# themselves without a GPU). Extra arguments go to pytest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" || exit 1
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check policysearch tests benchmarks || exit 1
# The type check (files and settings: [tool.mypy] in pyproject.toml): a progress event built
# or read with the wrong fields fails here.
"$ROOT/.venv/bin/python" -m mypy || exit 1
"$ROOT/.venv/bin/python" -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit $rc
