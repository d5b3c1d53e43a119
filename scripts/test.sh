#!/usr/bin/env bash
# Runs every test: sets up the virtual environments (the main one with the newest releases, one with the lowest
# versions pyproject.toml allows, transformers 4.57, vLLM for CPU, TensorFlow/JAX/Paddle/MLX), checks style with ruff, then runs pytest in
# the main environment and again in the lowest one. The extra environments are reused when already up to date.
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
echo "== tests on the newest releases ($VENV)"
"$VENV/bin/python" -m pytest -q --hypothesis-seed="$SEED" "$@"
# The vLLM and framework tests run in their own venvs (.venv-vllm, .venv-frameworks) whichever python starts
# them: once, above, is enough.
echo "== tests on the lowest versions pyproject.toml allows ($LOWEST)"
"$LOWEST/bin/python" -m pytest -q --hypothesis-seed="$SEED" --ignore=tests/test_vllm.py \
    --ignore=tests/test_frameworks.py "$@"
