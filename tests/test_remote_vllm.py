"""vLLM serves a model from a remote folder URL (issue 19 item 4).

Two ways: the URL itself as vLLM's model with ``load_format="pycryptotensors"`` (our plugin replaces it, before
vLLM reads config.json or the tokenizer, by the checked cache folder :func:`open_remote_model` builds); or that
cache folder passed by the caller (``load_format="cryptotensors"``, the older name). Either way the loader, in
vLLM's own processes, streams each shard from its URL by range requests. Each test starts one vLLM engine
(minutes on CPU). Runs with the vLLM venv (tests/test_vllm.py explains it).
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


def _encrypted_model(tmp_path: Path) -> tuple[list[list[int]], Path]:
    """The tiny Llama (its greedy tokens with transformers) encrypted and signed in tmp_path/enc."""
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
    return reference, tmp_path / "enc"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _extra(tmp_path: Path) -> dict:
    return {
        "keys": [str(tmp_path / "keys" / "master.jwk")],
        "trusted_signers": [str(tmp_path / "pub.pub.jwk")],
        "require_encryption": True,
    }


def _run_vllm(tmp_path: Path, python: Path, cases: list[dict], env: dict | None = None) -> subprocess.CompletedProcess:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "cases": cases}))
    run_env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    run_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1")
    run_env.update(DO_NOT_TRACK="1", PYCRYPTOTENSORS_CONFIG=str(tmp_path / "none.toml"))
    run_env.update(PYCRYPTOTENSORS_CACHE_DIR=str(tmp_path / "cache"), PYCRYPTOTENSORS_REMOTE_RETRIES="1")
    run_env.update(env or {})
    (tmp_path / "none.toml").write_text("key_dirs = []\n")
    return subprocess.run(
        [str(python), str(RUNNER), str(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=run_env, cwd=tmp_path, timeout=500, check=False,
    )  # fmt: skip


def _result(run: subprocess.CompletedProcess, name: str) -> list[list[int]]:
    prefix = "RESULT "
    for line in run.stdout.splitlines():
        if line.startswith(prefix) and json.loads(line[len(prefix) :])["name"] == name:
            return json.loads(line[len(prefix) :])["tokens"]
    raise AssertionError(run.stdout[-6000:])


def _url_case(name: str, url: str, tmp_path: Path) -> dict:
    return {
        "name": name,
        "model": url,  # the URL itself: no open_remote_model call by the caller
        "env": {"PYCRYPTOTENSORS_TRANSPARENT": "0"},  # the load format alone decrypts
        "llm": {"load_format": "pycryptotensors", "model_loader_extra_config": _extra(tmp_path)},
    }


def test_vllm_takes_an_http_model_url_directly(tmp_path: Path, vllm_python: Path) -> None:  # noqa: F811
    """``LLM(model="https://host/path/llama-enc/", load_format="pycryptotensors")``; a tampered config.json in
    another folder is refused (ManifestError naming the URL) before vLLM reads it or fetches a shard."""
    reference, enc = _encrypted_model(tmp_path)
    server = ObjectServer()
    server.start()
    try:
        for name, data in _files(enc).items():
            server.put("llama/" + name, data)
            server.put("bad/" + name, data.replace(b'"llama"', b'"mistral"') if name == "config.json" else data)
        cases = [_url_case("tampered", server.url("bad/"), tmp_path), _url_case("url", server.url("llama/"), tmp_path)]
        run = _run_vllm(tmp_path, vllm_python, cases)
        log = list(server.counters.log)
    finally:
        server.stop()
    assert _result(run, "url") == reference
    good_shards = [r for p, r in log if p.startswith("/llama/") and p.endswith(".safetensors")]
    assert good_shards and any(r and not r.startswith("bytes=0-") for r in good_shards)  # streamed by range
    assert all(r for p, r in log if p.endswith(".safetensors"))  # never a whole-shard GET
    assert not any(p.startswith("/bad/") and p.endswith(".safetensors") for p, _ in log)
    refused = next(x for x in run.stdout.splitlines() if x.startswith("FAILED tampered"))
    assert "ManifestError" in refused and server.url("bad/") in refused, refused
    assert json.loads((tmp_path / "keys" / "master.jwk").read_text())["k"] not in run.stdout


def test_vllm_takes_an_s3_model_url_directly(tmp_path: Path, vllm_python: Path) -> None:  # noqa: F811
    """``LLM(model="s3://bucket/llama/", load_format="pycryptotensors")`` against moto's S3 server."""
    pytest.importorskip("moto", reason="needs moto[server] (test extra)")
    import boto3

    from _remote_servers import S3Proxy

    reference, enc = _encrypted_model(tmp_path)
    proxy = S3Proxy()
    proxy.start()
    try:
        client = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{proxy.moto_port}", region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        )  # fmt: skip
        client.create_bucket(Bucket="bucket")
        for name, data in _files(enc).items():
            client.put_object(Bucket="bucket", Key="llama/" + name, Body=data)
        env = {
            "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
        }  # fmt: skip
        run = _run_vllm(tmp_path, vllm_python, [_url_case("s3", "s3://bucket/llama/", tmp_path)], env)
        log = list(proxy.counters.log)
    finally:
        proxy.stop()
    assert _result(run, "s3") == reference
    shards = [r for p, r in log if p.endswith(".safetensors")]
    assert shards and all(shards) and any(not r.startswith("bytes=0-") for r in shards)  # by range, never whole
    assert json.loads((tmp_path / "keys" / "master.jwk").read_text())["k"] not in run.stdout


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


