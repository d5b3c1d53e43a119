"""Keys and trust. After age: a *master key* wraps data keys on save (the recipient's side) and unwraps them
on load (the identity's side); a *signing key* signs a header and its public half verifies it. ``jwk``
converts keys to and from JSON Web Keys; ``keyring`` finds the key a file asks for among those the caller
configured; ``sources`` defines the interfaces of key providers (plugins that supply keys, docs/KEYS.md).

The names below load on first use, so that ``trust`` and ``files`` stay light for transparent mode's
plain-file path (which must not import the ciphers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .jwk import MasterKey, SigningKey, VerifyKey, generate_master_key, generate_signing_key, parse_jwk
    from .keyring import KeyRing
    from .sources import KeyProvider, KeyRequest, ProvidedKeys, PublisherVoucher

__all__ = [
    "KeyRing",
    "MasterKey",
    "SigningKey",
    "VerifyKey",
    "generate_master_key",
    "generate_signing_key",
    "parse_jwk",
    "KeyProvider",
    "KeyRequest",
    "ProvidedKeys",
    "PublisherVoucher",
]
_LAZY = {
    "KeyRing": ".keyring",
    "MasterKey": ".jwk",
    "SigningKey": ".jwk",
    "VerifyKey": ".jwk",
    "generate_master_key": ".jwk",
    "generate_signing_key": ".jwk",
    "parse_jwk": ".jwk",
    "KeyProvider": ".sources",
    "KeyRequest": ".sources",
    "ProvidedKeys": ".sources",
    "PublisherVoucher": ".sources",
}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
