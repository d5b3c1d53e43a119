"""vLLM serves encrypted models: the default load path (transparent mode), ``load_format="cryptotensors"``, and
keys from a real key service; a refused key stops the engine with our error, never with garbage tokens.

The model is a tiny random LlamaForCausalLM (float32, head size 32, which vLLM's CPU attention needs) built
with transformers here, encrypted with the ``pycryptotensors`` command. vLLM runs in its own venv
(``scripts/setup-vllm-venv.sh`` makes ``.venv-vllm``): ``tests/_vllm_run.py`` runs there in a subprocess, and
runs several cases per process to keep engine starts (~20 s each) few. Greedy tokens must equal those of the
plain model under vLLM and of transformers' ``generate``. No download: ``HF_HUB_OFFLINE=1``, no tokenizer
(``skip_tokenizer_init``, prompts as token ids).

Without ``.venv-vllm`` the end-to-end tests fail (CI must run them), unless ``PYCRYPTOTENSORS_SKIP_VLLM=1``.
The option parsing and the encryption check are tested here without vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as st_np

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _models import tiny_llama
from pycryptotensors.errors import NotEncryptedError
from pycryptotensors.integrations import transparent
from pycryptotensors.integrations import vllm as ct_vllm
from pycryptotensors.keys.files import write_key_file
from pycryptotensors.keyservice.client import TOKEN_ENV, KeyServiceProvider

sys.path.insert(0, str(Path(__file__).parent))
from _keyservice import Server, cli

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
RUNNER = Path(__file__).with_name("_vllm_run.py")
PROMPTS = [[1, 5, 17, 42, 99, 3], [7, 7, 100, 2, 64], [120, 33, 8, 91, 15, 60, 4]]
MAX_TOKENS = 12
PRINCIPAL = "vllm-consumer"


# ---------------------------------------------------------------------------------------------- without vLLM


def test_module_imports_without_vllm() -> None:
    """The main venv has no vLLM: importing the integration (and parsing its options) must still work."""
    code = "import sys, pycryptotensors.integrations.vllm as v; assert 'vllm' not in sys.modules; print(v.LOAD_FORMAT)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "cryptotensors", run.stderr


def test_extra_config_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master, signer = pc.generate_master_key(kid="m"), pc.generate_signing_key(kid="s")
    write_key_file(tmp_path / "master.jwk", master)
    write_key_file(tmp_path / "signer.jwk", signer)
    write_key_file(tmp_path / "signer.pub.jwk", signer.verify_key)
    (tmp_path / "token").write_text("ctk_from_file\n")
    options, rest = ct_vllm.split_extra_config(
        {
            "keys": [str(tmp_path / "master.jwk")],
            "trusted_signers": [str(tmp_path / "signer.jwk"), str(tmp_path / "signer.pub.jwk")],
            "require_encryption": True,
            "key_dirs": ["~/keys"],
            "policy_input": {"team": "research"},
            "key_service": {"allowed": ["http://127.0.0.1:1/"], "token_file": str(tmp_path / "token"), "retries": 0},
            "enable_multithread_load": True,  # vLLM's own option: handed on to vLLM's loader
        }
    )
    assert rest == {"enable_multithread_load": True}
    assert [k.kid for k in options.keyring.master_keys] == ["m"]
    assert [k.raw for k in options.trusted_signers] == [signer.verify_key.raw] * 2  # private key: its public half
    assert options.require_encryption and options.policy_input == {"team": "research"}
    assert options.key_dirs == [os.path.expanduser("~/keys")]
    (provider,) = options.providers  # type: ignore[misc]
    assert isinstance(provider, KeyServiceProvider)
    assert provider.allowed == {"http://127.0.0.1:1"} and provider.retries == 0
    assert provider._token == "ctk_from_file"
    # no key_service option: the installed providers (the settings file's [key_service]) apply
    assert ct_vllm.split_extra_config({})[0].providers is None
    monkeypatch.setenv(TOKEN_ENV, "ctk_from_env")
    from_env = ct_vllm.options_from_extra_config({"key_service": {"allowed": ["http://h"]}})
    assert from_env.providers[0]._token == "ctk_from_env"  # type: ignore[index]

    for bad in (
        {"keys": [str(tmp_path / "missing.jwk")]},
        {"keys": [{"kty": "oct"}]},  # inline keys are refused: vLLM logs its configuration
        {"trusted_signers": [str(tmp_path / "master.jwk")]},
        {"require_encryption": "yes"},
        {"key_service": {"allowed": []}},
        {"key_service": {"allowed": ["http://h"], "token": "inline"}},
        {"key_service": {"allowed": ["http://h"], "retries": "many"}},
        {"key_service": {"allowed": ["http://h"], "token_file": str(tmp_path / "missing")}},
    ):
        with pytest.raises((pc.ConfigError, pc.KeyFormatError)):
            ct_vllm.options_from_extra_config(bad)
    with pytest.raises(pc.ConfigError, match="unknown option"):
        ct_vllm.options_from_extra_config({"require_encryptoin": True})


def test_check_encrypted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader refuses plain weight files where encryption is required, as soon as it lists them."""
    plain, encrypted = tmp_path / "plain" / "model.safetensors", tmp_path / "enc" / "model.safetensors"
    plain.parent.mkdir()
    encrypted.parent.mkdir()
    values = {"w": np.ones((2, 2), np.float32)}
    st_np.save_file(values, str(plain))
    config = {"enc_key": pc.generate_master_key(), "sign_key": pc.generate_signing_key()}
    ct_np.save_file(values, encrypted, config=config)
    ct_vllm.check_encrypted([str(plain), str(encrypted)], pc.LoadOptions())
    ct_vllm.check_encrypted([str(encrypted)], pc.LoadOptions(require_encryption=True))
    with pytest.raises(NotEncryptedError):
        ct_vllm.check_encrypted([str(encrypted), str(plain)], pc.LoadOptions(require_encryption=True))
    settings = tmp_path / "settings.toml"  # a settings rule requiring encryption for one directory
    settings.write_text(f'key_dirs = []\n[[rule]]\npath = "{plain.parent}"\n')
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    with pytest.raises(NotEncryptedError):
        ct_vllm.check_encrypted([str(plain)], pc.LoadOptions())


