"""The consumer's settings file: key directories, allowed jku directories, pinned publishers, rules.

Read from the file named by ``PYCRYPTOTENSORS_CONFIG``, else ``config.toml`` in the user's configuration folder
as :mod:`platformdirs` finds it (``$XDG_CONFIG_HOME/pycryptotensors``, by default ``~/.config/pycryptotensors`` on
Linux; ``~/Library/Application Support/pycryptotensors`` on macOS; ``%LOCALAPPDATA%\\pycryptotensors`` on
Windows), else the old place, ``~/.config/pycryptotensors/config.toml``, when it exists. The default key
directory is ``keys`` beside it (both places are read when they differ). Code that passes its own options still
gets these as defaults, so a deployment configures trust once for every program on the machine (including ones
that load models with no code change). Format and examples: docs/KEYS.md.

A broken file (not TOML, an unknown key such as ``trusted_signer``, a bad value) must not stop *plain* models
from loading everywhere on the machine, nor may it weaken the checks of encrypted ones: the valid part is
kept, one warning names the file, the problem and the nearest valid key, and :attr:`Settings.problem` makes
every encrypted load fail closed with :class:`ConfigError` (``reading/reader.py``).
"""

from __future__ import annotations

import difflib
import os
import tomllib
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .keys.trust import Trust, TrustRule, trust_rule

if TYPE_CHECKING:
    from .keys.jwk import VerifyKey

ENV_VAR = "PYCRYPTOTENSORS_CONFIG"
APP_NAME = "pycryptotensors"
DEFAULT_DIR = Path("~/.config/pycryptotensors")  # the place before platformdirs: still read (documented)
_TOP_LEVEL = {"key_dirs", "jku_dirs", "trusted_signers", "require_encryption", "rule", "key_service"}


@dataclass(frozen=True)
class Settings:
    key_dirs: tuple[Path, ...] = ()
    jku_dirs: tuple[Path, ...] = ()
    trust: Trust = field(default_factory=Trust)
    raw: dict[str, Any] = field(default_factory=dict)  # sections for plugins (e.g. key_service)
    base: Path = field(default_factory=Path.cwd)  # relative paths in the file are relative to its directory
    problem: str | None = None  # why the file is broken: plain loads go on, encrypted loads refuse

    def check(self) -> None:
        """Raise :class:`ConfigError` when the settings file is broken (encrypted loads fail closed)."""
        if self.problem is not None:
            raise ConfigError(self.problem)


class SettingsWarning(UserWarning):
    """The settings file is broken: plain files still load, encrypted files do not until it is fixed."""


def _paths(value: Any, base: Path, what: str) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"settings: {what} must be a list of paths")
    return tuple((base / Path(v).expanduser()).resolve() for v in value)


def _signers(value: Any, base: Path, what: str) -> tuple[VerifyKey, ...]:
    paths = _paths(value, base, what)
    if not paths:
        return ()
    # here, not above: settings naming no signer need no cipher
    from .keys.files import read_key_file, warn_if_exposed
    from .keys.jwk import MasterKey, VerifyKey

    keys: list[VerifyKey] = []
    for path in paths:
        found = read_key_file(path)
        warn_if_exposed(path, found)  # a private signing key named here: it must not be readable by others
        for key in found:
            if isinstance(key, MasterKey):
                raise ConfigError(f"settings: {what}: {path} holds a master key, not a publisher key")
            keys.append(key if isinstance(key, VerifyKey) else key.verify_key)
    return tuple(keys)


def _flag(value: Any, what: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"settings: {what} must be true or false")
    return value


