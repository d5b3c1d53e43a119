"""Whole-model attacks against unmodified loaders: transformers 5.x and 4.57, sentence-transformers, vLLM.

The consumer pins the publisher and requires encryption for the attacked folders (a ``[[rule]]``), keys in a
key directory, and loads with plain ``from_pretrained`` / ``SentenceTransformer(...)`` / ``vllm.LLM`` in a
fresh process (transparent mode from the start-up hook). The attacker can write the model folder but holds no
key. Each attack must fail with our error; the untampered models must load and give the plain model's output.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import pycryptotensors as pc
from _models import tiny_llama
from helpers import run_cli
from pycryptotensors.keys.files import write_key_file
from pycryptotensors.model.folder import MANIFEST_NAME
from test_model_manifest import minilm_source

ROOT = Path(__file__).resolve().parent.parent
TF457_PYTHON = ROOT / ".venv-tf457" / "bin" / "python"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
INDEX = "model.safetensors.index.json"
INPUT_IDS = [[1, 5, 17, 42, 99, 3, 64, 127]]
NOT_ENCRYPTED = "pycryptotensors.errors.NotEncryptedError"
MANIFEST = "pycryptotensors.errors.ManifestError"


@dataclass
class World:
    root: Path
    plain: Path  # the plain sharded Llama
    encrypted: Path
    attacks: Path  # folders under the consumer's rule
    settings: Path  # keys + the rule (pinned publisher, encryption required) on `attacks`
    keys_only: Path  # keys, no rule: the manifest alone protects
    logits: Path


def cli(*args: object) -> None:
    run_cli(*args, check=True)


def env(settings: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    out.update(PYCRYPTOTENSORS_CONFIG=str(settings), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out.update(TOKENIZERS_PARALLELISM="false")
    return out


def run(python: Path | str, script: str, cases: Any, settings: Path, cwd: Path) -> dict[str, Any]:
    """Run ``script`` (which prints one JSON line) in a fresh interpreter with ``cases`` as its argument."""
    args = [str(python), "-c", textwrap.dedent(script), json.dumps(cases)]
    result = subprocess.run(args, capture_output=True, text=True, env=env(settings), cwd=cwd, timeout=400)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("attacks-world")
    keys = root / "keys"
    keys.mkdir()
    signer = pc.generate_signing_key(kid="acme")
    write_key_file(root / "master.jwk", pc.generate_master_key(kid="m1"))
    write_key_file(root / "acme.jwk", signer)
    write_key_file(keys / "acme.pub.jwk", signer.verify_key)
    shutil.copy(root / "master.jwk", keys / "master.jwk")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        model = tiny_llama(num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
        model.save_pretrained(root / "plain", max_shard_size="100KB")
        with torch.no_grad():
            torch.save(model(torch.tensor(INPUT_IDS)).logits, root / "logits.pt")
        torch.save(model.state_dict(), root / "pytorch_model.bin")  # the attacker's downgrade
    (root / "plain" / "chat_template.jinja").write_text("{{ messages }}")
    (root / "plain" / "modeling_custom.py").write_text("HIDDEN = 64\n")
    encrypted = root / "encrypted"
    cli("encrypt", root / "plain", encrypted, "--master-key", root / "master.jwk", "--signing-key", root / "acme.jwk",
        "--plain", "*norm*", "--quiet")  # fmt: skip
    minilm = root / "minilm-encrypted"
    cli("encrypt", minilm_source(), minilm, "--master-key", root / "master.jwk", "--signing-key", root / "acme.jwk",
        "--quiet")  # fmt: skip
    attacks = root / "attacks"
    attacks.mkdir()
    pub = keys / "acme.pub.jwk"
    settings = root / "settings.toml"
    settings.write_text(
        f'key_dirs = ["{keys}"]\n[[rule]]\npath = "{attacks}"\nsigners = ["{pub}"]\nrequire_encryption = true\n'
    )
    keys_only = root / "keys-only.toml"
    keys_only.write_text(f'key_dirs = ["{keys}"]\n')
    return World(root, root / "plain", encrypted, attacks, settings, keys_only, root / "logits.pt")


def tamper(text: str) -> str:
    """A change the loader still accepts: a JSON file stays valid JSON (an entry added or altered)."""
    try:
        document = json.loads(text)
    except ValueError:
        return text + "\n# changed\n"
    if isinstance(document, list):  # modules.json: the pooling module's path, pointed elsewhere
        document[-1]["path"] = document[-1]["path"] + "/"
    else:
        document["tampered"] = True
    return json.dumps(document)


def attack(world: World, name: str, source: Path | None = None) -> Path:
    folder = world.attacks / name
    shutil.copytree(source or world.encrypted, folder)
    return folder


def bin_downgrade(world: World, name: str) -> Path:
    """Delete the encrypted shards, the index and the manifest; drop in a pickle checkpoint."""
    folder = attack(world, name)
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    (folder / INDEX).unlink()
    (folder / MANIFEST_NAME).unlink()
    shutil.copy(world.root / "pytorch_model.bin", folder / "pytorch_model.bin")
    return folder


def index_escape(world: World, name: str, absolute: bool) -> Path:
    """Point one index entry at a plain shard outside the rule's folder (manifest left as it was)."""
    folder = attack(world, name)
    outside = world.root / f"outside-{name}"
    outside.mkdir()
    index = json.loads((folder / INDEX).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    shutil.copy(world.plain / first, outside / first)
    escaped = str(outside / first) if absolute else f"../../outside-{name}/{first}"
    index["weight_map"] = {k: (escaped if v == first else v) for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))
    return folder


