"""vLLM integration: serve encrypted models with vLLM, by its default load path or ``load_format="pycryptotensors"``.

vLLM loads weights in processes it spawns (engine core, workers). The one hook it runs in each of them before
a model loads is the ``vllm.general_plugins`` entry point, so :func:`register` is that entry point. It:

- enables transparent mode, so vLLM's default safetensors path (``safe_open`` / ``load`` / ``load_file`` in
  ``weight_utils``) decrypts CryptoTensors files with keys from the environment and settings file;
- registers the load format ``pycryptotensors`` (and ``cryptotensors``, its older name): the default loader,
  restricted to ``*.safetensors`` files, with keys and trust taken from ``model_loader_extra_config`` (so one
  command line carries them, e.g. a token file for the key service), and refusing unencrypted files when
  ``require_encryption`` is set;
- lets a remote folder URL (``s3://``, ``gs://``, ``az://``, ``hf://``, ``http(s)://``) be vLLM's ``model`` with
  that load format. vLLM reads the model's config and tokenizer itself in ``EngineArgs.__post_init__``, right
  after loading plugins and before any loader runs, so the URL is replaced there by the checked local folder
  :func:`pycryptotensors.model.open_remote_model` returns (small files cached, shards as placeholders that
  stream from their URL by range requests in whichever vLLM process opens them). Other load formats keep
  vLLM's own handling of URLs (tests/test_remote_vllm.py).

vLLM is imported only inside :func:`register`, so this module imports without vLLM installed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import LoadOptions
from ..errors import ConfigError, NotEncryptedError
from ..keys.access import resolve_trust
from ..keys.files import read_key_file
from ..keys.jwk import MasterKey, SigningKey
from ..keys.keyring import KeyRing
from ..keyservice.provider import TOKEN_ENV, KeyServiceProvider
from . import transparent

LOAD_FORMAT = "cryptotensors"  # the first name, kept for command lines written before the rename
LOAD_FORMATS = ("pycryptotensors", LOAD_FORMAT)  # the same loader under both names
OPTIONS = frozenset(
    {"keys", "key_dirs", "jku_dirs", "trusted_signers", "require_encryption", "policy_input", "key_service"}
)
KEY_SERVICE_OPTIONS = frozenset({"allowed", "token_file", "timeout", "retries", "ca_file"})  # as in the settings
_WEIGHT_UTILS = "vllm.model_executor.model_loader.weight_utils"


def _paths(value: Any, what: str) -> list[str]:
    if isinstance(value, str | os.PathLike):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | os.PathLike) for v in value):
        raise ConfigError(f"model_loader_extra_config: {what} must be a list of paths")
    return [os.path.expanduser(v) for v in value]


def _keys(value: Any, what: str) -> list[Any]:
    """Keys from JWK files. Never inline: vLLM logs its configuration, extra config included."""
    return [key for path in _paths(value, what) for key in read_key_file(path)]


def _key_service(section: Any) -> KeyServiceProvider:
    """The ``key_service`` option: the settings file's ``[key_service]`` keys; the token file wins over the
    ``PYCRYPTOTENSORS_KEY_SERVICE_TOKEN`` variable because it was named for this model."""
    if not isinstance(section, Mapping) or set(section) - KEY_SERVICE_OPTIONS:
        raise ConfigError(f"model_loader_extra_config: key_service takes {', '.join(sorted(KEY_SERVICE_OPTIONS))}")
    allowed = section.get("allowed")
    if not isinstance(allowed, list | tuple) or not allowed or not all(isinstance(u, str) for u in allowed):
        raise ConfigError("model_loader_extra_config: key_service.allowed must be a non-empty list of URLs")
    token = os.environ.get(TOKEN_ENV)
    if section.get("token_file"):
        path = Path(section["token_file"]).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"cannot read key service token file {path}: {error.strerror}") from None
    try:
        timeout, retries = float(section.get("timeout", 10)), int(section.get("retries", 3))
    except (TypeError, ValueError):
        raise ConfigError("model_loader_extra_config: key_service timeout and retries must be numbers") from None
    return KeyServiceProvider(allowed, token, timeout=timeout, retries=retries, verify=section.get("ca_file", True))


def options_from_extra_config(extra: Mapping[str, Any]) -> LoadOptions:
    """LoadOptions from our part of ``model_loader_extra_config`` (unknown names refused)."""
    unknown = set(extra) - OPTIONS
    if unknown:
        raise ConfigError(f"model_loader_extra_config: unknown option(s) {', '.join(sorted(unknown))}")
    signers = []
    for key in _keys(extra.get("trusted_signers", []), "trusted_signers"):
        if isinstance(key, MasterKey):
            raise ConfigError("model_loader_extra_config: trusted_signers must be publisher (Ed25519) keys")
        signers.append(key.verify_key if isinstance(key, SigningKey) else key)
    require = extra.get("require_encryption", False)
    claims = extra.get("policy_input", {})
    if not isinstance(require, bool) or not isinstance(claims, Mapping):
        raise ConfigError("model_loader_extra_config: require_encryption is a bool, policy_input a mapping")
    return LoadOptions(
        keyring=KeyRing(_keys(extra.get("keys", []), "keys")),
        policy_input=dict(claims),
        require_encryption=require,
        trusted_signers=signers,
        key_dirs=_paths(extra.get("key_dirs", []), "key_dirs"),
        jku_dirs=_paths(extra.get("jku_dirs", []), "jku_dirs"),
        providers=[_key_service(extra["key_service"])] if "key_service" in extra else None,
    )


def split_extra_config(extra: Mapping[str, Any] | None) -> tuple[LoadOptions, dict[str, Any]]:
    """Our options as LoadOptions, and the rest (vLLM's own, e.g. ``enable_multithread_load``) for vLLM."""
    extra = dict(extra or {})
    return options_from_extra_config({k: extra.pop(k) for k in OPTIONS & set(extra)}), extra


def check_encrypted(files: Iterable[str], options: LoadOptions) -> None:
    """Refuse a plain file where encryption is required (by the options or a settings rule) as soon as vLLM
    lists the weight files (also in ``download_model``), before any weight is read, whatever reads them."""
    trust = resolve_trust(options)
    for file in files:
        if trust.for_file(file).require_encryption and not transparent.is_crypto_file(file):
            raise NotEncryptedError(f"{file} is not an encrypted CryptoTensors file, and encryption is required")


def _activate(options: LoadOptions | None = None, configure: bool = False) -> None:
    """Transparent mode on, and the wrappers bound in vLLM's weight_utils even if it imported safetensors'
    functions by name before the start-up hook could act (plain safetensors would return ciphertext)."""
    transparent.enable()
    if configure:
        transparent.configure(options)
    weight_utils = sys.modules.get(_WEIGHT_UTILS)
    if weight_utils is not None:
        import safetensors.torch

        for name in ("safe_open", "load"):
            bound = getattr(weight_utils, name, None)
            if bound is not None and not getattr(bound, "__pycryptotensors__", False):
                setattr(weight_utils, name, getattr(safetensors.torch, name))


_loader: type | None = None


def register() -> None:
    """The ``vllm.general_plugins`` entry point (run in every vLLM process; idempotent)."""
    global _loader
    _activate()
    if _loader is not None:
        return
    from vllm.model_executor.model_loader import DefaultModelLoader, register_model_loader

    class CryptoTensorsModelLoader(DefaultModelLoader):
        """vLLM's default safetensors loader with keys and trust from ``model_loader_extra_config``."""

        def __init__(self, load_config: Any) -> None:
            self.options, rest = split_extra_config(load_config.model_loader_extra_config)
            # DefaultModelLoader rejects unknown load formats and extra options: it sees "safetensors" (never
            # *.bin / *.pt, which would bypass decryption and trust) and vLLM's own options only.
            super().__init__(
                dataclasses.replace(load_config, load_format="safetensors", model_loader_extra_config=rest)
            )

        def _prepare_weights(self, *args: Any, **kwargs: Any) -> Any:
            prepared = super()._prepare_weights(*args, **kwargs)
            check_encrypted(prepared[1], self.options)
            return prepared

        def load_weights(self, model: Any, model_config: Any) -> None:
            # The options stay in force in this process, so later loads of its files (e.g. LoRA) use them too.
            _activate(self.options, configure=True)
            super().load_weights(model, model_config)

    for name in LOAD_FORMATS:
        _loader = register_model_loader(name)(CryptoTensorsModelLoader)
    _install_remote_models()


def _remote_model(args: Any) -> None:
    """Replace a remote folder URL in ``args.model`` (and the same ``args.tokenizer``) by the checked local
    cache folder of :func:`~pycryptotensors.model.open_remote_model`, when the load format is ours only."""
    from ..reading.source import is_url

    if getattr(args, "load_format", None) not in LOAD_FORMATS or not is_url(getattr(args, "model", None)):
        return
    from ..model.remote import open_remote_model

    extra = args.model_loader_extra_config
    if isinstance(extra, str):
        import json

        extra = json.loads(extra) if extra.strip() else {}
    options, _ = split_extra_config(extra)
    url = args.model
    folder = str(open_remote_model(url, options))
    args.model = folder
    if getattr(args, "tokenizer", None) in (url, url.rstrip("/"), url.rstrip("/") + "/"):
        args.tokenizer = folder


def _install_remote_models() -> None:
    """vLLM reads ``model`` (config.json, tokenizer, an offline Hub lookup) right after loading plugins in
    ``EngineArgs.__post_init__``, before any loader runs. So: the EngineArgs whose ``__post_init__`` is
    loading plugins now is resolved here, and later ones (``vllm serve`` loads plugins while building its
    parser) by a wrapper around ``__post_init__``. Other load formats are left untouched."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.__post_init__
    if not getattr(original, "__pycryptotensors__", False):

        def post_init(self: Any) -> None:
            _remote_model(self)
            original(self)

        post_init.__pycryptotensors__ = True  # type: ignore[attr-defined]
        EngineArgs.__post_init__ = post_init
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is original.__code__ and isinstance(frame.f_locals.get("self"), EngineArgs):
            _remote_model(frame.f_locals["self"])
            break
        frame = frame.f_back
