#!/usr/bin/env bash
# The main job: sets up the virtual environment, then encrypts a model-sized set of tensors and loads it back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
VENV=${VENV:-.venv}
"$VENV/bin/python" scripts/demo.py "$@"
