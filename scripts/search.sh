#!/usr/bin/env bash
# Quick start 1: set up, then run the default policy search on the built-in `shapes` dataset.
# Extra arguments go to `policysearch search` (e.g. --trials 12 --out runs/mine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/policysearch" search "$@"
