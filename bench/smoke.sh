#!/usr/bin/env bash
# Every benchmark in its --smoke mode (small sizes, few runs), so that none of them rots unnoticed. The
# figures of a smoke run are too small to judge the targets; a failure here is a broken script.
#   bash bench/smoke.sh            (VENV=.venv by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
echo "== bench_core --smoke"
"$PY" bench/bench_core.py --smoke --dir "$DIR"
echo "== bench_keyservice --smoke"
"$PY" bench/bench_keyservice.py --smoke
echo "== bench_policy --smoke"
"$PY" bench/bench_policy.py --smoke
if "$PY" -c "import transformers, torch" 2>/dev/null; then
  echo "== bench_integrations --smoke"
  "$PY" bench/bench_integrations.py --smoke
else
  echo "== bench_integrations: skipped (transformers or torch not installed)"
fi
