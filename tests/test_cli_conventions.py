"""The command-line conventions users expect (issue 13, section 4), on real files in real subprocesses.

- No silent abbreviation of an option, on any parser; a typo of a subcommand, a choice or an option gets a
  "did you mean" (difflib) with the usage line of the subcommand concerned, exit code 2.
- ``-q`` / ``-v`` on every command and subcommand: -q prints only errors (the data asked for and --json stay),
  -v / -vv log more detail through the ``pycryptotensors`` logger (never key material).
- ``pycryptotensors completion bash|zsh`` prints a completion script (shtab) that names every subcommand and
  that bash really completes with.
- Every command that takes ``--json`` reports a failure as ``{"ok": false, "error": {...}}`` on stdout too.
- Every error line names the file it is about: wrong key, tampered byte, missing key, truncated file, policy
  denied, unreachable or not-allowed key service, for inspect, verify, decrypt, encrypt, rewrap, sign, policy.

Small files (two numpy tensors; a two-shard folder) are made and encrypted with the command itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import pycryptotensors as pc
from _command import ERROR_PREFIX
from helpers import free_port, run_cli
from pycryptotensors.cli.app import build_parser
from pycryptotensors.keys.files import write_key_file

DENY_POLICY = "package model\nallow := false\n"


# ---------------------------------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class World:
    root: Path
    env: dict[str, str]
    master: Path
    master2: Path
    signer: Path
    pub: Path
    plain: Path
    enc: Path
    folder: Path
    secrets: frozenset[str]

    def cli(self, *args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the command; no output may hold key material."""
        result = run_cli(*args, env=env or self.env)
        for secret in self.secrets:
            assert secret not in result.stdout + result.stderr, f"key material printed by {args}"
        return result

    def ok(self, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = self.cli(*args, **kwargs)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def fails(self, code: int, *args: Any, **kwargs: Any) -> str:
        """A failure with exit code ``code`` and exactly one error line on stderr; returns that line."""
        result = self.cli(*args, **kwargs)
        assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), (args, result.stderr)
        return lines[0]


def _secrets(path: Path) -> set[str]:
    jwk = json.loads(path.read_text())
    found = set()
    for field in ("k", "d"):
        if field in jwk:
            raw = base64.urlsafe_b64decode(jwk[field] + "=" * (-len(jwk[field]) % 4))
            found |= {jwk[field], base64.b64encode(raw).decode()}
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("conventions")
    settings = root / "config.toml"
    settings.write_text("key_dirs = []\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_LOG")}
    env.update(PYCRYPTOTENSORS_CONFIG=str(settings), HF_HUB_OFFLINE="1", PYCRYPTOTENSORS_NO_PROGRESS="1")
    master, master2, signer, pub = root / "master.jwk", root / "master2.jwk", root / "acme.jwk", root / "acme.pub.jwk"
    signing = pc.generate_signing_key("acme")
    write_key_file(master, pc.generate_master_key(kid="m1"))
    write_key_file(master2, pc.generate_master_key(kid="m2"))
    write_key_file(signer, signing)
    write_key_file(pub, signing.verify_key)
    plain = root / "plain.safetensors"
    rng = np.random.default_rng(13)
    save_file({"w": rng.standard_normal((64, 32)).astype(np.float32), "norm": np.ones(32, np.float32)}, str(plain))
    source = root / "model"
    source.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        shutil.copy(plain, source / name)
    (source / "config.json").write_text("{}")
    made = World(
        root, env, master, master2, signer, pub, plain, root / "enc.safetensors", root / "model-enc",
        frozenset(set().union(*map(_secrets, (master, master2, signer)))),
    )  # fmt: skip
    keys = ["--master-key", master, "--signing-key", signer]
    made.ok("encrypt", plain, made.enc, *keys, "-q")
    made.ok("encrypt", source, made.folder, *keys, "-q")
    return made


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of the parser (the top level too), so that a new command is covered at once."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


COMMANDS = list(parsers(build_parser()))


def copy(world: World, path: Path, name: str) -> Path:
    target = world.root / "work" / name
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    return target


def flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))


# ------------------------------------------------------------------------------------ 1. abbreviations, typos


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "top")
def test_no_parser_allows_abbreviations(path: tuple[str, ...]) -> None:
    assert parser_of(path).allow_abbrev is False


