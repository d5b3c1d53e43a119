"""The key service: automatic key management and the enforced remote policy.

``protocol`` is the wire format shared by both sides (requests, sealed responses, HPKE, the attestation
binding); ``store`` keeps models, client tokens, grants, admin tokens and the audit log (SQLite, or OpenBao in
``openbao``); ``service`` makes release decisions and ``management`` the publisher's; ``refusal`` holds the
service's own errors; ``app`` serves them over HTTP (limits, status codes, access log) and ``server`` starts
it; ``provider`` is the consumer's key provider and ``admin`` the publisher's client (``client`` keeps the old
names); ``attestation`` checks attestation tokens. Protocol and threat model: docs/KEYSERVICE.md.
"""
