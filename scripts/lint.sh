#!/usr/bin/env bash
# Static checks that CI keeps green: lint, formatting, strict typing, the layer contracts.
# Run after scripts/setup.sh (the test extra installs ruff, mypy and import-linter).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m ruff check smpc fl tests bench examples
"$PY" -m ruff format --check smpc fl tests bench examples
"$PY" -m mypy smpc fl
lint-imports
