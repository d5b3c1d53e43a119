"""CLI conventions of issue 13 §4 that are not about parsing: progress bars, the key-lookup log, settings found
through platformdirs (XDG) with a warning for private key files others can read, and ``inspect`` of a folder.

Everything runs on real files: a small two-shard model encrypted by the real command, real keys written by
``keygen`` (0600), a real terminal (a pseudo-terminal from :mod:`pty`) for the progress bars, and a real key
service for the provider's log lines. No output may hold key material.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _command import CLI
from _keyservice import Server, publish
from helpers import run_cli
from pycryptotensors import settings as settings_module
from pycryptotensors.keys.files import KeyFilePermissionWarning, read_key_dir, write_key_file

PROGRESS = re.compile(r"\d+%\|")  # tqdm's bar: 'verify: 100%|#####| 19.4k/19.4k [00:00<00:00, 1.2MB/s]'
LOCAL_POLICY = 'package model\nallow if time.now_ns() < time.parse_rfc3339_ns("2099-01-01T00:00:00Z")\n'
REMOTE_POLICY = 'package model\nallow if input.claims.team == "remote-marker-team"\n'
REPR = re.compile(r"\bNone\b|\{'|\[\d|CryptoHeader\(|KeySlot\(|Settings\(")
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class World:
    root: Path
    plain: Path  # a plain two-shard model folder
    encrypted: Path  # it, encrypted and signed (model.sig)
    master: Path
    master2: Path
    signer: Path
    signer_pub: Path
    env: dict[str, str]
    secrets: frozenset[str]  # every key's k / d: base64url, standard base64, hex
    raw: frozenset[bytes]  # and the raw bytes


def _secrets(path: Path) -> tuple[set[str], set[bytes]]:
    document = json.loads(path.read_text())
    strings, raw = set(), set()
    for jwk in document.get("keys", [document]):
        for field in ("k", "d"):
            if field in jwk:
                value = jwk[field]
                data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
                raw.add(data)
                strings |= {value, base64.b64encode(data).decode(), data.hex()}
    return strings, raw


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("progress-log")
    settings = root / "settings.toml"
    settings.write_text("key_dirs = []\n")
    drop = ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_LOG", "PYCRYPTOTENSORS_NO_PROGRESS", "XDG_CONFIG_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYCRYPTOTENSORS_CONFIG=str(settings), HOME=str(root / "home"), COLUMNS="120")
    plain = root / "plain"
    plain.mkdir()
    rng = np.random.default_rng(0)
    first = {"a.weight": rng.standard_normal((256, 256)).astype(np.float32), "a.norm": np.ones(8, np.float32)}
    save_file(first, str(plain / SHARDS[0]), metadata={"format": "pt"})
    save_file({"b.weight": rng.standard_normal((64, 32)).astype(np.float32)}, str(plain / SHARDS[1]))
    (plain / "config.json").write_text("{}")
    keys = root / "keys"
    for kind, name, kid in (
        ("master", "master.jwk", "mk-conv"),
        ("master", "master2.jwk", "mk-conv-2"),
        ("signing", "signer.jwk", "pub-conv"),
    ):
        run_cli("keygen", kind, keys / name, "--kid", kid, check=True, env=env)
    policies = root / "policies"
    policies.mkdir()
    (policies / "local.rego").write_text(LOCAL_POLICY)
    (policies / "remote.rego").write_text(REMOTE_POLICY)
    encrypted = root / "encrypted"
    run_cli(
        "encrypt", plain, encrypted, "--master-key", keys / "master.jwk", "--signing-key", keys / "signer.jwk",
        "--plain", "*norm*", "--policy", policies / "local.rego", "--remote-policy", policies / "remote.rego",
        check=True, env=env,
    )  # fmt: skip
    strings: set[str] = set()
    raw: set[bytes] = set()
    for name in ("master.jwk", "master2.jwk", "signer.jwk"):
        s, r = _secrets(keys / name)
        strings |= s
        raw |= r
    return World(
        root, plain, encrypted, keys / "master.jwk", keys / "master2.jwk", keys / "signer.jwk",
        keys / "signer.pub.jwk", env, frozenset(strings), frozenset(raw),
    )  # fmt: skip


def no_key_material(world: World, *outputs: str | bytes) -> None:
    for output in outputs:
        data = output if isinstance(output, bytes) else output.encode()
        for secret in world.secrets:
            assert secret.encode() not in data, "key material in the output"
        for raw in world.raw:
            assert raw not in data, "raw key bytes in the output"


def on_terminal(args: list[Any], env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal (as in an interactive shell); stdout is a pipe.
    Returns (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size, 24x120
    process = subprocess.Popen(
        [*CLI, *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the command ended and closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, stdout, shown.decode(errors="replace")


def fresh(world: World, tmp_path: Path, name: str = "work") -> Path:
    copy = tmp_path / name
    shutil.copytree(world.encrypted, copy)
    return copy


def long_commands(world: World, tmp_path: Path) -> dict[str, list[Any]]:
    """Every long command, with a fresh output each."""
    keys = ["--key", world.master, "--trust", world.signer_pub]
    signer = ["--signing-key", world.signer]
    return {
        "encrypt": ["encrypt", world.plain, tmp_path / "enc", "--master-key", world.master, *signer],
        "decrypt": ["decrypt", world.encrypted, tmp_path / "dec", *keys],
        "verify": ["verify", "--deep", world.encrypted, *keys],
        "rewrap": ["rewrap", fresh(world, tmp_path), *keys, "--new-master-key", world.master2, *signer],
    }


COMMANDS = ["encrypt", "decrypt", "verify", "rewrap"]


# ---------------------------------------------------------------------------------------------------- progress


@pytest.mark.parametrize("command", COMMANDS)
def test_progress_bar_on_a_terminal(world: World, tmp_path: Path, command: str) -> None:
    code, stdout, shown = on_terminal(long_commands(world, tmp_path)[command], world.env)
    assert code == 0, shown
    assert PROGRESS.search(shown) and f"{command}: 100%|" in shown, shown
    no_key_material(world, stdout, shown)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_progress_bar_when_stderr_is_not_a_terminal(world: World, tmp_path: Path, command: str) -> None:
    result = run_cli(*long_commands(world, tmp_path)[command], env=world.env)
    assert result.returncode == 0, result.stderr
    assert not PROGRESS.search(result.stderr) and "\r" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("off", ["env", "quiet", "json"])
def test_no_progress_bar_on_a_terminal_when_turned_off(world: World, tmp_path: Path, command: str, off: str) -> None:
    args = long_commands(world, tmp_path)[command]
    env = dict(world.env)
    if off == "env":
        env["PYCRYPTOTENSORS_NO_PROGRESS"] = "1"
    elif off == "quiet":
        args = [*args, "-q"]
    else:
        args = [*args, "--json"]
    code, _, shown = on_terminal(args, env)
    assert code == 0, shown
    assert not PROGRESS.search(shown), shown


def test_progress_env_value_zero_keeps_the_bar(world: World, tmp_path: Path) -> None:
    env = {**world.env, "PYCRYPTOTENSORS_NO_PROGRESS": "0"}
    code, _, shown = on_terminal(long_commands(world, tmp_path)["verify"], env)
    assert code == 0 and PROGRESS.search(shown), shown


def test_one_rule_for_every_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """show_progress is the single decision: a terminal, no env var, no -q, no --json."""
    import argparse
    import io

    from pycryptotensors._log import progress_allowed, set_progress
    from pycryptotensors.cli.common import show_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("PYCRYPTOTENSORS_NO_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress(argparse.Namespace(quiet=False, json=False))
    assert not show_progress(argparse.Namespace(quiet=True, json=False))
    assert not show_progress(argparse.Namespace(quiet=False, json=True))
    monkeypatch.setenv("PYCRYPTOTENSORS_NO_PROGRESS", "yes")
    assert not show_progress(argparse.Namespace(quiet=False, json=False))
    monkeypatch.delenv("PYCRYPTOTENSORS_NO_PROGRESS")
    set_progress(False)  # what the command line does for -q / --json: the library's bars (remote reads) obey
    try:
        assert not progress_allowed() and not show_progress(argparse.Namespace(quiet=False, json=False))
    finally:
        set_progress(True)
    assert progress_allowed()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not show_progress(argparse.Namespace(quiet=False, json=False)) and not progress_allowed()


# ---------------------------------------------------------------------------------------------------- the key log


def test_debug_log_names_kid_and_path_never_key_material(world: World, tmp_path: Path) -> None:
    key_dir = tmp_path / "key-dir"
    key_dir.mkdir()
    shutil.copy2(world.master, key_dir / "master.jwk")
    os.chmod(key_dir / "master.jwk", 0o600)
    settings = tmp_path / "settings.toml"
    settings.write_text(f"key_dirs = [{json.dumps(str(key_dir))}]\n")
    env = {**world.env, "PYCRYPTOTENSORS_CONFIG": str(settings), "PYCRYPTOTENSORS_LOG": "debug"}
    result = subprocess.run(
        [*CLI, "verify", "--deep", str(world.encrypted), "--trust", str(world.signer_pub)],
        capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "DEBUG" in stderr and "mk-conv" in stderr and "pub-conv" in stderr
    found = [line for line in stderr.splitlines() if "master key for kid 'mk-conv': found" in line]
    assert found and str(key_dir / "master.jwk") in found[0], stderr
    assert f"key directories [{key_dir}]" in stderr
    assert str(world.signer_pub) in stderr  # the --trust file, read
    no_key_material(world, result.stdout, result.stderr)

    # rewrap reads the private signing key (d) and two master keys (k): none of them is logged
    work = fresh(world, tmp_path, "rewrap")
    result = subprocess.run(
        [*CLI, "rewrap", str(work), "--key", str(world.master), "--trust", str(world.signer_pub),
         "--new-master-key", str(world.master2), "--signing-key", str(world.signer)],
        capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "found mk-conv (master) in code (config= / --key)" in result.stderr.decode()
    no_key_material(world, result.stdout, result.stderr)


def test_log_levels_and_off_by_default(world: World) -> None:
    args = ["verify", "--deep", world.encrypted, "--key", world.master, "--trust", world.signer_pub]
    silent = run_cli(*args, env=world.env)
    assert silent.returncode == 0 and silent.stderr == "", silent.stderr
    info = run_cli(*args, env={**world.env, "PYCRYPTOTENSORS_LOG": "info"})
    assert info.returncode == 0 and "INFO: master key for kid 'mk-conv': found" in info.stderr
    assert "DEBUG" not in info.stderr
    warning = run_cli(*args, env={**world.env, "PYCRYPTOTENSORS_LOG": "WARNING"})
    assert warning.returncode == 0 and "INFO" not in warning.stderr and "DEBUG" not in warning.stderr
    bad = run_cli(*args, env={**world.env, "PYCRYPTOTENSORS_LOG": "loud"})
    assert bad.returncode == 0 and "PYCRYPTOTENSORS_LOG='loud'" in bad.stderr  # said, and ignored


def test_library_adds_no_handler_unless_asked(world: World) -> None:
    """Library etiquette: importing the package configures no logging; the env var adds one stderr handler."""
    probe = (
        "import logging, pycryptotensors.keys.sources; log = logging.getLogger('pycryptotensors');"
        "print(len(log.handlers), log.level)"
    )
    env = dict(world.env)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["0", "0"]
    env["PYCRYPTOTENSORS_LOG"] = "info"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["1", str(logging.INFO)]


def _records(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("pycryptotensors"))


def test_log_names_each_static_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    """An application's own logging gets the records: CRYPTOTENSOR_KEYS, a key directory, a file:// jku."""
    from _filecraft import CRYPTO_KEYS, edit_inner

    master, signer = pc.generate_master_key(kid="mk-env"), pc.generate_signing_key(kid="pub-env")
    data = {"w": np.arange(12, dtype=np.float32)}
    path = tmp_path / "m.safetensors"
    ct_np.save_file(data, path, config={"enc_key": master, "sign_key": signer})
    secret = base64.urlsafe_b64encode(master.secret).decode().rstrip("=")
    caplog.set_level(logging.DEBUG, logger="pycryptotensors")

    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps({"keys": [master.to_jwk(), signer.verify_key.to_jwk()]}))
    assert np.array_equal(ct_np.load_file(path)["w"], data["w"])
    text = _records(caplog)
    assert "master key for kid 'mk-env': found mk-env (master) in CRYPTOTENSOR_KEYS" in text, text
    assert secret not in text and master.secret.hex() not in text
    monkeypatch.delenv("CRYPTOTENSOR_KEYS")
    caplog.clear()

    keys = tmp_path / "keys"
    keys.mkdir()
    write_key_file(keys / "enc.jwk", master)
    write_key_file(keys / "pub.jwk", signer.verify_key)
    assert np.array_equal(ct_np.load_file(path, config={"key_dirs": [keys]})["w"], data["w"])
    text = _records(caplog)
    assert f"found mk-env (master) in key file {keys / 'enc.jwk'}" in text, text
    assert f"found pub-env (public signing) in key file {keys / 'pub.jwk'}" in text, text
    caplog.clear()

    jku_dir = tmp_path / "jku"
    jku_dir.mkdir()
    write_key_file(jku_dir / "set.jwks", [master, signer.verify_key])
    jku = "file://" + str(jku_dir / "set.jwks")

    def name_jku(document: dict[str, Any]) -> None:
        document["enc"]["jku"] = jku

    path.write_bytes(edit_inner(path.read_bytes(), CRYPTO_KEYS, name_jku, signer=signer))
    with pytest.raises(pc.CryptoTensorsError):  # the jku is not inside an allowed directory: not read
        ct_np.load_file(path, config={"trusted_signers": [signer.verify_key]})
    assert "outside the allowed jku directories" in _records(caplog)
    caplog.clear()
    loaded = ct_np.load_file(path, config={"jku_dirs": [jku_dir], "trusted_signers": [signer.verify_key]})
    assert np.array_equal(loaded["w"], data["w"])
    text = _records(caplog)
    assert f"jku file {jku_dir / 'set.jwks'}: mk-env (master)" in text, text
    assert f"found mk-env (master) in jku {jku}" in text, text
    assert secret not in text and master.secret.hex() not in text


