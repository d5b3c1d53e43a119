"""Whole-model check, attacked past the cases of issue 9: things a file system allows besides a changed file.

The attacker can write the model folder but holds no key. Each case below loaded (or hung the loader) before
its fix: a side file rewritten with its size and mtime kept (``touch -d``), which the per-process cache did
not see; a FIFO, a device link or a folder link planted in the folder, which the folder walk ignored; a FIFO
as ``model.sig``, which hung every load; a plain unsigned model folder under a pinned publisher (no
``require_encryption``) in transparent mode; and transformers 5's ``disable_mmap``, which read plain shards
of a signed folder as bytes past the manifest.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import pycryptotensors as pc
import test_model_manifest as fixtures
from pycryptotensors.model import check as model_check
from pycryptotensors.model.folder import MANIFEST_NAME
from test_model_manifest import Keys, assert_refused, open_all, ring

# the fixtures of tests/test_model_manifest.py (module scoped there, so built again for this module)
keys, llama, llama_plain, copy = fixtures.keys, fixtures.llama, fixtures.llama_plain, fixtures.copy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and symlinks")


def test_cache_sees_a_side_file_rewritten_with_size_and_mtime_kept(llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    model_check.clear_cache()
    assert open_all(folder, ring(keys)) > 2  # checked once, cached for the process
    config = folder / "config.json"
    before, folder_before = os.stat(config), os.stat(folder)
    text = config.read_bytes()
    changed = text.replace(b'"silu"', b'"gelu"')
    assert changed != text and len(changed) == len(text)
    config.write_bytes(changed)
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -d: mtime back, size the same
    os.utime(folder, ns=(folder_before.st_atime_ns, folder_before.st_mtime_ns))
    with pytest.raises(pc.ManifestError, match=r"config\.json"):
        open_all(folder, ring(keys))  # no clear_cache(): the cache itself must see the change


def _plant_fifo(folder: Path) -> str:
    os.mkfifo(folder / "tokenizer_config.json")
    return "tokenizer_config.json"


def _plant_device_link(folder: Path) -> str:
    os.symlink("/dev/zero", folder / "special_tokens_map.json")
    return "special_tokens_map.json"


def _plant_folder_link(folder: Path) -> str:
    outside = folder.parent / "outside-module"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    os.symlink(outside, folder / "1_Pooling")
    return "1_Pooling"


def _replace_listed_by_fifo(folder: Path) -> str:
    (folder / "chat_template.jinja").unlink()
    os.mkfifo(folder / "chat_template.jinja")
    return "chat_template.jinja"


@pytest.mark.parametrize("plant", [_plant_fifo, _plant_device_link, _plant_folder_link, _replace_listed_by_fifo])
def test_non_regular_entries_are_refused_not_ignored(plant, llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    name = plant(folder)
    assert_refused(folder, keys, name)


def test_fifo_as_manifest_is_refused_without_hanging(llama: Path, keys: Keys, copy) -> None:
    folder = copy(llama)
    (folder / MANIFEST_NAME).unlink()
    os.mkfifo(folder / MANIFEST_NAME)
    model_check.clear_cache()
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            open_all(folder, ring(keys))
            outcome.append(None)
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "opening a shard hung on a FIFO planted as model.sig"
    assert isinstance(outcome[0], pc.ManifestError) and "regular file" in str(outcome[0])
    assert_refused(folder, keys, MANIFEST_NAME)


def _load_in_fresh_process(folder: Path, settings: Path, **kwargs: object) -> dict[str, str]:
    script = textwrap.dedent(
        """
        import json, sys
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained(sys.argv[1], **json.loads(sys.argv[2]))
            print(json.dumps({"loaded": True}))
        except Exception as error:
            print(json.dumps({"error": f"{type(error).__module__}.{type(error).__name__}", "message": str(error)}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    env.update(PYCRYPTOTENSORS_CONFIG=str(settings), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    args = [sys.executable, "-c", script, str(folder), json.dumps(kwargs)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _settings(keys: Keys, tmp_path: Path, pin: bool) -> Path:
    key_dir = tmp_path / "key-dir"
    key_dir.mkdir(exist_ok=True)
    shutil.copy(keys.master, key_dir / "master.jwk")
    shutil.copy(keys.pub, key_dir / "acme.pub.jwk")
    settings = tmp_path / ("pinned.toml" if pin else "keys-only.toml")
    pinned = f'trusted_signers = ["{keys.pub}"]\n' if pin else ""
    settings.write_text(f'key_dirs = ["{key_dir}"]\n{pinned}')
    return settings


def test_pinned_publisher_refuses_a_plain_unsigned_model_folder(llama_plain: Path, keys: Keys, tmp_path) -> None:
    """A global ``trusted_signers`` pin, no ``require_encryption``: the attacker deletes the encrypted shards
    and model.sig and puts plain shards in their place; transparent mode must not hand them to safetensors."""
    folder = tmp_path / "downgraded"
    shutil.copytree(llama_plain, folder)
    outcome = _load_in_fresh_process(folder, _settings(keys, tmp_path, pin=True))
    assert outcome.get("error") == "pycryptotensors.errors.ManifestError", outcome
    assert "no signed manifest" in outcome["message"]


@pytest.mark.skipif(
    int(importlib.metadata.version("transformers").split(".")[0]) < 5,
    reason="disable_mmap is a transformers 5 option (the lowest env has 4.57.1, which reads through safe_open)",
)
def test_disable_mmap_checks_the_signed_folder(llama: Path, llama_plain: Path, keys: Keys, tmp_path) -> None:
    """A consumer who pins nothing, a signed folder whose shards the attacker replaced by plain ones:
    transformers 5 with ``disable_mmap=True`` reads each shard as bytes itself, which must not skip the check."""
    settings = _settings(keys, tmp_path, pin=False)
    folder = tmp_path / "swapped"
    shutil.copytree(llama, folder)
    assert _load_in_fresh_process(folder, settings, disable_mmap=True) == {"loaded": True}  # untampered: loads
    for shard in llama_plain.glob("*.safetensors"):
        shutil.copy(shard, folder / shard.name)
    for kwargs in ({"disable_mmap": True}, {}):
        outcome = _load_in_fresh_process(folder, settings, **kwargs)
        assert outcome.get("error") == "pycryptotensors.errors.ManifestError", (kwargs, outcome)


REMOTE_CODE_SCRIPT = """
import json, sys
from pathlib import Path
from transformers import AutoModelForCausalLM
folder, marker = sys.argv[1], Path(sys.argv[2])
try:
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    outcome = {"loaded": True}
except Exception as error:
    outcome = {"error": f"{type(error).__module__}.{type(error).__name__}", "message": str(error)}
outcome["code_ran"] = marker.exists()
print(json.dumps(outcome))
"""


def _code(marker: Path, evil: bool) -> str:
    action = f"open({str(marker)!r}, 'w').write('ran')\n" if evil else ""
    return f"{action}from transformers import LlamaForCausalLM\n\nclass Custom(LlamaForCausalLM):\n    pass\n"


@pytest.mark.parametrize("pin", [True, False], ids=["pinned", "keys-only"])
def test_tampered_remote_code_is_refused_before_it_runs(pin: bool, llama_plain: Path, keys: Keys, tmp_path) -> None:
    """The publisher ships remote code (``auto_map``); the attacker rewrites it. transformers imports it
    before any shard is opened, so the folder check must come first: refused, and the code never ran."""
    from test_model_manifest import encrypt_dir

    source = tmp_path / "with-code"
    shutil.copytree(llama_plain, source)
    marker = tmp_path / "attacker-code-ran"
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Custom"}
    (source / "config.json").write_text(json.dumps(config))
    (source / "modeling_custom.py").write_text(_code(marker, evil=False))
    folder = encrypt_dir(source, tmp_path / "with-code-enc", keys)
    settings = _settings(keys, tmp_path, pin=pin)
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    env.update(PYCRYPTOTENSORS_CONFIG=str(settings), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))

    def load() -> dict[str, object]:
        args = [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(folder), str(marker)]
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=400)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert load() == {"loaded": True, "code_ran": False}  # the publisher's code loads
    (folder / "modeling_custom.py").write_text(_code(marker, evil=True))
    outcome = load()
    assert outcome.get("error") == "pycryptotensors.errors.ManifestError", outcome
    assert "modeling_custom.py" in str(outcome["message"]) and outcome["code_ran"] is False