def test_remote_model_url_is_ours_only_with_our_load_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook vLLM's EngineArgs gets (no vLLM needed): another load format keeps the URL for vLLM's own
    handling; with ours an unreachable folder or one with credentials in its URL raises RemoteSourceError
    naming the URL without the secret."""
    from types import SimpleNamespace

    from pycryptotensors.errors import RemoteSourceError
    from pycryptotensors.integrations.vllm import LOAD_FORMATS, _remote_model

    assert set(LOAD_FORMATS) == {"pycryptotensors", "cryptotensors"}
    args = SimpleNamespace(
        load_format="runai_streamer", model="s3://b/m/", tokenizer=None, model_loader_extra_config={}
    )
    _remote_model(args)
    assert args.model == "s3://b/m/"
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "1")
    for url, shown in (("http://127.0.0.1:9/m/", "http://127.0.0.1:9/m/"), ("https://u:s3cret@127.0.0.1:9/m/", None)):
        args = SimpleNamespace(load_format="pycryptotensors", model=url, tokenizer=None, model_loader_extra_config={})
        with pytest.raises(RemoteSourceError) as caught:
            _remote_model(args)
        assert "s3cret" not in str(caught.value) and "127.0.0.1:9" in str(caught.value)
        if shown:
            assert shown in str(caught.value)
        assert args.model == url


def test_vllm_serve_takes_a_model_url_directly(tmp_path: Path, vllm_python: Path) -> None:  # noqa: F811
    """``vllm serve URL --load-format pycryptotensors --model-loader-extra-config JSON`` (vLLM's OpenAI server;
    run as its module: vllm-cpu's ``vllm`` script looks up a ``vllm`` distribution that it does not install)."""
    import socket
    import time
    import urllib.request

    reference, enc = _encrypted_model(tmp_path)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = ObjectServer()
    server.start()
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    env.update(HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.update(PYCRYPTOTENSORS_TRANSPARENT="0", PYCRYPTOTENSORS_CONFIG=str(tmp_path / "none.toml"))
    env.update(PYCRYPTOTENSORS_CACHE_DIR=str(tmp_path / "cache"))
    (tmp_path / "none.toml").write_text("key_dirs = []\n")
    api = f"http://127.0.0.1:{port}/v1/"
    proc = None
    try:
        for name, data in _files(enc).items():
            server.put("llama/" + name, data)
        url = server.url("llama/")
        proc = subprocess.Popen(
            [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", url,
             "--load-format", "pycryptotensors", "--model-loader-extra-config", json.dumps(_extra(tmp_path)),
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "64", "--skip-tokenizer-init",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                models = json.load(urllib.request.urlopen(api + "models", timeout=2))
                break
            except OSError:
                time.sleep(2)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-6000:])
        assert [m["id"] for m in models["data"]] == [url]  # served under the URL it was given
        outputs = []
        for prompt in PROMPTS:
            body = {"model": url, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
            body["return_token_ids"] = True
            request = urllib.request.Request(
                api + "completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            outputs.append(json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["token_ids"])
        log = list(server.counters.log)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        server.stop()
    assert outputs == reference
    shards = [r for p, r in log if p.endswith(".safetensors")]
    assert shards and all(shards) and any(not r.startswith("bytes=0-") for r in shards)  # by range, never whole
    assert json.loads((tmp_path / "keys" / "master.jwk").read_text())["k"] not in (tmp_path / "serve.log").read_text()