@pytest.fixture(scope="module")
def key_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ks") / "state").start()
    try:
        yield server
    finally:
        server.stop()


def test_log_names_the_key_service(key_service: Server, tmp_path: Path, caplog: Any) -> None:
    published = publish(key_service, tmp_path, "mk-served")
    token = key_service.token("alice")
    key_service.grant("alice", "mk-served")
    caplog.set_level(logging.DEBUG, logger="pycryptotensors")
    with closing(key_service.provider(token)) as provider:
        got = ct_np.load_file(published.path, config=pc.LoadOptions(providers=[provider]))
    assert np.array_equal(got["embed.weight"], published.tensors["embed.weight"])
    text = _records(caplog)
    assert f"master key for kid 'mk-served': asking key service {key_service.url}" in text, text
    assert f"key service {key_service.url} released 2 data key(s)" in text, text
    assert token not in text
    secret = base64.urlsafe_b64encode(published.master.secret).decode().rstrip("=")
    assert secret not in text and published.master.secret.hex() not in text


# ---------------------------------------------------------------------------------------------------- settings


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A fresh home and XDG_CONFIG_HOME, no PYCRYPTOTENSORS_CONFIG: (platformdirs' folder, the old one)."""
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv("PYCRYPTOTENSORS_CONFIG")
    return xdg / "pycryptotensors", home / ".config" / "pycryptotensors"


def test_settings_found_through_platformdirs(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    new, old = dirs
    assert settings_module.config_dirs() == (new, old)
    assert settings_module.settings_path() is None
    old.mkdir(parents=True)
    (old / "config.toml").write_text("require_encryption = true\n")
    assert settings_module.settings_path() == old / "config.toml"  # the old place still works
    new.mkdir(parents=True)
    (new / "config.toml").write_text("require_encryption = false\n")
    assert settings_module.settings_path() == new / "config.toml"  # platformdirs' place first
    named = new / "elsewhere.toml"
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(named))
    assert settings_module.settings_path() == named  # the env override wins
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert settings_module.config_dirs() == (old,)  # the default XDG folder is the old place: read once


def test_settings_file_in_xdg_folder_applies(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """The settings file found there is the one in force: its require_encryption refuses a plain file."""
    new, _ = dirs
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    assert ct_np.load_file(plain)["w"].shape == (3,)
    new.mkdir(parents=True)
    (new / "config.toml").write_text("key_dirs = []\nrequire_encryption = true\n")
    with pytest.raises(pc.CryptoTensorsError):
        ct_np.load_file(plain)


def test_default_key_dirs_in_both_places(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    new, old = dirs
    assert settings_module.default_key_dirs() == (new / "keys", old / "keys")
    master, signer = pc.generate_master_key(kid="mk-xdg"), pc.generate_signing_key(kid="pub-xdg")
    data = {"w": np.arange(6, dtype=np.float32)}
    path = tmp_path / "m.safetensors"
    ct_np.save_file(data, path, config={"enc_key": master, "sign_key": signer})
    (new / "keys").mkdir(parents=True)
    write_key_file(new / "keys" / "master.jwk", master)
    (old / "keys").mkdir(parents=True)
    write_key_file(old / "keys" / "publisher.jwk", signer.verify_key)
    assert np.array_equal(ct_np.load_file(path)["w"], data["w"])  # a key from each default directory


def test_private_key_file_readable_by_others_warns(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key_file(keys / "master.jwk", pc.generate_master_key(kid="mk-mode"))
    write_key_file(keys / "publisher.pub.jwk", pc.generate_signing_key(kid="pub-mode").verify_key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0600, and a public key at 0644: no warning
        assert len(read_key_dir(keys)) == 2
    for mode in (0o640, 0o604, 0o644):
        os.chmod(keys / "master.jwk", mode)
        with pytest.warns(KeyFilePermissionWarning) as caught:
            read_key_dir(keys)
        message = str(caught[0].message)
        assert f"chmod 600 {keys / 'master.jwk'}" in message and "\n" not in message
    os.chmod(keys / "master.jwk", 0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_key_dir(keys)


def test_settings_signer_file_with_private_key_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signer = tmp_path / "acme.jwk"
    write_key_file(signer, pc.generate_signing_key(kid="acme"))  # a private signing key named as a pin
    os.chmod(signer, 0o644)
    settings = tmp_path / "config.toml"
    settings.write_text(f"key_dirs = []\ntrusted_signers = [{json.dumps(str(signer))}]\n")
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    with pytest.warns(KeyFilePermissionWarning, match=re.escape(f"chmod 600 {signer}")):
        settings_module.load_settings()


def test_cli_warns_in_one_line_about_an_exposed_key(world: World, tmp_path: Path) -> None:
    key_dir = tmp_path / "kd"
    key_dir.mkdir()
    shutil.copy2(world.master, key_dir / "master.jwk")
    os.chmod(key_dir / "master.jwk", 0o644)
    args = ["verify", "--deep", world.encrypted, "--key-dir", key_dir, "--trust", world.signer_pub]
    result = run_cli(*args, env=world.env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"pycryptotensors: warning: private key file {key_dir / 'master.jwk'} is readable by other users "
        f"(mode 0644): run 'chmod 600 {key_dir / 'master.jwk'}'"
    ], result.stderr
    os.chmod(key_dir / "master.jwk", 0o600)
    assert run_cli(*args, env=world.env).stderr == ""


# ---------------------------------------------------------------------------------------------------- inspect


def test_inspect_folder_readable_with_both_policies(world: World) -> None:
    result = run_cli("inspect", world.encrypted, env=world.env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert not REPR.search(text), REPR.search(text)
    assert text.startswith(f"{world.encrypted}: model folder, 2 shard(s)")
    assert f"signed manifest: {world.encrypted / 'model.sig'}, signer key id pub-conv" in text
    for shard in SHARDS:
        assert f"{world.encrypted / shard}: cryptotensors" in text
    assert text.count("local policy: custom") == 2 and text.count("remote policy: custom") == 2
    for policy in (LOCAL_POLICY, REMOTE_POLICY):
        for line in policy.strip().splitlines():
            assert f"    {line}\n" in text
    assert "a.weight  F32     256x256" in text and "a.norm    F32     8 " in text
    assert "format: pt" in text  # metadata as fields
    no_key_material(world, text, result.stderr)


def test_inspect_folder_json(world: World, tmp_path: Path) -> None:
    info = json.loads(run_cli("inspect", world.encrypted, "--json", check=True, env=world.env).stdout)
    assert info["format"] == "model folder" and info["tensor_count"] == 3 and info["encrypted_tensors"] == 2
    assert [Path(s["path"]).name for s in info["shards"]] == list(SHARDS)
    assert info["manifest"] == {"path": str(world.encrypted / "model.sig"), "present": True, "signer_kid": "pub-conv"}
    for shard in info["shards"]:
        policy = shard["crypto"]["policy"]
        assert policy["local"].strip() == LOCAL_POLICY.strip() and policy["remote"].strip() == REMOTE_POLICY.strip()
        assert not policy["local_is_default"] and not policy["remote_is_default"]
    one = run_cli("inspect", world.encrypted / SHARDS[1], "--json", check=True, env=world.env)
    assert json.loads(one.stdout) == info["shards"][1]  # a folder's shard is described as the file alone is

    # a plain folder, without model.sig; a .git folder inside is left out, as everywhere
    plain = tmp_path / "plain"
    shutil.copytree(world.plain, plain)
    (plain / ".git").mkdir()
    shutil.copy2(plain / SHARDS[1], plain / ".git" / "x.safetensors")
    info = json.loads(run_cli("inspect", plain, "--json", check=True, env=world.env).stdout)
    assert info["manifest"]["present"] is False and info["warning"] is None
    assert [s["format"] for s in info["shards"]] == ["safetensors", "safetensors"]
    text = run_cli("inspect", plain, check=True, env=world.env).stdout
    assert "signed manifest: none" in text and not REPR.search(text)


def test_inspect_empty_folder_and_v1_file(world: World, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("inspect", tmp_path / "empty", env=world.env)
    assert result.returncode == 3 and "no *.safetensors file" in result.stderr
    v1 = tmp_path / "v1.safetensors"
    run_cli(
        "encrypt", world.plain / SHARDS[1], v1, "--master-key", world.master,
        "--signing-key", world.signer, "--format-version", "1", check=True, env=world.env,
    )  # fmt: skip
    text = run_cli("inspect", v1, check=True, env=world.env).stdout
    assert "version 1" in text and "each tensor in one piece" in text and not REPR.search(text)
    assert "local policy: default (allows everything)" in text and "remote policy: default" in text