def test_an_abbreviated_option_is_refused_with_a_suggestion(world: World) -> None:
    out = world.root / "work" / "abbrev.safetensors"
    result = world.cli("encrypt", world.plain, out, "--master", world.master, "--signing-key", world.signer)
    assert result.returncode == 2 and not out.exists(), result.stderr
    assert "did you mean --master-key" in result.stderr
    assert result.stderr.startswith("usage: pycryptotensors encrypt "), result.stderr  # the subcommand's usage
    # an option that would be unambiguous as a prefix is still not taken
    for abbreviated in ("--js", "--dee"):
        result = world.cli("verify", world.enc, "--trust", world.pub, abbreviated)
        assert result.returncode == 2 and "unrecognized arguments" in result.stderr, result.stderr
        assert result.stderr.startswith("usage: pycryptotensors verify "), result.stderr
    assert "did you mean --deep" in result.stderr


@pytest.mark.parametrize(
    ("args", "suggestion", "usage"),
    [
        (["encrpyt", "a", "b"], "did you mean 'encrypt'?", "usage: pycryptotensors encrypt "),
        (["inspcet", "a"], "did you mean 'inspect'?", "usage: pycryptotensors inspect "),
        (["policy", "tset", "p.rego"], "did you mean 'test'?", "usage: pycryptotensors policy test "),
        (["keyservice", "grnats", "list"], "did you mean 'grants'?", "usage: pycryptotensors keyservice grants "),
        (["keygen", "mastr", "k.jwk"], "did you mean 'master'?", "usage: pycryptotensors keygen "),
        (["completion", "bsh"], "did you mean 'bash'?", "usage: pycryptotensors completion "),
    ],
)
def test_a_misspelt_subcommand_or_choice_gets_did_you_mean(
    world: World, args: list[str], suggestion: str, usage: str
) -> None:
    result = world.cli(*args)
    assert result.returncode == 2 and result.stdout == "", result
    assert suggestion in result.stderr and result.stderr.startswith(usage), result.stderr
    assert "invalid choice" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "suggestion", "usage"),
    [
        (["inspect", "{enc}", "--jsno"], "did you mean --json", "inspect"),
        (["verify", "{enc}", "--trsut", "{pub}"], "did you mean --trust", "verify"),
        (["decrypt", "{enc}", "{out}", "--keys", "{master}"], "did you mean --key", "decrypt"),
        (["policy", "lint", "p.rego", "--imput", "x"], "did you mean --input", "policy lint"),
        (["rewrap", "{enc}", "--sigining-key", "{signer}"], "did you mean --signing-key", "rewrap"),
        (["keygen", "master", "{out}", "--kdi", "x"], "did you mean --kid", "keygen"),
    ],
)  # fmt: skip
def test_a_misspelt_option_gets_did_you_mean_with_the_subcommands_usage(
    world: World, args: list[str], suggestion: str, usage: str
) -> None:
    out = world.root / "work" / "typo-out.safetensors"
    values = {"enc": world.enc, "pub": world.pub, "master": world.master, "signer": world.signer, "out": out}
    result = world.cli(*(a.format(**values) for a in args))
    assert result.returncode == 2 and result.stdout == "", result
    assert suggestion in result.stderr and result.stderr.startswith(f"usage: pycryptotensors {usage} "), result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------ 2. -q / -v


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "top")
def test_quiet_and_verbose_on_every_command(world: World, path: tuple[str, ...]) -> None:
    options = parser_of(path)._option_string_actions
    assert {"-q", "--quiet", "-v", "--verbose"} <= set(options), path
    text = world.ok(*path, "--help").stdout
    assert "-q, --quiet" in text and "-v, --verbose" in text and "only errors" in text and "DEBUG" in text


def test_quiet_prints_only_errors_and_the_data_asked_for(world: World) -> None:
    work = world.root / "work" / "quiet"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keys = ["--master-key", world.master, "--signing-key", world.signer]
    trust = ["--key", world.master, "--trust", world.pub]
    silent = [
        ["keygen", "master", work / "k.jwk", "-q"],
        ["-q", "keygen", "signing", work / "s.jwk"],  # before the command works too
        ["encrypt", world.plain, work / "e.safetensors", *keys, "-q"],
        ["encrypt", copy(world, world.root / "model", "quiet-src"), work / "folder", *keys, "--quiet"],
        ["decrypt", work / "e.safetensors", work / "d.safetensors", *trust, "-q"],
        ["verify", work / "e.safetensors", "--deep", *trust, "-q"],
        ["rewrap", work / "e.safetensors", *trust, "--new-master-key", world.master2, *keys[2:], "-q"],
        ["sign", work / "folder", "--signing-key", world.signer, "--force", "-q"],
    ]
    for args in silent:
        result = world.ok(*args)
        assert (result.stdout, result.stderr) == ("", ""), (args, result.stdout, result.stderr)
        loud = [a for a in args if a not in ("-q", "--quiet")]
        if args[0] == "verify":  # the same command without -q says what it did
            assert "verified 1 file(s)" in world.ok(*loud).stdout
    # the data a command is asked for is still printed, and --json stays
    assert "w" in world.ok("inspect", world.enc, "-q").stdout.split()
    allow = work / "allow.rego"
    allow.write_text("package model\nallow := true\n")
    assert world.ok("policy", "test", allow, "-q").stdout.startswith("allowed")  # the verdict is the data
    report = json.loads(world.ok("verify", world.enc, "--trust", world.pub, "--json", "-q").stdout)
    assert report["ok"] is True
    # an error is still printed
    error = world.fails(
        5, "decrypt", world.enc, work / "x.safetensors", "--key", world.master2, "--trust", world.pub, "-q"
    )
    assert "does not unwrap" in error and str(world.enc) in error


