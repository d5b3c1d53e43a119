#!/usr/bin/env bash
# Every target of issue 14 next to its bar, in one run: bench_core.py (open, slice, full load, save, memory)
# and bench_integrations.py (first output warm / cold, with a key directory and with a key-service release;
# vLLM's logged weight-loading time), then one summary table of every row that carries a bar.
#   bash bench/targets.sh                 full sizes (about 30 minutes on a quiet 2-core machine)
#   bash bench/targets.sh --smoke         small sizes, to check the scripts (the figures judge nothing)
# Full runs add --vllm-big to bench_integrations.py (the ~1 GB Llama in vLLM, where the 1.15x bar applies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
SMOKE=()
LABEL=""
INTEGRATIONS=(--vllm-big)
if [ "${1:-}" = "--smoke" ]; then
  SMOKE=(--smoke)
  LABEL=" (SMOKE RUN: sizes too small to judge)"
  INTEGRATIONS=()
fi
"$PY" bench/bench_core.py "${SMOKE[@]}" | tee "$LOGS/core.txt"
"$PY" bench/bench_integrations.py "${SMOKE[@]}" "${INTEGRATIONS[@]}" | tee "$LOGS/integrations.txt"
echo
echo "== every target of issue 14, next to its bar$LABEL"
grep -h -E "target (<=|>=)|ceiling" "$LOGS/core.txt" "$LOGS/integrations.txt"
