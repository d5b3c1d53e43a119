"""Whole models: the signed manifest of a model folder (``model.sig``) and the consumer's check of it.

``folder`` says what a model folder may hold, ``manifest`` builds, signs and verifies the manifest (the
OpenSSF model-signing format with our extension), ``check`` runs the consumer's whole-model check when a
shard is opened; ``remote`` does the same for a folder in object storage or on a web server
(:func:`open_remote_model`). See docs/FORMAT.md ("Signed model folders") and docs/SECURITY.md ("Whole models").
"""

from typing import Any

__all__ = ["open_remote_model"]


def __getattr__(name: str) -> Any:
    """``open_remote_model`` (model/remote.py), imported on first use: local loads never import it."""
    if name == "open_remote_model":
        from .remote import open_remote_model

        return open_remote_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
