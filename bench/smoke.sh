#!/usr/bin/env bash
# Every benchmark in its --smoke mode (small sizes, few runs), so that none of them rots unnoticed; .ci/run calls
# it after the tests. The figures of a smoke run are too small to judge the targets; a failure here is a broken
# script. A benchmark whose environment is missing (.venv-frameworks, the remote extra) says so and is skipped.
#   bash bench/smoke.sh            (VENV=.venv by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
step() {
  local name=$1
  shift
  echo "== $name --smoke"
  local start=$SECONDS
  "$@" | tee "$DIR/$name.txt"
  echo "== $name: $((SECONDS - start)) s"
}
step bench_core "$PY" bench/bench_core.py --smoke --dir "$DIR"
step bench_keyservice "$PY" bench/bench_keyservice.py --smoke
step bench_policy "$PY" bench/bench_policy.py --smoke
step bench_model_check "$PY" bench/bench_model_check.py --smoke
if "$PY" -c "import transformers, torch" 2>/dev/null; then
  step bench_integrations "$PY" bench/bench_integrations.py --smoke
else
  echo "== bench_integrations: skipped (transformers or torch not installed)"
fi
if "$PY" -c "import boto3, moto, obstore" 2>/dev/null; then
  step bench_remote "$PY" bench/bench_remote.py --smoke
else
  echo "== bench_remote: skipped (the remote and test extras are not installed)"
fi
if [ -x .venv-frameworks/bin/python ]; then
  step bench_frameworks .venv-frameworks/bin/python bench/bench_frameworks.py --smoke
else
  echo "== bench_frameworks: skipped (.venv-frameworks missing: scripts/setup-frameworks-venv.sh)"
fi
echo
echo "== every target of issue 14 next to its bar (SMOKE RUN: the sizes are too small to judge; bench/targets.sh)"
grep -h -E "target (<=|>=)|ceiling" "$DIR"/bench_core.txt "$DIR"/bench_integrations.txt 2>/dev/null || true
