#!/usr/bin/env bash
# Set up, then run the main demo (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${PYTHON:-python3}"
if [ -f examples/encrypted_mnist_training.py ]; then
  exec "$PY" examples/encrypted_mnist_training.py "$@"
else
  exec "$PY" examples/share_tensors.py "$@"
fi
