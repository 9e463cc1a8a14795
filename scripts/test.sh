#!/usr/bin/env bash
# Set up, then run the test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${PYTHON:-python3}"
exec "$PY" -m pytest -p no:cacheprovider -rs "$@"
