"""Whole models: the signed manifest of a model folder (``model.sig``) and the consumer's check of it.

``folder`` says what a model folder may hold, ``manifest`` builds, signs and verifies the manifest (the
OpenSSF model-signing format with our extension), ``check`` runs the consumer's whole-model check when a
shard is opened. See docs/FORMAT.md ("Signed model folders") and docs/SECURITY.md ("Whole models").
"""