def test_verbose_logs_what_the_command_does(world: World) -> None:
    result = world.ok("verify", world.enc, "--trust", world.pub, "-v")
    assert "verified 1 file(s)" in result.stdout
    info = [line for line in result.stderr.splitlines() if line.startswith("pycryptotensors: INFO:")]
    assert any("verify" in line and str(world.enc) in line for line in info), result.stderr
    assert any("done in" in line for line in info) and "DEBUG" not in result.stderr, result.stderr
    debug = world.ok("-vv", "decrypt", world.enc, world.root / "work" / "vv.safetensors", "--key", world.master,
                     "--trust", world.pub, "--force")  # fmt: skip
    assert "pycryptotensors: DEBUG:" in debug.stderr and "master.jwk" in debug.stderr, debug.stderr
    # every command logs with -v: one that writes keys, and one that fails (its error type, no traceback)
    keygen = world.ok("keygen", "master", world.root / "work" / "v.jwk", "--force", "--verbose")
    assert "INFO: pycryptotensors" in keygen.stderr and "keygen" in keygen.stderr
    failed = world.cli("verify", world.enc, "--trust", world.master, "-v")
    assert failed.returncode == 2 and "INFO: ConfigError (exit code 2)" in failed.stderr, failed.stderr
    # without -v, none of this
    assert world.ok("verify", world.enc, "--trust", world.pub).stderr == ""
    both = world.cli("inspect", world.enc, "-q", "-v")
    assert both.returncode == 2 and "contradict" in both.stderr


# ------------------------------------------------------------------------------------ 3. completion


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_names_every_subcommand(world: World, shell: str) -> None:
    script = world.ok("completion", shell).stdout
    for path in COMMANDS:
        if path:
            assert path[-1] in script, (shell, path)
    assert "--master-key" in script and "--trust" in script
    if shell == "zsh":
        assert script.startswith("#compdef pycryptotensors")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_with_the_generated_script(world: World) -> None:
    script = world.root / "work" / "completion.bash"
    script.write_text(world.ok("completion", "bash").stdout)
    probe = f"""
source {script}
complete_words() {{
  COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
  COMPREPLY=(); _shtab_pycryptotensors; echo "${{COMPREPLY[*]}}"
}}
complete -p pycryptotensors
complete_words pycryptotensors enc
complete_words pycryptotensors verify --de
complete_words pycryptotensors policy l
"""
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 4, (result.stdout, result.stderr)
    assert "_shtab_pycryptotensors" in lines[0] and "pycryptotensors" in lines[0]
    assert lines[1].split() == ["encrypt"] and lines[2].split() == ["--deep"] and lines[3].split() == ["lint"]


# ------------------------------------------------------------------------------------ 4. JSON errors


