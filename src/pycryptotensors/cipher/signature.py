"""Ed25519 signatures over a header: the messages come from :mod:`pycryptotensors.format.signing`."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import SignatureError
from ..format.header import Header, TensorEntry
from ..format.signing import signed_message, signed_messages


def sign_header(private_key: Ed25519PrivateKey, metadata: dict[str, str], ordered: list[TensorEntry]) -> bytes:
    return private_key.sign(signed_message(metadata, ordered))


def verify_header(
    public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey],
    header: Header,
    signature: bytes,
    raw: bytes | None = None,
) -> None:
    """Accept the header if one of the trusted keys verifies it over one of its possible messages.

    ``raw`` (the header bytes as read) lets a header written the usual way be checked against its own bytes,
    without per-tensor work; raises :class:`SignatureError` when no key verifies any message.
    """
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    for message in signed_messages(header, raw):
        for key in keys:
            try:
                key.verify(signature, message)
                return
            except InvalidSignature:
                continue
    raise SignatureError("the header signature does not verify under the trusted signing key")