def dropped_shard(world: World, name: str) -> Path:
    folder = attack(world, name)
    index = json.loads((folder / INDEX).read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != victim}
    (folder / INDEX).write_text(json.dumps(index))
    (folder / victim).unlink()
    return folder


def side_file(world: World, name: str, file: str, source: Path | None = None) -> Path:
    folder = attack(world, name, source)
    (folder / file).write_text(tamper((folder / file).read_text()))
    return folder


def plain_shards(world: World, name: str) -> Path:
    """The encrypted shards replaced by the plain ones and the manifest removed (for the bytes path)."""
    folder = attack(world, name)
    for shard in world.plain.glob("*.safetensors"):
        shutil.copy(shard, folder / shard.name)
    (folder / MANIFEST_NAME).unlink()
    return folder


TRANSFORMERS_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM
out = {}
for label, folder, kwargs in json.loads(sys.argv[1]):
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        with torch.no_grad():
            logits = model.eval()(torch.tensor(INPUT_IDS)).logits
        out[label] = bool(torch.equal(logits, torch.load(LOGITS)))
    except Exception as error:
        out[label] = type(error).__module__ + "." + type(error).__qualname__
print(json.dumps(out))
"""


def transformers_script(world: World) -> str:
    return f"INPUT_IDS = {INPUT_IDS!r}\nLOGITS = {str(world.logits)!r}\n" + TRANSFORMERS_SCRIPT


@pytest.mark.skipif(
    int(importlib.metadata.version("transformers").split(".")[0]) < 5,
    reason="transformers 5.x (disable_mmap, its loading path); 4.57 has its own test through .venv-tf457",
)
def test_transformers_5_refuses_every_attack(world: World) -> None:
    mmap_off = {"disable_mmap": True}
    cases = [
        ("untampered", str(attack(world, "untampered")), {}),
        ("untampered disable_mmap", str(world.attacks / "untampered"), mmap_off),
        (".bin downgrade", str(bin_downgrade(world, "downgrade")), {}),
        ("index escape, relative", str(index_escape(world, "escape-rel", absolute=False)), {}),
        ("index escape, absolute", str(index_escape(world, "escape-abs", absolute=True)), {}),
        ("dropped shard", str(dropped_shard(world, "dropped")), {}),
        ("config", str(side_file(world, "config", "config.json")), {}),
        ("generation config", str(side_file(world, "generation", "generation_config.json")), {}),
        ("chat template", str(side_file(world, "template", "chat_template.jinja")), {}),
        ("remote code", str(side_file(world, "code", "modeling_custom.py")), {}),
        ("plain shards, disable_mmap", str(plain_shards(world, "plain-bytes")), mmap_off),
    ]
    added = attack(world, "added")
    shutil.copy(world.root / "pytorch_model.bin", added / "pytorch_model.bin")
    cases.append(("added weight file", str(added), {}))
    out = run(sys.executable, transformers_script(world), cases, world.settings, world.root)
    assert out == {
        "untampered": True,
        "untampered disable_mmap": True,
        ".bin downgrade": NOT_ENCRYPTED,
        "index escape, relative": MANIFEST,
        "index escape, absolute": MANIFEST,
        "dropped shard": MANIFEST,
        "config": MANIFEST,
        "generation config": MANIFEST,
        "chat template": MANIFEST,
        "remote code": MANIFEST,
        "plain shards, disable_mmap": NOT_ENCRYPTED,
        "added weight file": MANIFEST,
    }


def test_manifest_protects_a_consumer_who_pins_nothing(world: World) -> None:
    """Keys only, no rule: the signed manifest alone refuses tampered side files and a downgrade beside it."""
    unpinned = world.root / "unpinned"
    unpinned.mkdir()
    folder = unpinned / "config"
    shutil.copytree(world.encrypted, folder)
    (folder / "config.json").write_text(tamper((folder / "config.json").read_text()))
    downgrade = unpinned / "downgrade"
    shutil.copytree(world.encrypted, downgrade)
    for shard in downgrade.glob("*.safetensors"):
        shard.unlink()
    (downgrade / INDEX).unlink()
    shutil.copy(world.root / "pytorch_model.bin", downgrade / "pytorch_model.bin")
    swapped = unpinned / "plain-shard"  # an encrypted shard replaced by the plain one: no decryption needed
    shutil.copytree(world.encrypted, swapped)
    first = sorted(world.plain.glob("*.safetensors"))[0]
    shutil.copy(first, swapped / first.name)
    cases = [("untampered", str(world.encrypted), {}), ("config", str(folder), {}), ("downgrade", str(downgrade), {})]
    cases.append(("plain shard", str(swapped), {}))
    out = run(sys.executable, transformers_script(world), cases, world.keys_only, world.root)
    assert out == {"untampered": True, "config": MANIFEST, "downgrade": MANIFEST, "plain shard": MANIFEST}


SENTENCE_SCRIPT = """
import json, sys
from sentence_transformers import SentenceTransformer
out = {}
for label, folder in json.loads(sys.argv[1]):
    try:
        out[label] = SentenceTransformer(folder, device="cpu").encode(["a sentence"]).tolist()
    except Exception as error:
        out[label] = type(error).__module__ + "." + type(error).__qualname__
