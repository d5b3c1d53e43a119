"""Compatibility names: the consumer's provider now lives in :mod:`.provider`, the admin client in :mod:`.admin`.
The ``pycryptotensors.key_providers`` entry point names ``client:from_settings``, so it stays importable here."""

from __future__ import annotations

from .admin import ADMIN_TOKEN_ENV, URL_ENV, AdminClient
from .provider import TOKEN_ENV, Attestation, KeyServiceProvider, from_settings, normalize

__all__ = [
    "ADMIN_TOKEN_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "AdminClient",
    "Attestation",
    "KeyServiceProvider",
    "from_settings",
    "normalize",
]
