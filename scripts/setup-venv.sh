#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs what the demo and the tests need.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[torch,server,test,bench,remote,docs]"
# Editable installs skip build hooks: add the start-up hook of transparent mode by hand (wheels ship it).
"$VENV/bin/python" -m pycryptotensors.integrations.transparent install >/dev/null
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"pip replaced the pinned torch: {torch.__version__}"
PY
