#!/usr/bin/env bash
# Runs every test: sets up the virtual environments (the main one with the newest releases, one with the lowest
# versions pyproject.toml allows, transformers 4.57, vLLM for CPU, TensorFlow/JAX/Paddle/MLX), checks style with ruff, then runs pytest in
# the main environment and, at the same time, in the lowest one. The extra environments are reused when already
# up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/setup-lowest-venv.sh
bash scripts/setup-tf457-venv.sh
bash scripts/setup-vllm-venv.sh
bash scripts/setup-frameworks-venv.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check src tests bench scripts testdata setup.py
bash scripts/typecheck.sh
# the API reference builds from the docstrings without a warning (mkdocs.yml; into a temporary folder)
DOCS_SITE=$(mktemp -d)
"$VENV/bin/mkdocs" build --strict --quiet --site-dir "$DOCS_SITE/site"
rm -rf "$DOCS_SITE"
LOWEST=${VENV_LOWEST:-.venv-lowest}
# Hypothesis draws from a seed printed here, so a failure in CI can be replayed with HYPOTHESIS_SEED=...
SEED=${HYPOTHESIS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "hypothesis seed: $SEED (replay with HYPOTHESIS_SEED=$SEED bash scripts/test.sh)"
# The two passes run side by side (one core each; the machine has two): the lowest one's output is printed
# after the main one's. Ports are chosen free by each test and files live in pytest's own temporary folders.
echo "== tests on the lowest versions pyproject.toml allows ($LOWEST), in the background"
LOWEST_LOG=$(mktemp)
# The vLLM and framework tests run in their own venvs (.venv-vllm, .venv-frameworks) whichever python starts
# them: once, in the main pass, is enough.
"$LOWEST/bin/python" -m pytest -q -p no:cacheprovider --hypothesis-seed="$SEED" --ignore=tests/test_vllm.py \
    --ignore=tests/test_frameworks.py "$@" >"$LOWEST_LOG" 2>&1 &
LOWEST_PID=$!
trap 'kill "$LOWEST_PID" 2>/dev/null || true; rm -f "$LOWEST_LOG"' EXIT
echo "== tests on the newest releases ($VENV)"
# Branch coverage of src/ with a floor ([tool.coverage] in pyproject.toml), in this pass only.
set +e
"$VENV/bin/python" -m pytest -q --hypothesis-seed="$SEED" --cov --cov-report=term "$@"
MAIN=$?
wait "$LOWEST_PID"
LOWEST_RC=$?
set -e
echo "== tests on the lowest versions pyproject.toml allows ($LOWEST)"
cat "$LOWEST_LOG"
if [ "$MAIN" -ne 0 ] || [ "$LOWEST_RC" -ne 0 ]; then
    echo "tests failed: newest releases exit $MAIN, lowest versions exit $LOWEST_RC" >&2
    exit 1
fi