# ---------------------------------------------------------------------------------------------- with vLLM


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if os.environ.get("PYCRYPTOTENSORS_SKIP_VLLM") == "1":
        pytest.skip("PYCRYPTOTENSORS_SKIP_VLLM=1")
    if not VLLM_PYTHON.is_file() or not (ROOT / ".venv-vllm" / ".pycryptotensors-vllm-setup").is_file():
        pytest.fail(
            "the vLLM venv .venv-vllm is missing or incomplete: run `bash scripts/setup-vllm-venv.sh` "
            "(or set PYCRYPTOTENSORS_SKIP_VLLM=1 to skip the vLLM tests)",
            pytrace=False,
        )
    return VLLM_PYTHON


@dataclass
class World:
    root: Path
    plain: Path
    encrypted: Path  # keys in a key directory
    via_service: Path  # names the key service
    master: Path
    publisher_pub: Path
    token: Path
    settings_none: Path
    settings_keys: Path
    settings_service: Path
    reference: list[list[int]]  # transformers' generate on the plain model
    server: Server


def build_model(directory: Path) -> list[list[int]]:
    """A tiny random Llama saved with save_pretrained; returns transformers' greedy tokens for PROMPTS."""
    import torch

    llama = tiny_llama(
        num_attention_heads=2,  # head size 32: vLLM's CPU attention has no kernel for 16
        num_key_value_heads=2,
        max_position_embeddings=128,
        dtype="float32",
    )
    llama.save_pretrained(directory)
    llama.generation_config.eos_token_id = None  # vLLM runs with ignore_eos: generate every token here too
    with torch.no_grad():
        outputs = [
            llama.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
            for p in PROMPTS
        ]
    return [out[0, len(p) :].tolist() for out, p in zip(outputs, PROMPTS, strict=True)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, vllm_python: Path) -> Any:
    root = tmp_path_factory.mktemp("vllm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        reference = build_model(root / "plain")
    keys = root / "keys"
    cli("keygen", "master", keys / "master.jwk", "--kid", "vllm-local")
    cli("keygen", "signing", root / "publisher.jwk", "--kid", "vllm-publisher")
    (keys / "publisher.pub.jwk").write_bytes((root / "publisher.pub.jwk").read_bytes())
    cli("keygen", "master", root / "service-master.jwk", "--kid", "vllm-service")
    signing = ["--signing-key", root / "publisher.jwk", "--quiet"]
    cli("encrypt", root / "plain", root / "enc", "--master-key", keys / "master.jwk", "--plain", "*norm*", *signing)

    server = Server(root / "ks-state").start()
    try:
        cli("encrypt", root / "plain", root / "enc-ks", "--master-key", root / "service-master.jwk",
            "--key-service", server.url, *signing)  # fmt: skip
        server.admin_cli("register", "--kid", "vllm-service", "--publisher-key", root / "publisher.pub.jwk",
                         "--master-key", root / "service-master.jwk")  # fmt: skip
        server.admin_cli("token", "create", PRINCIPAL, "--out", root / "consumer.token")
        server.admin_cli("grant", PRINCIPAL, "vllm-service")
        for directory in (root / "enc", root / "enc-ks"):  # every weight file really is encrypted
            assert all(transparent.is_crypto_file(f) for f in directory.glob("*.safetensors"))

        def settings(name: str, text: str) -> Path:
            (root / name).write_text(text)
            return root / name

        pub = root / "publisher.pub.jwk"
        yield World(
            root,
            root / "plain",
            root / "enc",
            root / "enc-ks",
            keys / "master.jwk",
            pub,
            root / "consumer.token",
            settings("none.toml", "key_dirs = []\n"),
            # keys from a key directory; the encrypted model pinned to its publisher and required encrypted
            settings("keys.toml", f'key_dirs = ["{keys}"]\n[[rule]]\npath = "{root / "enc"}"\nsigners = ["{pub}"]\n'),
            # only a token: the key service releases the data keys
            settings(
                "service.toml",
                "key_dirs = []\n"
                f'[key_service]\nallowed = ["{server.url}"]\ntoken_file = "{root / "consumer.token"}"\nretries = 0\n',
            ),
            reference,
            server,
        )
    finally:
        server.stop()


def run_vllm(python: Path, world: World, name: str, cases: list[dict[str, Any]]) -> tuple[int, dict[str, Any], str]:
    """Run the cases in one vLLM process; returns its exit status, the results by case name, and its output."""
    job = world.root / f"{name}.json"
    job.write_text(json.dumps({"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "cases": cases}))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CRYPTOTENSOR_KEYS", TOKEN_ENV, "PYCRYPTOTENSORS_TRANSPARENT", "VLLM_PLUGINS")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYCRYPTOTENSORS_CONFIG=str(world.settings_none),
    )
    run = subprocess.run(
        [str(python), str(RUNNER), str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=world.root,
        timeout=400,
        check=False,
    )
    (world.root / f"{name}.log").write_text(run.stdout)
    results: dict[str, Any] = {}
    name = ""
    for line in run.stdout.splitlines():
        if line.startswith("CASE "):
            name = line[len("CASE ") :]
            results[name] = {"output": ""}
        elif line.startswith("RESULT "):
            results[name].update(json.loads(line[len("RESULT ") :]))
        elif name:
            results[name]["output"] += line + "\n"
    return run.returncode, results, run.stdout


def assert_no_secrets(world: World, output: str) -> None:
    """vLLM logs its configuration: key files and the token file are named there, their contents never."""
    secrets = [world.token.read_text().strip(), json.loads(world.master.read_text())["k"]]
    assert not [s for s in secrets if s in output]


@pytest.fixture(scope="module")
def served(world: World, vllm_python: Path) -> dict[str, Any]:
    """One vLLM process, four engines: plain, default path, explicit load format, key service."""
    cases = [
        {"name": "plain", "model": str(world.plain)},
        {"name": "default", "model": str(world.encrypted), "env": {"PYCRYPTOTENSORS_CONFIG": str(world.settings_keys)}},
        {
            # the start-up hook off: the plugin alone makes vLLM's loader decrypt (never ciphertext as weights)
            "name": "explicit",
            "model": str(world.encrypted),
            "env": {"PYCRYPTOTENSORS_TRANSPARENT": "0"},
            "llm": {
                "load_format": "cryptotensors",
                "model_loader_extra_config": {
                    "keys": [str(world.master)],
                    "trusted_signers": [str(world.publisher_pub)],
                    "require_encryption": True,
                },
            },
        },
        {
            "name": "service",
            "model": str(world.via_service),
            "env": {"PYCRYPTOTENSORS_CONFIG": str(world.settings_service)},
        },
    ]
    code, results, output = run_vllm(vllm_python, world, "served", cases)
    assert code == 0 and all("tokens" in results.get(c["name"], {}) for c in cases), output[-6000:]
    assert_no_secrets(world, output)
    return results


def test_plain_model_under_vllm_matches_transformers(world: World, served: dict[str, Any]) -> None:
    assert served["plain"]["tokens"] == world.reference


def test_default_load_path_decrypts_with_keys_from_settings(world: World, served: dict[str, Any]) -> None:
    assert served["default"]["tokens"] == served["plain"]["tokens"] == world.reference


def test_explicit_load_format_with_keys_in_extra_config(world: World, served: dict[str, Any]) -> None:
    assert served["explicit"]["tokens"] == served["plain"]["tokens"] == world.reference


def test_keys_from_the_key_service(world: World, served: dict[str, Any]) -> None:
    assert served["service"]["tokens"] == served["plain"]["tokens"] == world.reference
    mine = [r for r in world.server.audit() if r.get("principal") == PRINCIPAL]
    assert mine and all(r["decision"] == "allow" for r in mine), mine


def test_refused_keys_stop_the_engine(world: World, served: dict[str, Any], vllm_python: Path) -> None:
    """A revoked token (explicit load format, key service) and no key at all (default path): vLLM fails to
    start and names our error; no tokens come out."""
    world.server.admin_cli("token", "revoke", PRINCIPAL)
    extra = {"key_service": {"allowed": [world.server.url], "token_file": str(world.token), "retries": 0}}
    cases = [
        {
            "name": "revoked",
            "model": str(world.via_service),
            "llm": {"load_format": "cryptotensors", "model_loader_extra_config": extra},
        },
        {"name": "no-key", "model": str(world.encrypted)},  # the settings name no key directory
    ]
    code, results, output = run_vllm(vllm_python, world, "refused", cases)
    assert code == 1 and set(results) == {"revoked", "no-key"}, output[-6000:]  # _vllm_run: 1 = a case failed
    for name, error in (("revoked", "KeyServiceUnauthorizedError"), ("no-key", "MissingKeyError")):
        assert "tokens" not in results[name], results[name]
        assert f"FAILED {name}:" in results[name]["output"], output[-6000:]
        assert f"pycryptotensors.errors.{error}" in results[name]["output"], results[name]["output"][-6000:]
    assert_no_secrets(world, output)
    last = [r for r in world.server.audit() if r.get("principal") in (PRINCIPAL, None)][-1]
    assert last["decision"] == "deny" and last["reason"].startswith("unauthorized"), last