def json_failure(world: World, code: int, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A --json run that fails: exit ``code``, one error line on stderr, and the error document on stdout."""
    result = world.cli(*args, "--json", env=env)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    document = json.loads(result.stdout)
    assert document["ok"] is False and set(document["error"]) == {"type", "message", "file", "exit_code"}
    error = document["error"]
    assert error["exit_code"] == code and error["message"] in result.stderr, (document, result.stderr)
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(("pycryptotensors: error:", "pycryptotensors ")), result.stderr
    return error


def test_every_json_command_reports_its_errors_as_json(world: World) -> None:
    work = world.root / "work" / "json"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    truncated = work / "truncated.safetensors"
    truncated.write_bytes(world.enc.read_bytes()[:-100])
    tampered = copy(world, world.enc, "json-tampered.safetensors")
    flip_last_byte(tampered)
    bad_policy = work / "bad.rego"
    bad_policy.write_text("package model\nallow if {\n")
    covered: set[tuple[str, ...]] = set()

    def check(path: tuple[str, ...], code: int, kind: str, file: Path | None, *args: Any) -> None:
        error = json_failure(world, code, *path, *args)
        assert error["type"] == kind, error
        if file is not None:
            assert error["file"] == str(file) and str(file) in error["message"], error
        covered.add(path)

    existing = work / "exists.jwk"
    existing.write_text("{}")
    check(("keygen",), 1, "FileExistsError", existing, "master", existing)
    check(("encrypt",), 2, "ConfigError", world.enc, world.enc, work / "e2", "--master-key", world.master,
          "--signing-key", world.signer)  # fmt: skip
    check(("decrypt",), 5, "WrongKeyError", world.enc, world.enc, work / "d", "--key", world.master2,
          "--trust", world.pub)  # fmt: skip
    check(("rewrap",), 3, "FormatError", truncated, truncated, "--key", world.master, "--signing-key", world.signer)
    check(("sign",), 4, "NotEncryptedError", None, world.root / "model", "--signing-key", world.signer)
    check(("inspect",), 3, "FormatError", truncated, truncated)
    check(("verify",), 4, "IntegrityError", tampered, tampered, "--deep", "--key", world.master, "--trust", world.pub)
    check(("policy", "test"), 2, "ConfigError", bad_policy, bad_policy)
    check(("policy", "lint"), 1, "FileNotFoundError", work / "none.rego", work / "none.rego")
    check(("policy", "explain"), 5, "MissingKeyError", world.enc, world.enc)
    env = {k: v for k, v in world.env.items() if not k.startswith("PYCRYPTOTENSORS_KEYSERVICE")}
    error = json_failure(world, 2, "keyservice", "models", "list", env=env)
    assert error["type"] == "ConfigError" and "URL" in error["message"]
    covered.add(("keyservice",))
    # a usage error of a --json run is JSON too
    usage = json_failure(world, 2, "verify", world.enc, "--trsut", world.pub)
    assert usage["type"] == "UsageError" and "did you mean --trust" in usage["message"]
    # every command that takes --json is covered above (the keyservice actions share one error path: the client)
    takes_json = {
        p[:1] if p[0] == "keyservice" else p for p in COMMANDS if p and "--json" in parser_of(p)._option_string_actions
    }
    assert takes_json == covered, takes_json ^ covered


# ------------------------------------------------------------------------------------ 5. files named


def test_every_error_names_the_file_it_is_about(world: World) -> None:
    work = world.root / "work" / "named"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "out.safetensors"
    truncated = work / "truncated.safetensors"
    truncated.write_bytes(world.enc.read_bytes()[:-100])
    tampered = copy(world, world.enc, "named-tampered.safetensors")
    flip_last_byte(tampered)
    folder = copy(world, world.folder, "named-folder")
    shard = sorted(folder.glob("*.safetensors"))[1]
    flip_last_byte(shard)
    deny = work / "deny.rego"
    deny.write_text(DENY_POLICY)
    bad_policy = work / "bad.rego"
    bad_policy.write_text("package model\nallow if {\n")
    plain_shard = world.root / "model" / "model-00001-of-00002.safetensors"
    denied = work / "denied.safetensors"
    world.ok("encrypt", world.plain, denied, "--master-key", world.master, "--signing-key", world.signer,
             "--policy", deny, "-q")  # fmt: skip
    trust = ["--trust", world.pub]
    cases: list[tuple[int, Path, list[Any]]] = [
        # wrong key
        (5, world.enc, ["decrypt", world.enc, out, "--key", world.master2, *trust]),
        (5, world.enc, ["verify", world.enc, "--deep", "--key", world.master2, *trust]),
        (5, world.enc, ["rewrap", world.enc, out, "--key", world.master2, "--signing-key", world.signer]),
        # missing key
        (5, world.enc, ["decrypt", world.enc, out, *trust]),
        (5, world.enc, ["policy", "explain", world.enc]),
        (5, world.enc, ["verify", world.enc, "--deep", *trust]),
        # a key file that does not exist: that file is named
        (5, work / "absent.jwk", ["decrypt", world.enc, out, "--key", work / "absent.jwk"]),
        # tampered byte: a file, and a shard of a folder
        (4, tampered, ["verify", tampered, "--deep", "--key", world.master, *trust]),
        (4, tampered, ["decrypt", tampered, out, "--key", world.master, *trust]),
        (4, shard, ["decrypt", folder, work / "folder-out", "--key", world.master, *trust]),
        (4, shard, ["verify", folder, "--deep", "--key", world.master, *trust]),
        # truncated
        (3, truncated, ["inspect", truncated]),
        (3, truncated, ["verify", truncated, *trust]),
        (3, truncated, ["decrypt", truncated, out, "--key", world.master]),
        (3, truncated, ["rewrap", truncated, "--key", world.master, "--signing-key", world.signer]),
        (3, truncated, ["policy", "explain", truncated, "--unverified"]),
        # encrypting: an encrypted input, a truncated one
        (2, world.enc, ["encrypt", world.enc, out, "--master-key", world.master, "--signing-key", world.signer]),
        (3, truncated, ["encrypt", truncated, out, "--master-key", world.master, "--signing-key", world.signer]),
        # policy denied
        (6, denied, ["decrypt", denied, out, "--key", world.master, *trust]),
        # a file that is not there; a key file of the wrong kind; a folder that cannot be signed; a policy
        (1, work / "nothing.safetensors", ["inspect", work / "nothing.safetensors"]),
        (2, world.signer, ["encrypt", world.plain, out, "--master-key", world.signer, "--signing-key", world.signer]),
        (4, plain_shard, ["sign", world.root / "model", "--signing-key", world.signer]),
        (1, work / "none.rego", ["policy", "lint", work / "none.rego"]),
        (2, bad_policy, ["policy", "test", bad_policy]),
    ]
    for code, named, args in cases:
        line = world.fails(code, *args)
        assert str(named) in line, (args, line)
        assert not out.exists()


@pytest.fixture
def key_service_file(world: World) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """A file whose key is held by a key service on a port where nothing listens, and a consumer's settings
    that allow that service (with a token, one quick attempt)."""
    url = f"http://127.0.0.1:{free_port()}"
    path = world.root / "work" / "ks.safetensors"
    path.parent.mkdir(exist_ok=True)
    world.ok("encrypt", world.plain, path, "--master-key", world.master, "--signing-key", world.signer,
             "--key-service", url, "--force", "-q")  # fmt: skip
    settings = world.root / "work" / "ks.toml"
    settings.write_text(f'key_dirs = []\n\n[key_service]\nallowed = ["{url}"]\ntimeout = 2\nretries = 0\n')
    env = {**world.env, "PYCRYPTOTENSORS_CONFIG": str(settings), "PYCRYPTOTENSORS_KEY_SERVICE_TOKEN": "ctk_test"}
    yield path, url, env


def test_key_service_errors_name_the_file(world: World, key_service_file: tuple[Path, str, dict[str, str]]) -> None:
    path, url, env = key_service_file
    out = world.root / "work" / "ks-out.safetensors"
    line = world.fails(5, "decrypt", path, out, "--trust", world.pub, env=env)
    assert str(path) in line and ("unreachable" in line or "reach" in line), line
    error = json_failure(world, 5, "verify", path, "--deep", "--trust", world.pub, env=env)
    assert error["type"] == "KeyServiceUnreachableError" and error["file"] == str(path), error
    # not in the allow-list: refused without contacting it, and the file is named
    line = world.fails(5, "decrypt", path, out, "--trust", world.pub)
    assert str(path) in line and url in line, line
    assert not out.exists()


def test_python_dash_m_runs_the_same_command(world: World) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pycryptotensors", "inspect", world.enc, "--jsno"],
        capture_output=True, text=True, env=world.env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "did you mean --json" in result.stderr, result.stderr


def test_serve_and_keyservice_quiet(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    import httpx

    from _keyservice import Server

    outputs = {}
    for name, extra in (("loud", []), ("quiet", ["-q"])):
        server = Server(tmp_path / name, *extra).start()
        try:
            assert httpx.get(f"{server.url}/v1/health", timeout=5).status_code == 200
            if name == "quiet":  # the admin commands: -q silences reports, never the data asked for
                made = server.admin_cli("token", "create", "alice", "--out", tmp_path / "alice.token", "-q")
                assert (made.stdout, made.stderr) == ("", "") and (tmp_path / "alice.token").is_file()
                assert "alice" in server.admin_cli("tokens", "list", "-q").stdout
                assert server.admin_cli("token", "create", "bob", "-q").stdout.startswith("ctk_")  # the token
        finally:
            server.stop()
        outputs[name] = "".join(p.read_text() for p in tmp_path.glob(f"{name}-*.log"))
    assert "pycryptotensors key service on" in outputs["loud"] and "/v1/health" in outputs["loud"]
    assert "key service on" not in outputs["quiet"] and "/v1/health" not in outputs["quiet"], outputs["quiet"]
