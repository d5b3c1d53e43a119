"""The ``pycryptotensors`` command, driven in subprocesses on a real (tiny, random) Hugging Face model.

The model is a 2-layer LlamaForCausalLM saved with ``save_pretrained(max_shard_size="100KB")``, so it has four
shards and a ``model.safetensors.index.json``. Every command runs as the installed ``pycryptotensors`` script with
the test's environment (an empty settings file, no ``CRYPTOTENSOR_KEYS``), and every output of every run is
checked for key material. Error runs must exit with the documented code and print exactly one line,
``pycryptotensors: error: ...``, with no traceback.

Exit codes (cli/app.py): 0 ok, 1 other (I/O), 2 usage, 3 malformed file, 4 integrity, 5 key, 6 policy.
"""

from __future__ import annotations

import argparse
import base64
import filecmp
import json
import os
import re
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch as st_torch
import torch

import pycryptotensors as pc
import pycryptotensors.torch as ct_torch
from _command import ERROR_PREFIX
from _models import tiny_llama
from helpers import assert_same_tensors, run_cli
from pycryptotensors.cli.app import build_parser
from pycryptotensors.keys.files import write_key_file

PROGRESS = re.compile(r"\|.*(?:\?|\d)\s*[kMGT]?B/s")  # a tqdm line: 'encrypt: 100%|####| 387k/387k [.., 20.7MB/s]'
EXPIRY_POLICY = 'package model\nallow if time.now_ns() < time.parse_rfc3339_ns("2099-01-01T00:00:00+00:00")\n'
DENY_POLICY = "package model\nallow := false\n"
INPUT_IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 127]])
SECRETS: set[str] = set()  # every secret (JWK 'k' / 'd') a test key holds; no command may print one


# ---------------------------------------------------------------------------------------------------- helpers


