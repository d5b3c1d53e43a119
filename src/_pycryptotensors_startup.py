"""Runs at interpreter start (from ``pycryptotensors-transparent.pth``): arms transparent loading.

It only installs a tiny import hook; nothing heavy is imported until a program imports ``safetensors``. Then
``pycryptotensors.integrations.transparent`` patches it, so that code which does ``from safetensors import
safe_open`` at import time (transformers, vLLM) already gets the CryptoTensors-aware version. Set
``PYCRYPTOTENSORS_TRANSPARENT=0`` to turn it off. Any failure here is silent: a .pth must never break Python.
"""

import contextlib
import os
import sys

DISABLED = ("0", "false", "no", "off")
NATIVE = "safetensors._safetensors_rust"  # holds the original functions: never patched


def is_target(name):
    """safetensors and every Python module of it (torch, numpy, flax, tensorflow, paddle, mlx, and any new one)."""
    return (name == "safetensors" or name.startswith("safetensors.")) and name != NATIVE


class _PatchingLoader:
    """Delegates to the real loader, then lets the hook patch the freshly executed module."""

    def __init__(self, loader, name, hook):
        self._loader, self._name, self._hook = loader, name, hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._hook.patch(self._name, module)
        except Exception as error:  # never break the import of the module itself
            sys.stderr.write(f"pycryptotensors: {self._hook.what} not active for {self._name}: {error}\n")

    def __getattr__(self, attribute):
        return getattr(self._loader, attribute)


class PatchingHook:
    """A meta path finder that wraps the loaders of the modules ``targets`` names (and nothing else), so that
    ``patch(name, module)`` runs as each is imported. Subclasses say which modules and what to do."""

    what = "patch"

    def targets(self, name):
        raise NotImplementedError

    def patch(self, name, module):
        raise NotImplementedError

    def find_spec(self, name, path=None, target=None):
        if not self.targets(name):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, name, self)
                return spec
        return None


class SafetensorsHook(PatchingHook):
    """safetensors' modules, patched by transparent mode."""

    what = "transparent loading"

    def targets(self, name):
        return is_target(name)

    def patch(self, name, module):
        from pycryptotensors.integrations import transparent

        transparent.patch_module(name, module)


def install() -> None:
    if not any(isinstance(finder, SafetensorsHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, SafetensorsHook())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, SafetensorsHook)]


if os.environ.get("PYCRYPTOTENSORS_TRANSPARENT", "1").strip().lower() not in DISABLED:
    with contextlib.suppress(Exception):
        install()
