#!/usr/bin/env bash
# Runs every test: sets up the virtual environments (the main one, transformers 4.57, vLLM for CPU), checks
# style with ruff, then runs pytest. The extra environments are reused when already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/setup-tf457-venv.sh
bash scripts/setup-vllm-venv.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check src tests bench scripts setup.py
"$VENV/bin/python" -m pytest -q "$@"
