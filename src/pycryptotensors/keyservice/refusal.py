"""The service's own errors, apart from the client's (``pycryptotensors.errors``): a refusal carries a stable
reason code, which the HTTP layer (app.py) alone maps to a status, and the client maps back to one exception."""

from __future__ import annotations

import re


class ServiceError(Exception):
    """Base of the errors raised inside the key service (never shown to a client beyond reason and message)."""


class RefusedError(ServiceError):
    """A request refused: ``reason`` is a stable code, ``message`` says why (never a secret or policy value)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


# One grammar for principal and admin names: what fits a URL segment, a path segment in OpenBao and a log line
# as it is. Names made before it existed stay usable and revocable (revocation takes names in the body).
NAME_GRAMMAR = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_NAME = re.compile(NAME_GRAMMAR + r"\Z")
MAX_KID = 256


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RefusedError(
            "bad_request",
            f"{what} must match {NAME_GRAMMAR} (letters, digits, '.', '_', '@', '-'; at most 128 characters)",
        )
    return value


def check_kid(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KID or not value.isprintable():
        raise RefusedError("bad_request", f"a key id is a printable string of 1 to {MAX_KID} characters")
    return value
