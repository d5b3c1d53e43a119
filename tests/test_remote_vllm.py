"""vLLM serves a model from a remote folder URL (issue 19 item 4): ``open_remote_model(URL)`` checks the folder
and caches its small files; vLLM gets that cache folder as its model and ``load_format="cryptotensors"``; its
loader, in vLLM's own processes, streams each shard from the URL recorded in the cache by range requests.

vLLM's model argument must be a local folder or a Hub repository id: it reads config.json (and the tokenizer)
itself, before any loader runs, so a bare ``https://`` or ``s3://`` URL cannot be its model. One vLLM engine
start (minutes on CPU): the one case here. Runs with the vLLM venv (tests/test_vllm.py explains it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from _command import CLI
from _remote_servers import ObjectServer
from test_vllm import MAX_TOKENS, PROMPTS, RUNNER, build_model, vllm_python  # noqa: F401  (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*plain HTTP")


def test_vllm_serves_a_remote_model_folder_with_shards_streamed(tmp_path: Path, vllm_python: Path) -> None:  # noqa: F811
    from pycryptotensors.keys.files import read_key_file
    from pycryptotensors.model import open_remote_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        reference = build_model(tmp_path / "plain")
    keys = tmp_path / "keys"
    subprocess.run([*CLI, "keygen", "master", str(keys / "master.jwk"), "--kid", "remote-vllm"], check=True)
    subprocess.run([*CLI, "keygen", "signing", str(tmp_path / "pub.jwk"), "--kid", "remote-pub"], check=True)
    (keys / "pub.pub.jwk").write_bytes((tmp_path / "pub.pub.jwk").read_bytes())
    subprocess.run(
        [*CLI, "encrypt", str(tmp_path / "plain"), str(tmp_path / "enc"), "--quiet", "--plain", "*norm*",
         "--master-key", str(keys / "master.jwk"), "--signing-key", str(tmp_path / "pub.jwk")],
        check=True,
    )  # fmt: skip
    server = ObjectServer()
    server.start()
    try:
        for path in (tmp_path / "enc").rglob("*"):
            if path.is_file():
                server.put("llama/" + path.relative_to(tmp_path / "enc").as_posix(), path.read_bytes())
        publisher = read_key_file(tmp_path / "pub.pub.jwk")
        import pycryptotensors as pc

        check = pc.LoadOptions(trusted_signers=publisher, use_settings=False, use_environment=False)
        folder = open_remote_model(server.url("llama/"), check, cache_dir=tmp_path / "cache")
        server.counters.reset()
        case = {
            "name": "remote",
            "model": str(folder),
            "env": {"PYCRYPTOTENSORS_TRANSPARENT": "0"},  # the load format alone decrypts
            "llm": {
                "load_format": "cryptotensors",
                "model_loader_extra_config": {
                    "keys": [str(keys / "master.jwk")],
                    "trusted_signers": [str(tmp_path / "pub.pub.jwk")],
                    "require_encryption": True,
                },
            },
        }
        job = tmp_path / "job.json"
        job.write_text(json.dumps({"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "cases": [case]}))
        env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1")
        env.update(DO_NOT_TRACK="1", PYCRYPTOTENSORS_CONFIG=str(tmp_path / "none.toml"))
        (tmp_path / "none.toml").write_text("key_dirs = []\n")
        run = subprocess.run(
            [str(vllm_python), str(RUNNER), str(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=tmp_path, timeout=500, check=False,
        )  # fmt: skip
        shard_gets = [r for p, r in server.counters.log if p.endswith(".safetensors")]
    finally:
        server.stop()
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert run.returncode == 0 and line is not None, run.stdout[-6000:]
    assert json.loads(line[len("RESULT ") :])["tokens"] == reference
    assert any(not r.startswith("bytes=0-") for r in shard_gets)  # the weights came by range requests
    assert json.loads((keys / "master.jwk").read_text())["k"] not in run.stdout
