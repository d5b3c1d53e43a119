"""Every framework the reference supports: NumPy, PyTorch, JAX/Flax, TensorFlow, PaddlePaddle, MLX (issue 12).

The frameworks live in ``.venv-frameworks`` (scripts/setup-frameworks-venv.sh); each check runs
tests/_frameworks_run.py there, one process per framework (TensorFlow and Paddle crash in one process):

* ``write``: tensors of every dtype the framework has, built natively, saved by our front-end, by the reference's
  matching front-end and plain by safetensors'; round trips (``load_file``, ``load(bytes)``) in that framework;
* ``read``: every file written by every framework, loaded by this framework's front-end bit for bit (slices
  too; plain files exactly as safetensors loads them; dtypes the framework lacks refused with
  ``UnsupportedError``), and our files loaded by the reference's front-end wherever it loads its own;
* ``transparent``: unmodified ``safetensors.<framework>.load_file`` / ``load`` decrypt our files through the
  start-up hook.

Without ``.venv-frameworks`` these tests FAIL and say how to create it; set ``PYCRYPTOTENSORS_SKIP_FRAMEWORKS=1``
to skip them on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import pycryptotensors as pc

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-frameworks"
MARKER = VENV / ".pycryptotensors-setup-complete"
RUNNER = ROOT / "tests" / "_frameworks_run.py"
FRAMEWORKS = ["numpy", "torch", "flax", "tensorflow", "paddle", "mlx"]


@pytest.fixture(scope="module")
def python() -> Path:
    if os.environ.get("PYCRYPTOTENSORS_SKIP_FRAMEWORKS") == "1":
        pytest.skip("PYCRYPTOTENSORS_SKIP_FRAMEWORKS=1")
    if not MARKER.is_file():
        pytest.fail(
            f"{VENV} is missing: run `bash scripts/setup-frameworks-venv.sh` (or set PYCRYPTOTENSORS_SKIP_FRAMEWORKS=1)"
        )
    return VENV / "bin" / "python"


@pytest.fixture(scope="module")
def world(python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Keys, and the files every framework wrote (the write step runs once for all tests)."""
    out = tmp_path_factory.mktemp("frameworks")
    master, signer = pc.generate_master_key(kid="fw-enc"), pc.generate_signing_key(kid="fw-sign")
    settings = out / "config.toml"
    settings.write_text("key_dirs = []\n")
    params = {
        "dir": str(out),
        "config": {"enc_key": master.to_jwk("reference"), "sign_key": signer.to_jwk("reference")},
        "load_config": {"enc_key": master.to_jwk("reference"), "sign_key": signer.verify_key.to_jwk("reference")},
    }
    env = {k: v for k, v in os.environ.items() if k != "PYCRYPTOTENSORS_TRANSPARENT"}
    env.update(
        JAX_ENABLE_X64="1",  # JAX would load 64-bit types as 32-bit ones (as safetensors.flax does too)
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONWARNINGS="ignore",
        PYCRYPTOTENSORS_CONFIG=str(settings),
        CRYPTOTENSOR_KEYS=json.dumps(
            {"keys": [master.to_jwk("reference"), signer.verify_key.to_jwk("reference")]}
        ),  # the reference's load_file and unmodified safetensors code get keys only from here
    )
    world = {"python": python, "params": params, "env": env, "out": out}
    world["written"] = {fw: run(world, "write", fw) for fw in FRAMEWORKS}
    return world


def run(world: dict[str, Any], action: str, framework: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(world["python"]), str(RUNNER), action, framework, json.dumps(world["params"])],
        capture_output=True,
        text=True,
        env=world["env"],
        cwd=world["out"],
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{action} {framework}: exit {result.returncode}\n{result.stderr[-3000:]}"
    report = json.loads(lines[-1])
    report["returncode"] = result.returncode
    return report


def assert_clean(report: dict[str, Any]) -> None:
    assert report["returncode"] == 0 and not report["failures"], "\n".join(report["failures"][:20])
    assert report["checks"] > 0


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_round_trip_every_dtype(world: dict[str, Any], framework: str) -> None:
    assert_clean(world["written"][framework])
    meta = json.loads((world["out"] / f"{framework}.json").read_text())
    dtypes = {entry["dtype"] for entry in meta["tensors"].values()}
    assert {"F32", "BF16", "I64", "U64", "BOOL", "C64"} <= dtypes  # every framework has these
    assert (world["out"] / f"{framework}.ours.safetensors").is_file()
    assert meta["files"]["ref"], "the reference's front-end wrote nothing"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cross_framework_slices_bytes_and_reference(world: dict[str, Any], framework: str) -> None:
    """Files from every framework (ours, the reference's, plain) load here; the reference reads ours."""
    assert_clean(run(world, "read", framework))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_transparent_mode_safetensors_framework_modules(world: dict[str, Any], framework: str) -> None:
    assert_clean(run(world, "transparent", framework))
