"""The key service: automatic key management and the enforced remote policy.

``protocol`` is the wire format shared by both sides (requests, sealed responses, HPKE); ``store`` keeps
models, client tokens, grants and the audit log (SQLite or OpenBao); ``service`` makes release decisions;
``app`` serves them over HTTP; ``client`` is the consumer's key provider and the publisher's admin client;
``attestation`` checks attestation tokens. Protocol and threat model: docs/KEYSERVICE.md.
"""
