#!/usr/bin/env bash
# Type-checks src/ with mypy in strict mode (its settings: [tool.mypy] in pyproject.toml). scripts/test.sh runs
# it right after ruff; run it alone with `bash scripts/typecheck.sh` (VENV picks the environment, .venv by default).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/python" -m mypy "$@"
