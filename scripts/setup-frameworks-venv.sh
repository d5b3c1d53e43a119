#!/usr/bin/env bash
# Creates (or reuses) .venv-frameworks: this project with TensorFlow (CPU), JAX + Flax, PaddlePaddle (CPU) and
# MLX (CPU build), plus the reference library, for tests/test_frameworks.py (it runs tests/_frameworks_run.py
# with this venv's python). Kept apart from .venv because these frameworks are large and pin their own
# numpy / protobuf ranges.
# torch is installed first and pinned (an unpinned torch pulls a multi-GB CUDA build) and re-pinned in every
# later install so that pip cannot replace it. Idempotent: a marker file records a hash of this script and of
# pyproject.toml; while both are unchanged, a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_FRAMEWORKS:-.venv-frameworks}
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
# the same pins as pyproject.toml's extra `frameworks` (installed through it below)
FRAMEWORKS=("tensorflow-cpu==2.21.*" "jax[cpu]" "flax==0.12.*" "paddlepaddle==3.3.*" "mlx[cpu]==0.32.*")
PEERS=("cryptotensors==0.2.3" "packaging" "ml_dtypes>=0.5" "pytest>=8" "pytest-timeout>=2.3.1")
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
"$VENV/bin/python" -m pip install -q "$TORCH" "${FRAMEWORKS[@]}" "${PEERS[@]}"
"$VENV/bin/python" -m pip install -q "$TORCH" "${FRAMEWORKS[@]}" "${PEERS[@]}" -e ".[frameworks]"
# Editable installs skip build hooks: add the start-up hook of transparent mode by hand (wheels ship it).
"$VENV/bin/python" -m pycryptotensors.integrations.transparent install >/dev/null
"$VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
# One process per framework: TensorFlow and Paddle crash (SIGSEGV) when imported into the same process,
# so the tests (tests/_frameworks_run.py) also give each framework its own process.
for module in tensorflow jax flax paddle mlx.core cryptotensors; do
    "$VENV/bin/python" -c "import $module" >/dev/null 2>&1 || { echo "cannot import $module in $VENV" >&2; exit 1; }
done
echo "$STAMP" >"$MARKER"
echo "$VENV ready: torch 2.13.0, tensorflow-cpu, jax + flax, paddlepaddle, mlx[cpu]"
