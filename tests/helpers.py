"""Helpers every test module shares: a free port on 127.0.0.1, the real ``pycryptotensors`` command, and exact
array comparison. One copy each, so that a fix (a timeout, a stricter comparison) reaches every test."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping
from typing import Any

import numpy as np

from _command import CLI


def free_port() -> int:
    """A TCP port nothing listens on at the moment (the OS picks it; servers in tests bind 127.0.0.1 only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    *args: Any,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``pycryptotensors`` command. No run may end in a traceback (every failure is a
    documented error with an exit code); ``check`` also requires exit code 0."""
    result = subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else os.environ.copy(),
        timeout=timeout,
        umask=umask,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy view of a NumPy array or a torch tensor (torch's ``numpy()``), for comparisons."""
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)


def same(value: Any, original: Any) -> bool:
    """Exactly the original: dtype, shape and bytes (so NaNs and signed zeros count, and no casting hides a
    change). Torch tensors are compared through NumPy."""
    got, want = as_numpy(value), as_numpy(original)
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def assert_same_tensors(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> None:
    """The same tensor names, each with the same dtype, shape and bytes; the message names the first that
    differs."""
    assert sorted(actual) == sorted(expected), (sorted(actual), sorted(expected))
    for name, want in expected.items():
        got = actual[name]
        if type(want).__module__.startswith("torch"):  # bfloat16 and float8 have no NumPy view: torch.equal
            import torch

            assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype)
            assert torch.equal(got, want), name
        else:
            assert same(got, want), (name, as_numpy(got).dtype, as_numpy(want).dtype, as_numpy(got).shape)