def secret_strings(path: Path) -> set[str]:
    """The base64 secrets of a key file as written, and the same bytes in the other base64 alphabet."""
    document = json.loads(path.read_text())
    found = set()
    for jwk in document.get("keys", [document]):
        for field in ("k", "d"):
            if field in jwk:
                value = jwk[field]
                raw = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4))
                found |= {value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return found


def cli(*args: Any, env: dict[str, str] | None = None, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """Run the command; no output of it may contain key material or a traceback."""
    result = run_cli(*args, env=env, umask=umask, timeout=120)
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr, f"key material printed by {args}"
    return result


def ok(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = cli(*args, **kwargs)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def fails(code: int, *args: Any, progress: bool = False, **kwargs: Any) -> str:
    """Run a command that must fail with ``code``; returns its one error line.

    stderr must be exactly one line ``pycryptotensors: error: ...``; with ``progress`` (a run whose progress
    bar is on), the lines of the progress bar may come before it.
    """
    result = cli(*args, **kwargs)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, (args, "no error message")
    assert result.stdout == "", (args, f"a failed run printed on stdout: {result.stdout!r}")
    error = lines[-1]
    assert error.startswith(ERROR_PREFIX), (args, result.stderr)
    before = lines[:-1]
    if progress:
        assert all(PROGRESS.search(line) for line in before), (args, result.stderr)
    else:
        assert not before, (args, f"stderr is not one line: {result.stderr!r}")
    assert len(error) > len(ERROR_PREFIX) + 5, (args, error)
    return error


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def data_area(path: Path) -> bytes:
    """A safetensors file's bytes after its header."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 + n :]


def tensor_offset(path: Path, name: str) -> int:
    """The absolute file offset of a tensor's first byte."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return 8 + n + header[name]["data_offsets"][0]


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def tmp_leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def load_plain(paths: Iterable[Path]) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        merged.update(st_torch.load_file(path))
    return merged


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Keys:
    master: Path
    master2: Path
    signer: Path
    signer_pub: Path
    signer2: Path
    signer2_pub: Path

    def jwk(self, which: str) -> dict[str, str]:
        return json.loads(getattr(self, which).read_text())


@dataclass(frozen=True)
class Model:
    directory: Path
    logits: torch.Tensor


@dataclass(frozen=True)
class Encrypted:
    directory: Path
    policy: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def session_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the session-wide runs: an empty settings file, no ambient keys (see conftest.py)."""
    settings = tmp_path_factory.mktemp("cli-settings") / "config.toml"
    settings.write_text("key_dirs = []\n")
    env = {k: v for k, v in os.environ.items() if k != "CRYPTOTENSOR_KEYS"}
    env.update(PYCRYPTOTENSORS_CONFIG=str(settings), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A tiny random Llama, saved sharded (4 shards of < 100 KB) with its index; and its logits."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        llama = tiny_llama()
        directory = tmp_path_factory.mktemp("llama") / "model"
        llama.save_pretrained(directory, max_shard_size="100KB")
        with torch.no_grad():
            logits = llama(INPUT_IDS).logits
    assert len(shards(directory)) > 1 and (directory / "model.safetensors.index.json").is_file()
    return Model(directory, logits)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("cli-keys")
    signer, signer2 = pc.generate_signing_key("publisher"), pc.generate_signing_key("publisher-2027")
    made = Keys(
        root / "master.jwk",
        root / "master2.jwk",
        root / "publisher.jwk",
        root / "publisher.pub.jwk",
        root / "publisher-2027.jwk",
        root / "publisher-2027.pub.jwk",
    )
    write_key_file(made.master, pc.generate_master_key(kid="master-1"))
    write_key_file(made.master2, pc.generate_master_key(kid="master-2"))
    write_key_file(made.signer, signer)
    write_key_file(made.signer_pub, signer.verify_key)
    write_key_file(made.signer2, signer2)
    write_key_file(made.signer2_pub, signer2.verify_key)
    for path in (made.master, made.master2, made.signer, made.signer2):
        SECRETS.update(secret_strings(path))
    return made


@pytest.fixture(scope="session")
def encrypted(model: Model, keys: Keys, session_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The model directory encrypted once, norms left plain, with an expiry policy (progress bar on)."""
    root = tmp_path_factory.mktemp("cli-encrypted")
    policy = root / "expires-2099.rego"
    policy.write_text(EXPIRY_POLICY)
    out = root / "model-enc"
    result = cli(
        "encrypt", model.directory, out, "--master-key", keys.master, "--signing-key", keys.signer,
        "--plain", "*norm*", "--policy", policy, env=session_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Encrypted(out, policy, result)


def trust(keys: Keys) -> list[Any]:
    return ["--key", keys.master, "--trust", keys.signer_pub]


# ---------------------------------------------------------------------------------------------------- help


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Every command and subcommand of the parser, so that a new one is covered as soon as it exists."""
    yield list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


HELP_COMMANDS = list(command_paths(build_parser()))
assert {"keygen", "encrypt", "decrypt", "rewrap", "inspect", "verify", "policy"} <= {c[0] for c in HELP_COMMANDS if c}
assert ["policy", "test"] in HELP_COMMANDS and ["policy", "explain"] in HELP_COMMANDS


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_exits_0_and_shows_an_example(command: list[str]) -> None:
    result = ok(*command, "--help")
    assert result.stdout.startswith("usage: pycryptotensors")
    # an example is a command line of this tool, indented, inside the help text
    subject = command[0] if command else r"\w+"
    assert re.search(rf"^\s+pycryptotensors {subject}\b", result.stdout, re.MULTILINE), result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode == 2 and "usage:" in result.stderr


# ---------------------------------------------------------------------------------------------------- keygen


def test_keygen(tmp_path: Path, keys: Keys) -> None:
    master, signer = tmp_path / "k" / "master.jwk", tmp_path / "k" / "acme.jwk"
    report = json_out(ok("keygen", "master", master, "--kid", "acme-2026", "--json", umask=0))
    assert report == {"kind": "master", "kid": "acme-2026", "alg": "aes256gcm", "private": str(master)}
    report = json_out(ok("keygen", "signing", signer, "--json", umask=0))
    public = tmp_path / "k" / "acme.pub.jwk"
    assert report["kind"] == "signing" and report["private"] == str(signer) and report["public"] == str(public)
    made = secret_strings(master) | secret_strings(signer)
    SECRETS.update(made)  # from here on, every run checks these too
    # private keys 0600 even under umask 0; the public key 0644
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    assert stat.S_IMODE(signer.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert "d" not in json.loads(public.read_text()) and "d" in json.loads(signer.read_text())
    assert isinstance(pc.parse_jwk(json.loads(master.read_text())), pc.MasterKey)
    # human output names the files, never the secret
    text = ok("keygen", "master", tmp_path / "k" / "other.jwk").stdout
    assert "other.jwk" in text and "0600" in text
    SECRETS.update(secret_strings(tmp_path / "k" / "other.jwk"))

    # no overwrite without --force (the key is unchanged); --force replaces it
    before = master.read_bytes(), signer.read_bytes(), public.read_bytes()
    assert "--force" in fails(1, "keygen", "master", master)
    assert "--force" in fails(1, "keygen", "signing", signer)
    public_only = tmp_path / "k" / "lone.pub.jwk"
    public_only.write_text("{}")  # a signing key pair is refused when only its public file exists
    fails(1, "keygen", "signing", tmp_path / "k" / "lone.jwk")
    assert not (tmp_path / "k" / "lone.jwk").exists()
    assert (master.read_bytes(), signer.read_bytes(), public.read_bytes()) == before
    ok("keygen", "master", master, "--force", "--json")
    SECRETS.update(secret_strings(master))
    assert master.read_bytes() != before[0] and stat.S_IMODE(master.stat().st_mode) == 0o600
    assert not tmp_leftovers(tmp_path)


def test_keygen_reference_dialect_loads_in_the_reference_library(tmp_path: Path, model: Model) -> None:
    cryptotensors = pytest.importorskip("cryptotensors")
    master, signer = tmp_path / "ref-master.jwk", tmp_path / "ref.jwk"
    ok("keygen", "master", master, "--dialect", "reference", "--kid", "ref-m")
    ok("keygen", "signing", signer, "--dialect", "reference", "--kid", "ref-s")
    SECRETS.update(secret_strings(master) | secret_strings(signer))
    m, s, p = (json.loads(path.read_text()) for path in (master, signer, tmp_path / "ref.pub.jwk"))
    # the reference's dialect: lowercase names, standard (padded) base64
    assert m["kty"] == "oct" and m["alg"] == "aes256gcm" and m["kid"] == "ref-m"
    assert len(base64.b64decode(m["k"], validate=True)) == 32
    assert s["kty"] == "okp" and s["alg"] == "ed25519" and s["kid"] == "ref-s"
    assert len(base64.b64decode(s["d"], validate=True)) == 32 and len(base64.b64decode(s["x"], validate=True)) == 32
    assert p == {k: v for k, v in s.items() if k != "d"}
    # a file encrypted with them opens in the reference library, configured with those JWKs as they are
    shard = shards(model.directory)[1]
    out = tmp_path / "ref.safetensors"
    ok("encrypt", shard, out, "--master-key", master, "--signing-key", signer, "--plain", "*norm*", "--quiet")
    expected = st_torch.load_file(shard)
    with cryptotensors.safe_open(str(out), "pt", config={"enc_key": m, "sign_key": p}) as f:
        assert_same_tensors(expected, {name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118


# ---------------------------------------------------------------------------------------------------- encrypt


def test_encrypt_model_directory(model: Model, keys: Keys, encrypted: Encrypted) -> None:
    out = encrypted.directory
    assert "encrypted 4 file(s)" in encrypted.result.stdout
    # stderr is a pipe here: no progress bar (on a terminal there is one: tests/test_cli_progress_log.py)
    assert not PROGRESS.search(encrypted.result.stderr), encrypted.result.stderr
    # the same files plus the signed manifest; everything but the shards is copied byte for byte (the index
    # stays valid)
    names = sorted(p.name for p in model.directory.iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "model.sig"])
    for name in names:
        if not name.endswith(".safetensors"):
            assert (out / name).read_bytes() == (model.directory / name).read_bytes(), name
    assert filecmp.cmp(out / "model.safetensors.index.json", model.directory / "model.safetensors.index.json", False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    plain_names = set()
    for shard in shards(out):
        info = json_out(ok("inspect", shard, "--json"))
        assert info["format"] == "cryptotensors", shard
        assert info["crypto"]["policy"]["local"].strip() == EXPIRY_POLICY.strip()
        assert not info["crypto"]["policy"]["local_is_default"]
        assert info["crypto"]["signer"]["kid"] == "publisher" and info["crypto"]["master_key"]["kid"] == "master-1"
        for tensor in info["tensors"]:
            assert tensor["encrypted"] == ("norm" not in tensor["name"]), tensor
            assert index["weight_map"][tensor["name"]] == shard.name
            if not tensor["encrypted"]:
                plain_names.add(tensor["name"])
        assert info["encrypted_tensors"] > 0
    assert plain_names == {n for n in index["weight_map"] if "norm" in n} and len(plain_names) == 5
    assert not tmp_leftovers(out)


def test_encrypt_rerun_over_existing_output_quiet_and_json(
    model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path
) -> None:
    out = tmp_path / "enc"
    shutil.copytree(encrypted.directory, out)
    key_args = ["--master-key", keys.master, "--signing-key", keys.signer]
    before = snapshot(out)  # an existing output is replaced only with --force (issue 9)
    assert "--force" in fails(1, "encrypt", model.directory, out, *key_args, "--quiet")
    assert snapshot(out) == before
    quiet = ok("encrypt", model.directory, out, *key_args, "--quiet", "--force")
    assert quiet.stderr == "" and quiet.stdout == ""  # -q: only errors, no summary line (issue 13)
    as_json = ok("encrypt", model.directory, out, *key_args, "--encrypt", "*proj*", "--json", "--force")
    assert as_json.stderr == ""
    report = json_out(as_json)
    assert [Path(f["target"]).name for f in report["files"]] == [p.name for p in shards(model.directory)]
    assert sum(f["tensors"] for f in report["files"]) == 21
    assert sum(f["encrypted"] for f in report["files"]) == 14  # 7 projections per layer
    info = json_out(ok("inspect", out / shards(out)[1].name, "--json"))
    assert all(t["encrypted"] == ("proj" in t["name"]) for t in info["tensors"])
    ok("verify", out, "--deep", *trust(keys))
    assert not tmp_leftovers(out)


def test_encrypt_single_file_variants(model: Model, keys: Keys, tmp_path: Path) -> None:
    shard = shards(model.directory)[1]  # norms and three 32 KiB projections
    out = tmp_path / "variants"
    out.mkdir()
    key_args = ["--master-key", keys.master, "--signing-key", keys.signer, "--quiet"]
    ok("encrypt", shard, out, *key_args)  # into a directory: keeps the file name
    ok("encrypt", shard, out / "chacha.safetensors", *key_args, "--algorithm", "chacha20poly1305")
    ok("encrypt", shard, out / "v1.safetensors", *key_args, "--format-version", "1")
    ok("encrypt", shard, out / "chunks.safetensors", *key_args, "--chunk-size", "4096", "--plain", "*norm*")
    ok("encrypt", shard, out / "nointegrity.safetensors", *key_args, "--plain", "*norm*", "--no-integrity")

    def info(name: str) -> dict[str, Any]:
        return json_out(ok("inspect", out / name, "--json"))

    default = info(shard.name)
    assert default["crypto"]["algorithm"] == "aes256gcm" and default["crypto"]["version"] == "2"
    assert default["encrypted_tensors"] == len(default["tensors"]) == 5
    assert default["crypto"]["policy"]["local_is_default"]
    assert info("chacha.safetensors")["crypto"]["algorithm"] == "chacha20poly1305"
    v1 = info("v1.safetensors")
    assert v1["crypto"]["version"] == "1" and v1["crypto"]["chunk_size"] is None
    assert all("chunks" not in t for t in v1["tensors"])
    chunked = info("chunks.safetensors")
    assert chunked["crypto"]["chunk_size"] == 4096
    assert {t["chunks"] for t in chunked["tensors"] if t["encrypted"]} == {32768 // 4096}
    assert chunked["crypto"]["extensions"]["integrity"]["tensors"] == 2  # the two plain norms
    assert "integrity" in ok("inspect", out / "chunks.safetensors").stdout
    bare = info("nointegrity.safetensors")
    assert bare["crypto"]["extensions"] == {} and bare["encrypted_tensors"] == 3
    assert "extension integrity" not in ok("inspect", out / "nointegrity.safetensors").stdout

    # every variant verifies deeply and decrypts to the original tensors
    report = json_out(ok("verify", out, "--deep", *trust(keys), "--json"))
    nbytes = sum(t["nbytes"] for t in default["tensors"])
    assert len(report["files"]) == 5 and all(f["bytes_authenticated"] == nbytes for f in report["files"])
    plain = tmp_path / "plain"
    ok("decrypt", out, plain, *trust(keys), "--quiet")
    expected = st_torch.load_file(shard)
    for name in ("chacha", "v1", "chunks", "nointegrity"):
        assert_same_tensors(expected, st_torch.load_file(plain / f"{name}.safetensors"))
    assert_same_tensors(expected, st_torch.load_file(plain / shard.name))


def test_encrypt_errors(model: Model, keys: Keys, tmp_path: Path) -> None:
    shard = shards(model.directory)[0]
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.safetensors"
    key_args = ["--master-key", keys.master, "--signing-key", keys.signer, "--quiet"]
    bad_policy = tmp_path / "bad.rego"
    bad_policy.write_text("package model\nallow := \n")
    fails(2, "encrypt", shard, target, *key_args, "--policy", bad_policy)
    fails(2, "encrypt", shard, target, *key_args, "--chunk-size", "0")
    # keys swapped: a public key or a master key where a private signing key is needed, and vice versa
    fails(2, "encrypt", shard, target, "--master-key", keys.signer, "--signing-key", keys.signer, "--quiet")
    fails(2, "encrypt", shard, target, "--master-key", keys.master, "--signing-key", keys.signer_pub, "--quiet")
    fails(5, "encrypt", shard, target, "--master-key", tmp_path / "missing.jwk", "--signing-key", keys.signer)
    short = tmp_path / "short.jwk"  # a malformed key: its (wrong-sized) secret is not echoed
    short.write_text(json.dumps({"kty": "oct", "alg": "A256GCM", "k": "c2l4dGVlbi1ieXRlLWtleQ"}))
    SECRETS.add("c2l4dGVlbi1ieXRlLWtleQ")
    fails(5, "encrypt", shard, target, "--master-key", short, "--signing-key", keys.signer)
    fails(1, "encrypt", tmp_path / "nope.safetensors", target, *key_args)
    fails(1, "encrypt", model.directory, model.directory / "enc", *key_args)  # output inside the input
    assert not (model.directory / "enc").exists()
    not_safetensors = tmp_path / "junk.safetensors"
    not_safetensors.write_bytes(b"\xff" * 64)
    fails(3, "encrypt", not_safetensors, target, *key_args)
    assert list(out.iterdir()) == []  # no output, no temporary file


# ---------------------------------------------------------------------------------------------------- decrypt and load


def test_decrypt_round_trip_loads_in_transformers(
    model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path
) -> None:
    from transformers import LlamaForCausalLM

    plain = tmp_path / "decrypted"
    result = ok("decrypt", encrypted.directory, plain, *trust(keys))
    assert not PROGRESS.search(result.stderr) and "decrypted 4 file(s)" in result.stdout  # a pipe: no bar
    for name in sorted(p.name for p in model.directory.iterdir()):
        if not name.endswith(".safetensors"):
            assert (plain / name).read_bytes() == (model.directory / name).read_bytes(), name
    originals = shards(model.directory)
    assert [p.name for p in shards(plain)] == [p.name for p in originals]
    for original in originals:  # shard by shard: same tensors, same metadata
        assert_same_tensors(st_torch.load_file(original), st_torch.load_file(plain / original.name))
        with safetensors.safe_open(plain / original.name, "pt") as f, safetensors.safe_open(original, "pt") as g:
            assert f.metadata() == g.metadata()
    assert not tmp_leftovers(plain)

    loaded = LlamaForCausalLM.from_pretrained(plain).eval()
    with torch.no_grad():
        assert torch.equal(loaded(INPUT_IDS).logits, model.logits)

    # the encrypted shards load directly too, with the master key and only the pinned publisher's public key
    config = {
        "enc_key": keys.jwk("master"),
        "sign_key": keys.jwk("signer_pub"),
        "trusted_signers": [keys.jwk("signer_pub")],
    }
    state: dict[str, torch.Tensor] = {}
    for shard in shards(encrypted.directory):
        state.update(ct_torch.load_file(shard, config=config))
    assert_same_tensors(load_plain(originals), state)
    assert_same_tensors({k: v for k, v in loaded.state_dict().items() if k in state}, state)


def test_decrypt_errors_leave_no_output(model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # wrong master key: exit 5 and no shard written
    fails(5, "decrypt", encrypted.directory, out, "--key", keys.master2, "--trust", keys.signer_pub, "--quiet")
    assert shards(out) == [] and not tmp_leftovers(out)
    # the same, progress bar on: it may have drawn its bar, then the one error line
    fails(5, "decrypt", encrypted.directory, out, "--key", keys.master2, "--trust", keys.signer_pub, progress=True)
    # no key at all, the wrong publisher pinned, a plain file
    fails(5, "decrypt", encrypted.directory, out, "--trust", keys.signer_pub, "--quiet")
    fails(4, "decrypt", encrypted.directory, out, "--key", keys.master, "--trust", keys.signer2_pub, "--quiet")
    fails(4, "decrypt", shards(model.directory)[0], out / "p.safetensors", *trust(keys), "--quiet")
    fails(2, "decrypt", encrypted.directory, out, "--key", keys.master, "--trust", keys.master, "--quiet")
    assert shards(out) == [] and not tmp_leftovers(out)

    # a policy that denies: exit 6, and nothing is written (neither the file nor a temporary one)
    deny = tmp_path / "deny.rego"
    deny.write_text(DENY_POLICY)
    denied = tmp_path / "denied.safetensors"
    shard = shards(model.directory)[0]
    ok("encrypt", shard, denied, "--master-key", keys.master, "--signing-key", keys.signer, "--policy", deny, "--quiet")
    target_dir = tmp_path / "plain"
    target_dir.mkdir()
    error = fails(6, "decrypt", denied, target_dir / "x.safetensors", *trust(keys), "--quiet")
    assert "polic" in error.lower()
    fails(6, "decrypt", denied, target_dir, *trust(keys), "--quiet")
    assert list(target_dir.iterdir()) == []
    # the policy guards loading, not checking: verify still authenticates the file
    ok("verify", denied, "--deep", *trust(keys))
    assert not tmp_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------- inspect, verify


def test_inspect_plain_and_encrypted_without_keys(model: Model, encrypted: Encrypted) -> None:
    shard = shards(model.directory)[1]
    text = ok("inspect", shard).stdout
    assert "safetensors" in text and "0 encrypted" in text and "model.layers.0.mlp.up_proj.weight" in text
    assert "encrypted\n" not in text + "\n" and "version" not in text
    info = json_out(ok("inspect", shard, "--json"))
    assert info["format"] == "safetensors" and info["crypto"] is None and info["metadata"] == {"format": "pt"}
    assert [t["name"] for t in info["tensors"]] == sorted(st_torch.load_file(shard))

    enc = encrypted.directory / shard.name
    text = ok("inspect", enc).stdout
    assert "cryptotensors" in text and "3 encrypted" in text and "aes256gcm" in text and "master-1" in text
    assert "publisher" in text and "local policy: custom" in text and "extension integrity" in text
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines() if line.startswith("  model.")}
    assert rows == {t["name"]: "plain" if "norm" in t["name"] else "encrypted" for t in info["tensors"]}
    info = json_out(ok("inspect", enc, "--json"))
    assert info["size"] == enc.stat().st_size and info["metadata"] == {"format": "pt"}
    assert [(t["name"], t["dtype"], t["shape"]) for t in info["tensors"]] == [
        (t["name"], t["dtype"], t["shape"]) for t in json_out(ok("inspect", shard, "--json"))["tensors"]
    ]
    fails(1, "inspect", encrypted.directory / "missing.safetensors")


def test_verify(model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path) -> None:
    enc = encrypted.directory
    total = json.loads((model.directory / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    # signature only, with the publisher's public key pinned: a directory and a single file
    assert "verified 4 file(s)" in ok("verify", enc, "--trust", keys.signer_pub).stdout
    ok("verify", shards(enc)[0], "--trust", keys.signer_pub)
    # deep: every tag and digest, with the master key
    report = json_out(ok("verify", enc, "--deep", *trust(keys), "--json"))
    assert len(report["files"]) == 4
    assert all(f["signature"] == "valid" and f["signer_kid"] == "publisher" for f in report["files"])
    assert sum(f["bytes_authenticated"] for f in report["files"]) == total
    # deep without the master key; the wrong publisher pinned; a master key given as publisher
    assert "master-1" in fails(5, "verify", enc, "--deep", "--trust", keys.signer_pub)
    fails(4, "verify", enc, "--trust", keys.signer2_pub)
    fails(4, "verify", enc, "--deep", "--key", keys.master, "--trust", keys.signer2_pub)
    fails(2, "verify", enc, "--trust", keys.master)
    broken = tmp_path / "broken.jwk"
    broken.write_text("{not json")
    fails(5, "verify", enc, "--key", broken, "--trust", keys.signer_pub)
    # a plain file: nothing to verify, and refused outright with --require-encryption
    plain = shards(model.directory)[0]
    fails(4, "verify", plain, "--trust", keys.signer_pub)
    assert "encrypt" in fails(4, "verify", plain, "--trust", keys.signer_pub, "--require-encryption")
    fails(1, "verify", tmp_path / "missing.safetensors", "--trust", keys.signer_pub)


def test_verify_detects_tampering_and_truncation(keys: Keys, encrypted: Encrypted, tmp_path: Path) -> None:
    work = tmp_path / "enc"
    shutil.copytree(encrypted.directory, work)
    target = work / shards(work)[1].name
    # one bit in an encrypted tensor's ciphertext: the signature still holds, the deep check fails
    flip_byte(target, tensor_offset(target, "model.layers.0.mlp.up_proj.weight") + 1000)
    ok("verify", work, "--trust", keys.signer_pub)
    error = fails(4, "verify", work, "--deep", *trust(keys))
    assert re.search(r"authenticat|modified|tamper|digest", error), error
    fails(4, "decrypt", work, tmp_path / "dec", *trust(keys), "--quiet")
    assert not (tmp_path / "dec" / target.name).exists() and not tmp_leftovers(tmp_path)  # earlier shards: done
    # one bit in an unencrypted (signed) norm: caught by its digest
    shutil.copy(encrypted.directory / target.name, target)
    ok("verify", work, "--deep", *trust(keys))
    flip_byte(target, tensor_offset(target, "model.layers.0.input_layernorm.weight") + 7)
    error = fails(4, "verify", target, "--deep", *trust(keys))
    assert re.search(r"authenticat|modified|tamper|digest", error), error
    # one byte of signed metadata in the header: the signature no longer holds
    blob = (encrypted.directory / target.name).read_bytes()
    assert blob.count(b'"format":"pt"') == 1
    target.write_bytes(blob.replace(b'"format":"pt"', b'"format":"pu"'))
    assert "signature" in fails(4, "verify", target, "--trust", keys.signer_pub)
    # a renamed tensor: the crypto header no longer matches the tensors (malformed)
    renamed = bytearray(blob)
    renamed[blob.index(b"model.layers.0.mlp.up_proj.weight") + 6] ^= 0x01
    target.write_bytes(bytes(renamed))
    fails(3, "verify", target, "--trust", keys.signer_pub)
    # truncated: malformed, for verify and inspect alike
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((encrypted.directory / target.name).read_bytes()[:50_000])
    assert "truncated" in fails(3, "verify", truncated, "--trust", keys.signer_pub)
    fails(3, "verify", truncated, "--deep", *trust(keys))
    fails(3, "inspect", truncated)
    fails(3, "decrypt", truncated, tmp_path / "t.safetensors", *trust(keys), "--quiet")
    assert not (tmp_path / "t.safetensors").exists() and not tmp_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------- rewrap


def test_rewrap_in_place(model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path) -> None:
    work = tmp_path / "enc"
    shutil.copytree(encrypted.directory, work)
    before = {p.name: data_area(p) for p in shards(work)}
    report = json_out(
        ok("rewrap", work, *trust(keys), "--new-master-key", keys.master2, "--signing-key", keys.signer2, "--json")
    )
    assert report["files"] == 4 and report["data_keys_rewrapped"] == 16
    assert report["new_master_kid"] == "master-2" and report["new_signer_kid"] == "publisher-2027"
    assert {p.name: data_area(p) for p in shards(work)} == before  # the data area is not touched
    assert not tmp_leftovers(work)
    info = json_out(ok("inspect", shards(work)[0], "--json"))
    assert info["crypto"]["master_key"]["kid"] == "master-2" and info["crypto"]["signer"]["kid"] == "publisher-2027"
    # the new master key opens it, the old one no longer does; only the new publisher is accepted
    ok("verify", work, "--deep", "--key", keys.master2, "--trust", keys.signer2_pub)
    fails(5, "verify", work, "--deep", "--key", keys.master, "--trust", keys.signer2_pub)
    fails(5, "decrypt", work, tmp_path / "old", "--key", keys.master, "--trust", keys.signer2_pub, "--quiet")
    fails(4, "verify", work, "--trust", keys.signer_pub)
    # rotating back needs the current keys: the old ones are refused
    back = ["--new-master-key", keys.master, "--signing-key", keys.signer]
    fails(5, "rewrap", work, "--key", keys.master, "--trust", keys.signer2_pub, *back)
    fails(4, "rewrap", work, "--key", keys.master2, "--trust", keys.signer_pub, *back)
    fails(2, "rewrap", work, "--key", keys.master2, "--trust", keys.signer2_pub, "--new-master-key", keys.master)
    assert {p.name: data_area(p) for p in shards(work)} == before and not tmp_leftovers(tmp_path)
    plain = tmp_path / "plain"
    ok("decrypt", work, plain, "--key", keys.master2, "--trust", keys.signer2_pub, "--quiet")
    assert_same_tensors(load_plain(shards(model.directory)), load_plain(shards(plain)))


def test_rewrap_into_another_directory(model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path) -> None:
    source = snapshot(encrypted.directory)
    out = tmp_path / "rotated"
    ok("rewrap", encrypted.directory, out, *trust(keys), "--new-master-key", keys.master2, "--signing-key", keys.signer)
    assert snapshot(encrypted.directory) == source  # the input is untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in encrypted.directory.iterdir())
    for shard in shards(encrypted.directory):
        assert data_area(out / shard.name) == data_area(shard)
    for name in ("config.json", "model.safetensors.index.json"):
        assert (out / name).read_bytes() == (encrypted.directory / name).read_bytes()
    ok("verify", out, "--deep", "--key", keys.master2, "--trust", keys.signer_pub)
    fails(5, "verify", out, "--deep", "--key", keys.master, "--trust", keys.signer_pub)
    plain = tmp_path / "plain"
    ok("decrypt", out, plain, "--key", keys.master2, "--trust", keys.signer_pub, "--quiet")
    assert_same_tensors(load_plain(shards(model.directory)), load_plain(shards(plain)))

    # a new signer only (the master key is unchanged), one file into a new file name
    single = tmp_path / "resigned.safetensors"
    shard = shards(encrypted.directory)[2]
    report = json_out(ok("rewrap", shard, single, "--trust", keys.signer_pub, "--signing-key", keys.signer2, "--json"))
    assert report["data_keys_rewrapped"] == 0 and report["new_master_kid"] is None
    assert data_area(single) == data_area(shard)
    ok("verify", single, "--deep", "--key", keys.master, "--trust", keys.signer2_pub)
    fails(4, "verify", single, "--trust", keys.signer_pub)

    # nothing to do, a plain file, a missing input
    before = snapshot(encrypted.directory)
    assert "nothing to do" in fails(2, "rewrap", encrypted.directory, *trust(keys))
    fails(2, "rewrap", encrypted.directory, tmp_path / "x", *trust(keys))
    fails(4, "rewrap", shards(model.directory)[0], tmp_path / "p.safetensors", *trust(keys),
          "--signing-key", keys.signer2)  # fmt: skip
    assert snapshot(encrypted.directory) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "p.safetensors").exists()
    assert not tmp_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------- policy


def test_policy_test_and_explain(model: Model, keys: Keys, encrypted: Encrypted, tmp_path: Path) -> None:
    allow, deny = tmp_path / "allow.rego", tmp_path / "deny.rego"
    allow.write_text("package model\nallow := true\n")
    deny.write_text(DENY_POLICY)
    result = ok("policy", "test", allow)
    assert result.stdout.startswith("allowed") and result.stderr == ""
    result = cli("policy", "test", deny)
    assert result.returncode == 6 and result.stdout.startswith("denied") and result.stderr == ""

    # --input: the policy sees exactly that document
    user = tmp_path / "user.rego"
    user.write_text('package model\ndefault allow := false\nallow if input.user.name == "alice"\n')
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    alice.write_text(json.dumps({"user": {"name": "alice"}}))
    bob.write_text(json.dumps({"user": {"name": "bob"}}))
    report = json_out(ok("policy", "test", user, "--input", alice, "--json"))
    assert report["allowed"] is True and report["input"] == {"user": {"name": "alice"}}
    result = cli("policy", "test", user, "--input", bob, "--json")
    assert result.returncode == 6 and json_out(result)["allowed"] is False

    # --claims: added to this machine's input document
    team = tmp_path / "team.rego"
    team.write_text('package model\ndefault allow := false\nallow if input.claims.team == "research"\n')
    report = json_out(ok("policy", "test", team, "--claims", '{"team": "research"}', "--json"))
    assert report["input"]["claims"] == {"team": "research"} and {"time", "host", "user", "runtime"} <= set(
        report["input"]
    )
    assert cli("policy", "test", team, "--claims", '{"team": "sales"}').returncode == 6
    assert cli("policy", "test", team).returncode == 6

    # explain a file's own policy: verified first (no master key needed), or --unverified, said on every line
    report = json_out(ok("policy", "explain", shards(encrypted.directory)[0], "--trust", keys.signer_pub, "--json"))
    assert report["allowed"] is True and "time" in report["input"]
    fails(5, "policy", "explain", shards(encrypted.directory)[0])  # no publisher key: nothing is evaluated
    result = ok("policy", "explain", shards(encrypted.directory)[0], "--unverified")
    assert all(line.startswith("UNVERIFIED") for line in result.stdout.splitlines())
    denied = tmp_path / "denied.safetensors"
    ok("encrypt", shards(model.directory)[0], denied, "--master-key", keys.master, "--signing-key", keys.signer,
       "--policy", deny, "--quiet")  # fmt: skip
    result = cli("policy", "explain", denied, "--trust", keys.signer_pub)
    assert result.returncode == 6 and result.stdout.startswith("denied")
    assert "no policy" in ok("policy", "explain", shards(model.directory)[0]).stdout

    # errors: a policy that does not compile, a missing file, input that is not JSON
    broken = tmp_path / "broken.rego"
    broken.write_text("package model\nallow if {\n")
    fails(2, "policy", "test", broken)
    fails(1, "policy", "test", tmp_path / "missing.rego")
    not_json = tmp_path / "input.json"
    not_json.write_text("{oops")
    fails(1, "policy", "test", allow, "--input", not_json)
    fails(1, "policy", "test", allow, "--claims", "{oops")
    fails(3, "policy", "explain", tmp_path / "user.rego")


# ---------------------------------------------------------------------------------------------------- atomicity


def test_interrupted_directory_run_is_completed_by_a_rerun(model: Model, keys: Keys, tmp_path: Path) -> None:
    """A run that fails on its third shard leaves nothing (issue 9: not even the finished shards, nor a
    temporary file); a rerun completes."""
    src = tmp_path / "model"
    shutil.copytree(model.directory, src)
    third = shards(src)[2]
    good = third.read_bytes()
    third.write_bytes(good[:5000])  # truncated: the run fails there
    (src / f".{third.name}.1234.tmp").write_bytes(b"left by an interrupted run")  # ignored, never copied
    out = tmp_path / "enc"
    key_args = ["--master-key", keys.master, "--signing-key", keys.signer]
    fails(3, "encrypt", src, out, *key_args, "--quiet")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder
    third.write_bytes(good)
    ok("encrypt", src, out, *key_args, "--quiet")
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in model.directory.iterdir()), "model.sig"])
    assert not tmp_leftovers(out)
    ok("verify", out, "--deep", *trust(keys))
    plain = tmp_path / "plain"
    ok("decrypt", out, plain, *trust(keys), "--quiet")
    assert_same_tensors(load_plain(shards(model.directory)), load_plain(shards(plain)))
