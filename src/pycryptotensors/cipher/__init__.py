"""The cipher layer: AEAD algorithms, nonce derivation, key wrapping and chunked tensor encryption.

Every primitive comes from ``cryptography``; nothing here is hand-rolled. ``aead`` holds the small, safe
operations; ``chunks`` moves tensor bytes through the cipher in parallel, straight into caller buffers.
"""
