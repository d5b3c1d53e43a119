"""Compatibility names: the consumer's provider now lives in :mod:`.provider`, the admin client in :mod:`.admin`.
The ``pycryptotensors.key_providers`` entry point names ``client:from_settings``, so it stays importable here."""

from __future__ import annotations

from .admin import ADMIN_TOKEN_ENV, URL_ENV, AdminClient  # noqa: F401 - the constants: importable, not public
from .provider import TOKEN_ENV, Attestation, KeyServiceProvider, from_settings, normalize  # noqa: F401 - as above

# the public names (docs/API.md); the others stay importable here for existing callers
__all__ = ["KeyServiceProvider", "AdminClient", "from_settings"]
