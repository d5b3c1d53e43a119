#!/usr/bin/env bash
# Runs every test: sets up the virtual environment, checks style with ruff, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check src tests bench scripts
"$VENV/bin/python" -m pytest -q "$@"
