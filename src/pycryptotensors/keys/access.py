"""The one place where a load's options become what it may use: key sources, trust and policy claims.

Options (:class:`~pycryptotensors.config.LoadOptions`) are data; everything outside the call that a load
depends on (the consumer's settings file, ``CRYPTOTENSOR_KEYS``, key directories, installed key providers)
is read here, once per open, and passed down. Readers, integrations and the CLI all call :func:`resolve` (or
:func:`resolve_trust` where only trust matters), so "which keys and which publishers" is decided the same
way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..settings import Settings, load_settings
from .trust import Trust

if TYPE_CHECKING:
    from ..config import LoadOptions
    from .jwk import VerifyKey
    from .keyring import KeyRing
    from .sources import KeySources


@dataclass(frozen=True)
class Access:
    """What one load may use, resolved: where keys come from, whom it trusts, the claims for the policy."""

    sources: KeySources
    trust: Trust
    policy_input: Mapping[str, Any]
    settings: Settings

    def fail_closed(self) -> None:
        """Raise :class:`~pycryptotensors.ConfigError` when the settings file in use is broken. Called for
        encrypted files only: a typo there never stops plain files (settings.py warns instead)."""
        self.settings.check()


def _settings(use_settings: bool) -> Settings:
    return load_settings() if use_settings else Settings()


def _trust(signers: Sequence[VerifyKey], require_encryption: bool, settings: Settings) -> Trust:
    return Trust(
        tuple(signers) or settings.trust.signers,
        require_encryption or settings.trust.require_encryption,
        settings.trust.rules,
    )


def resolve_trust(config: LoadOptions | KeyRing | Mapping[str, Any] | None) -> Trust:
    """The trust in force for ``config`` (its pins and requirement, then the settings file's), without
    reading any key: what transparent mode and the model-folder guard need to decide about a plain file.
    ``None`` (transparent mode unconfigured) is answered without importing the key or cipher modules."""
    if config is None:
        return _trust((), False, _settings(True))
    from ..config import load_options

    options = load_options(config)
    return _trust(options.trusted_signers, options.require_encryption, _settings(options.use_settings))


def resolve(config: Access | LoadOptions | KeyRing | Mapping[str, Any] | None) -> Access:
    """Everything a load may use, from any form of ``config`` a load function accepts (an :class:`Access`
    passes through, so a caller opening many files resolves once)."""
    if isinstance(config, Access):
        return config
    from ..config import load_options
    from .sources import KeySources, installed_providers

    options = load_options(config)
    settings = _settings(options.use_settings)
    providers = installed_providers() if options.providers is None else tuple(options.providers)
    sources = KeySources.build(
        options.keyring,
        [*options.key_dirs, *settings.key_dirs],
        [*options.jku_dirs, *settings.jku_dirs],
        providers,
        options.use_environment,
    )
    trust = _trust(options.trusted_signers, options.require_encryption, settings)
    return Access(sources, trust, dict(options.policy_input), settings)