def _unknown_keys(unknown: set[str]) -> str:
    hints = []
    for key in sorted(unknown):
        near = difflib.get_close_matches(key, sorted(_TOP_LEVEL), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return f"unknown keys {', '.join(hints)}; valid keys: {', '.join(sorted(_TOP_LEVEL))}"


def parse_settings(document: dict[str, Any], base: Path) -> Settings:
    unknown = set(document) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"settings: {_unknown_keys(unknown)}")
    rules: list[TrustRule] = []
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError("settings: rule must be an array of tables ([[rule]])")
    for i, rule in enumerate(raw_rules):
        if (
            not isinstance(rule, dict)
            or not isinstance(rule.get("path"), str)
            or set(rule) - {"path", "signers", "require_encryption"}
        ):
            raise ConfigError(f"settings: rule {i} needs 'path' and may have 'signers', 'require_encryption'")
        rules.append(
            trust_rule(
                base / Path(rule["path"]).expanduser(),
                _signers(rule.get("signers", []), base, "signers"),
                _flag(rule.get("require_encryption"), f"rule {i} require_encryption", True),
            )
        )
    trust = Trust(
        _signers(document.get("trusted_signers", []), base, "trusted_signers"),
        _flag(document.get("require_encryption"), "require_encryption", False),
        tuple(rules),
    )
    key_dirs = document.get("key_dirs")
    return Settings(
        _paths(key_dirs, base, "key_dirs") if key_dirs is not None else default_key_dirs(),
        _paths(document.get("jku_dirs", []), base, "jku_dirs"),
        trust,
        document,
        base,
    )


_DIR_ENV = ("HOME", "XDG_CONFIG_HOME", "USERPROFILE", "APPDATA", "LOCALAPPDATA")  # what the folders follow


def config_dirs() -> tuple[Path, ...]:
    """The user's configuration folders, newest convention first: platformdirs' (XDG on Linux), then the
    old ``~/.config/pycryptotensors`` when it differs (macOS, Windows, or a custom ``XDG_CONFIG_HOME``)."""
    return _config_dirs(tuple(os.environ.get(name) for name in _DIR_ENV))


@cache  # asked at every load: computed once per value of the variables it depends on
def _config_dirs(environment: tuple[str | None, ...]) -> tuple[Path, ...]:
    from platformdirs import user_config_path

    found = user_config_path(APP_NAME, appauthor=False)
    legacy = DEFAULT_DIR.expanduser()
    return (found,) if found == legacy else (found, legacy)


def default_key_dirs() -> tuple[Path, ...]:
    """The key directories of a settings file without ``key_dirs`` (or of no settings file): ``keys`` in each
    configuration folder."""
    return tuple(d / "keys" for d in config_dirs())


def settings_path() -> Path | None:
    """The settings file in force: ``PYCRYPTOTENSORS_CONFIG``, else the first ``config.toml`` that exists in
    :func:`config_dirs`, else None."""
    named = os.environ.get(ENV_VAR)
    if named:
        return Path(named).expanduser()
    return next((d / "config.toml" for d in config_dirs() if (d / "config.toml").is_file()), None)


def _broken(path: Path, what: str, settings: Settings | None = None) -> Settings:
    """Settings for a broken file: its valid part (or the defaults), marked broken, with one warning."""
    problem = f"settings file {path}: {what}; fix it (docs/KEYS.md): encrypted files are refused until then"
    warnings.warn(f"{problem}; plain safetensors files still load", SettingsWarning, stacklevel=4)
    settings = settings or Settings(key_dirs=default_key_dirs())
    return Settings(settings.key_dirs, settings.jku_dirs, settings.trust, settings.raw, settings.base, problem)


@cache  # one parse, and so one warning, per version of the file
def _load(path: Path | None, mtime: float, config_folders: tuple[Path, ...]) -> Settings:
    """``config_folders`` (:func:`config_dirs`) is part of the cache key: the default key directories follow
    ``HOME`` / ``XDG_CONFIG_HOME``."""
    if path is None:
        return Settings(key_dirs=default_key_dirs())
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read settings file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        return _broken(path, f"not valid TOML ({error})")
    unknown = set(document) - _TOP_LEVEL
    try:
        settings = parse_settings({k: v for k, v in document.items() if k not in unknown}, path.parent)
    except ConfigError as error:
        return _broken(path, str(error).removeprefix("settings: "))
    return _broken(path, _unknown_keys(unknown), settings) if unknown else settings


def load_settings() -> Settings:
    """The consumer's settings (cached until the file changes)."""
    path = settings_path()
    mtime = path.stat().st_mtime if path is not None and path.exists() else 0.0
    return _load(path, mtime, config_dirs())
