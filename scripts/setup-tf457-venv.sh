#!/usr/bin/env bash
# Creates (or reuses) .venv-tf457: this project with transformers 4.57, for the compatibility test in
# tests/test_transformers.py (it runs tests/_tf457_run.py with this venv's python).
# torch is installed first and pinned (an unpinned torch pulls a multi-GB CUDA build) and re-pinned in every
# later install so that pip cannot replace it. Idempotent: a marker file records a hash of this script and of
# pyproject.toml; while both are unchanged, a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_TF457:-.venv-tf457}
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
TRANSFORMERS="transformers==4.57.*"
MARKER="$VENV/.pycryptotensors-setup-complete"
STAMP=$(cat "$0" pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ]; then
    echo "$VENV is up to date"
    exit 0
fi
rm -f "$MARKER"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH"
"$VENV/bin/python" -m pip install -q "$TORCH" "$TRANSFORMERS"
"$VENV/bin/python" -m pip install -q "$TORCH" "$TRANSFORMERS" -e .
# Editable installs skip build hooks: add the start-up hook of transparent mode by hand (wheels ship it).
"$VENV/bin/python" -m pycryptotensors.integrations.transparent install >/dev/null
"$VENV/bin/python" - <<'PY'
import torch
import transformers

assert torch.__version__.startswith("2.13.0"), f"pip replaced the pinned torch: {torch.__version__}"
assert transformers.__version__.startswith("4.57."), f"unexpected transformers {transformers.__version__}"
PY
echo "$STAMP" >"$MARKER"
echo "$VENV ready: torch 2.13.0, transformers 4.57"
