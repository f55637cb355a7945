#!/usr/bin/env bash
# Creates .venv (if missing) and installs policysearch with every extra; idempotent: a second
# run with an unchanged pyproject.toml and constraints file does nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="$ROOT/.venv"
STAMP="$VENV/.policysearch-installed"
want="$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
echo "setting up $VENV (one time, about 2 minutes) ..." >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# The machine's pip configuration lists index folders that do not all exist; pip warns about
# each one. The warnings are harmless, so they are filtered out.
"$VENV/bin/python" -m pip install -q -c scripts/constraints.txt \
    -e ".[ray,postgres,timm,tracking,dev]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -c "import policysearch, torch, optuna, albumentations, ray" \
    || { echo "set-up failed: see the pip output above" >&2; exit 1; }
echo "$want" > "$STAMP"
