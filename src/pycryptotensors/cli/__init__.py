"""The ``pycryptotensors`` command: keygen, encrypt, decrypt, inspect, verify, rewrap, policy."""

from .app import main

__all__ = ["main"]