print(json.dumps(out))
"""


def test_sentence_transformers_minilm_attacks(world: World) -> None:
    minilm = world.root / "minilm-encrypted"
    cases = [
        ("plain", str(minilm_source())),
        ("untampered", str(attack(world, "minilm", minilm))),
        ("modules.json", str(side_file(world, "minilm-modules", "modules.json", minilm))),
        ("1_Pooling/config.json", str(side_file(world, "minilm-pooling", "1_Pooling/config.json", minilm))),
        ("tokenizer", str(side_file(world, "minilm-tokenizer", "tokenizer_config.json", minilm))),
    ]
    out = run(sys.executable, SENTENCE_SCRIPT, cases, world.settings, world.root)
    assert isinstance(out["plain"], list) and out["untampered"] == out["plain"]
    for label in ("modules.json", "1_Pooling/config.json", "tokenizer"):
        assert out[label] == MANIFEST, (label, out[label])


def test_transformers_457_refuses_bin_downgrade_and_index_escape(world: World) -> None:
    if not TF457_PYTHON.is_file():
        if os.environ.get("PYCRYPTOTENSORS_SKIP_TF457") == "1":
            pytest.skip(".venv-tf457 missing (PYCRYPTOTENSORS_SKIP_TF457=1)")
        pytest.fail("the .venv-tf457 venv is missing: run `bash scripts/setup-tf457-venv.sh`")
    cases = [
        ("untampered", str(attack(world, "tf457-untampered")), {}),
        (".bin downgrade", str(bin_downgrade(world, "tf457-downgrade")), {}),
        ("index escape", str(index_escape(world, "tf457-escape", absolute=False)), {}),
        ("config", str(side_file(world, "tf457-config", "config.json")), {}),
    ]
    out = run(TF457_PYTHON, transformers_script(world), cases, world.settings, world.root)
    assert out == {"untampered": True, ".bin downgrade": NOT_ENCRYPTED, "index escape": MANIFEST, "config": MANIFEST}


def test_vllm_default_loader_refuses_bin_downgrade(world: World) -> None:
    """vLLM's default load path picks ``*.bin`` when a folder has no safetensors file: refused (one engine)."""
    if os.environ.get("PYCRYPTOTENSORS_SKIP_VLLM") == "1":
        pytest.skip("PYCRYPTOTENSORS_SKIP_VLLM=1")
    if not VLLM_PYTHON.is_file() or not (ROOT / ".venv-vllm" / ".pycryptotensors-vllm-setup").is_file():
        pytest.fail("the vLLM venv .venv-vllm is missing or incomplete: run `bash scripts/setup-vllm-venv.sh`")
    folder = bin_downgrade(world, "vllm-downgrade")
    job = world.root / "vllm-job.json"
    cases = [{"name": "bin", "model": str(folder)}]
    job.write_text(json.dumps({"prompts": INPUT_IDS, "max_tokens": 2, "cases": cases}))
    extra = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    result = subprocess.run(
        [str(VLLM_PYTHON), str(ROOT / "tests" / "_vllm_run.py"), str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env(world.settings), **extra},
        cwd=world.root,
        timeout=400,
    )
    assert result.returncode == 1 and "FAILED bin:" in result.stdout, result.stdout[-6000:]  # 1: a case failed
    assert "RESULT " not in result.stdout and NOT_ENCRYPTED in result.stdout, result.stdout[-6000:]
