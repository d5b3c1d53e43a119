"""Transparent mode on its own: unmodified ``safetensors`` code reads CryptoTensors files.

Every check runs in a subprocess of this venv's interpreter, so that the start-up hook
(``pycryptotensors-transparent.pth`` -> ``_pycryptotensors_startup``) arms itself exactly as in real use. Each
script begins with ``from safetensors import safe_open`` by name, before anything has imported pycryptotensors,
the way transformers and vLLM do at import time. Keys come only from the settings file named by
``PYCRYPTOTENSORS_CONFIG`` (a key directory), never from code, since the point is that the code stays unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as st_numpy

import pycryptotensors as pc
import pycryptotensors.numpy as ct_numpy
from pycryptotensors.keys.files import write_key_file

METADATA = {"format": "pt", "note": "transparent"}
PLAIN_IN_ENCRYPTED = "norm"  # left unencrypted (but signed) in the encrypted file

# Every script starts like unmodified user code: safetensors imported by name before pycryptotensors ever is.
PRELUDE = """\
import sys
assert "_pycryptotensors_startup" in sys.modules, "the .pth start-up hook did not run"
assert "pycryptotensors" not in sys.modules, "pycryptotensors imported at interpreter start"
from safetensors import safe_open
import json
import os
import shutil
import pathlib
import numpy as np
P = json.loads(sys.argv[1])
EXPECTED = dict(np.load(P["expected"]))
HOOKED = getattr(safe_open, "__pycryptotensors__", False)


def as_numpy(value):
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)


def same(got, want, what):
    got = as_numpy(got)
    assert got.shape == np.shape(want), (what, got.shape, np.shape(want))
    assert got.dtype == np.asarray(want).dtype, (what, got.dtype, np.asarray(want).dtype)
    assert np.array_equal(got, want), what


def error_of(call):
    try:
        call()
    except Exception as error:  # the type is what the caller will see
        return type(error).__module__ + "." + type(error).__qualname__
    return None
"""


@dataclass(frozen=True)
class World:
    root: Path
    encrypted: Path
    plain: Path
    tampered: Path
    expected: Path
    settings: Path  # key directory with the master key and the publisher's public key
    no_keys: Path  # no key anywhere
    wrong_key: Path  # a master key with the right kid and the wrong bytes

    def argv(self) -> str:
        return json.dumps({k: str(v) for k, v in self.__dict__.items()})


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w": rng.standard_normal((6, 5, 7)).astype(np.float32),
        "big": rng.standard_normal((64, 48)).astype(np.float32),  # 12 KiB: 12 chunks of 1 KiB
        "ids": np.arange(24, dtype=np.int64).reshape(4, 6) - 11,
        "half": rng.standard_normal((3, 10)).astype(np.float16),
        "mask": rng.random((5, 4)) > 0.5,
        "bytes": rng.integers(0, 256, 100, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
        PLAIN_IN_ENCRYPTED: rng.standard_normal(7).astype(np.float32),
    }


def settings_file(path: Path, key_dir: Path | None) -> Path:
    path.write_text(f'key_dirs = ["{key_dir}"]\n' if key_dir else "key_dirs = []\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("transparent"))


def make_world(root: Path) -> World:
    """Keys, an encrypted file, its plain twin, a tampered copy and the settings files (shared with
    tests/test_transparent_entrypoints.py)."""
    master, signer = pc.generate_master_key(kid="enc-1"), pc.generate_signing_key(kid="publisher")
    keys, wrong = root / "keys", root / "wrong-keys"
    keys.mkdir()
    wrong.mkdir()
    write_key_file(keys / "master.jwk", master)
    write_key_file(keys / "publisher.pub.jwk", signer.verify_key)
    write_key_file(wrong / "master.jwk", pc.generate_master_key(kid="enc-1"))
    write_key_file(wrong / "publisher.pub.jwk", signer.verify_key)

    data = tensors()
    encrypted = root / "encrypted.safetensors"
    names = [n for n in data if n != PLAIN_IN_ENCRYPTED]
    ct_numpy.save_file(
        data,
        encrypted,
        metadata=METADATA,
        config={"enc_key": master, "sign_key": signer, "tensors": names, "chunk_size": 1024},
    )
    plain = root / "plain.safetensors"
    st_numpy.save_file(data, str(plain), metadata=METADATA)
    expected = root / "expected.npz"
    np.savez(expected, **data)

    tampered = root / "tampered.safetensors"
    blob = bytearray(encrypted.read_bytes())
    (n,) = np.frombuffer(bytes(blob[:8]), "<u8")
    header = json.loads(bytes(blob[8 : 8 + int(n)]))
    blob[8 + int(n) + header["w"]["data_offsets"][0] + 3] ^= 0x20
    tampered.write_bytes(bytes(blob))

    return World(
        root,
        encrypted,
        plain,
        tampered,
        expected,
        settings_file(root / "settings.toml", keys),
        settings_file(root / "no-keys.toml", None),
        settings_file(root / "wrong-key.toml", wrong),
    )


def environment(settings: Path, **extra: str) -> dict[str, str]:
    drop = {"CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYCRYPTOTENSORS_CONFIG"] = str(settings)
    env.update(extra)
    return env


def run(world: World, script: str, settings: Path | None = None, *, python: str = sys.executable, **extra: str) -> Any:
    """Run PRELUDE + script in a fresh interpreter (of this venv unless ``python`` names another one); the
    script prints one JSON document last."""
    result = subprocess.run(
        [python, "-c", PRELUDE + textwrap.dedent(script), world.argv()],
        capture_output=True,
        text=True,
        env=environment(settings or world.settings, **extra),
        cwd=world.root,
        timeout=300,
    )
    assert result.returncode == 0, f"script failed:\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{result.stderr}"
    return json.loads(lines[-1])


def test_start_up_hook_is_installed() -> None:
    pth = Path(sysconfig.get_paths()["purelib"]) / "pycryptotensors-transparent.pth"
    assert pth.is_file(), f"{pth} missing: run `python -m pycryptotensors.integrations.transparent install`"


def test_hook_patches_safetensors_on_import(world: World) -> None:
    out = run(
        world,
        """
        import safetensors
        numpy_before = "numpy" in sys.modules
        import safetensors.numpy
        import safetensors.torch
        from pycryptotensors.integrations import transparent
        print(json.dumps({
            "hooked": HOOKED,
            "same_object": safetensors.safe_open is safe_open,
            "wrapped_is_original": safe_open.__wrapped__ is safetensors._safetensors_rust.safe_open,
            "module_patched": {
                m.__name__ + "." + a: getattr(getattr(m, a), "__pycryptotensors__", False)
                for m in (safetensors.numpy, safetensors.torch) for a in ("safe_open", "load")
            },
            "is_enabled": transparent.is_enabled(),
        }))
        """,
    )
    assert out == {
        "hooked": True,
        "same_object": True,
        "wrapped_is_original": True,
        "module_patched": {
            "safetensors.numpy.safe_open": True,
            "safetensors.numpy.load": True,
            "safetensors.torch.safe_open": True,
            "safetensors.torch.load": True,
        },
        "is_enabled": True,
    }


def test_importing_safetensors_does_not_import_torch(world: World) -> None:
    out = run(
        world,
        """
        with safe_open(P["encrypted"], framework="np") as f:
            f.get_tensor("w")
        print(json.dumps({"torch": "torch" in sys.modules}))
        """,
    )
    assert out == {"torch": False}


SAFE_OPEN_SCRIPT = """
import torch

S = np.s_
INDICES = {
    "w": [S[1], S[-1], S[1:3], S[:, 2], S[..., 1], S[::2, 1:], S[1:5:2, ..., ::3], S[...], S[:], S[2, ..., 3],
          S[::-1], S[4:1:-2, :, -3:], S[10:20], S[:, 1:1], S[-3:, -2], S[1, 2], S[1, 2, 3], S[..., -1, ::2],
          S[0:6, 0:5, 0:7], S[-100:100]],
    "big": [S[3], S[63], S[5:40:3, 7:45:5], S[:, 17], S[..., -1], S[10:50], S[::-3, ::7], S[...], S[21:22, 0:48],
            S[::5]],
    "ids": [S[1:3, ::2], S[-1], S[:, -1], S[::-1, ::-1]],
    "half": [S[:, 3:8], S[2], S[..., ::3]],
    "mask": [S[2:, 1], S[..., 0], S[::2]],
    "bytes": [S[17:83:4], S[99], S[-5:], S[::-7]],
    "norm": [S[2:5], S[::2], S[-1]],
}

with safe_open(P["plain"], framework="np") as real:
    REAL_KEYS, REAL_META = real.keys(), real.metadata()
    REAL_SHAPES = {k: (real.get_slice(k).get_shape(), real.get_slice(k).get_dtype()) for k in REAL_KEYS}

openers = []
for framework in ("np", "numpy", "pt", "torch"):
    for backend in (None, "mmap", "pread"):
        kwargs = {} if backend is None else {"backend": backend}
        openers.append((framework, f"{framework} device=cpu {kwargs}",
                        lambda fw=framework, kw=kwargs: safe_open(P["encrypted"], framework=fw, device="cpu", **kw)))
openers.append(("pt", "positional, PathLike", lambda: safe_open(pathlib.Path(P["encrypted"]), "pt", "cpu")))
openers.append(("np", "device defaulted", lambda: safe_open(P["encrypted"], "np")))
openers.append(("pt", "pt pread no device", lambda: safe_open(P["encrypted"], framework="pt", backend="pread")))

checked = []
for framework, label, opener in openers:
    kind = torch.Tensor if framework in ("pt", "torch") else np.ndarray
    with opener() as f:
        assert f.keys() == REAL_KEYS == sorted(EXPECTED), (label, f.keys())
        assert sorted(f.offset_keys()) == sorted(EXPECTED), label
        assert f.metadata() == REAL_META == {"format": "pt", "note": "transparent"}, (label, f.metadata())
        for name, want in EXPECTED.items():
            got = f.get_tensor(name)
            assert isinstance(got, kind), (label, name, type(got))
            if kind is torch.Tensor:
                assert got.device.type == "cpu", (label, name, got.device)
            same(got, want, (label, name))
            sl = f.get_slice(name)
            assert (sl.get_shape(), sl.get_dtype()) == tuple(REAL_SHAPES[name]), (label, name)
            for index in INDICES.get(name, []):
                part = sl[index]
                assert isinstance(part, kind), (label, name, index, type(part))
                same(part, np.asarray(want[index]), (label, name, index))
        everything = f.get_tensors()
        assert sorted(everything) == sorted(EXPECTED), label
        for name, want in EXPECTED.items():
            same(everything[name], want, (label, "get_tensors", name))
    checked.append(label)

# without a context manager, as some loaders use it
handle = safe_open(P["encrypted"], framework="pt", device="cpu", backend="mmap")
same(handle.get_slice("big")[3:9, ::4], EXPECTED["big"][3:9, ::4], "no context manager")
del handle
print(json.dumps({"checked": len(checked), "handle": type(safe_open(P["encrypted"], "np")).__module__}))
"""


def test_safe_open_encrypted_every_argument(world: World) -> None:
    out = run(world, SAFE_OPEN_SCRIPT)
    assert out == {"checked": 15, "handle": "pycryptotensors.reading.handle"}


def test_load_functions_on_encrypted_files(world: World) -> None:
    out = run(
        world,
        """
        import torch
        import safetensors.numpy
        import safetensors.torch
        from safetensors.numpy import load as np_load, load_file as np_load_file
        from safetensors.torch import load as pt_load, load_file as pt_load_file

        data = pathlib.Path(P["encrypted"]).read_bytes()
        results = {
            "torch.load_file": (torch.Tensor, pt_load_file(P["encrypted"])),
            "torch.load_file device pread": (torch.Tensor, pt_load_file(P["encrypted"], device="cpu", backend="pread")),
            "torch.load_file PathLike mmap": (
                torch.Tensor, safetensors.torch.load_file(pathlib.Path(P["encrypted"]), backend="mmap")),
            "torch.load bytes": (torch.Tensor, pt_load(data)),
            "numpy.load_file": (np.ndarray, np_load_file(P["encrypted"])),
            "numpy.load_file pread": (np.ndarray, np_load_file(P["encrypted"], backend="pread")),
            "numpy.load bytes": (np.ndarray, np_load(data)),
            "numpy.load module attribute": (np.ndarray, safetensors.numpy.load(data)),
        }
        for label, (kind, loaded) in results.items():
            assert sorted(loaded) == sorted(EXPECTED), (label, sorted(loaded))
            for name, want in EXPECTED.items():
                assert isinstance(loaded[name], kind), (label, name, type(loaded[name]))
                same(loaded[name], want, (label, name))
        print(json.dumps(sorted(results)))
        """,
    )
    assert len(out) == 8


PLAIN_SCRIPT = """
import torch
import safetensors.numpy
import safetensors.torch
from safetensors.torch import load_file as pt_load_file

def kind(value):
    return type(value).__module__ + "." + type(value).__qualname__

def digest(tensors):
    return {k: [kind(v), list(as_numpy(v).shape), str(as_numpy(v).dtype), as_numpy(v).tobytes().hex()]
            for k, v in sorted(tensors.items())}

report = {}
for framework in ("np", "pt"):
    for backend in ("mmap", "pread"):
        with safe_open(P["plain"], framework=framework, device="cpu", backend=backend) as f:
            report[f"{framework}/{backend}"] = {
                "handle": kind(f), "slice": kind(f.get_slice("w")), "keys": f.keys(), "metadata": f.metadata(),
                "tensors": digest({k: f.get_tensor(k) for k in f.keys()}),
                "part": as_numpy(f.get_slice("big")[3:9, 4:20:3]).tolist(),
            }
data = pathlib.Path(P["plain"]).read_bytes()
report["torch.load_file"] = digest(pt_load_file(P["plain"]))
report["torch.load"] = digest(safetensors.torch.load(data))
report["numpy.load_file"] = digest(safetensors.numpy.load_file(P["plain"], backend="pread"))
report["numpy.load"] = digest(safetensors.numpy.load(data))
for name, want in EXPECTED.items():
    same(safetensors.numpy.load_file(P["plain"])[name], want, name)

bad = pathlib.Path("garbage.safetensors")
bad.write_bytes((100).to_bytes(8, "little") + b"{not json" + bytes(100))
empty = pathlib.Path("empty.safetensors")
empty.write_bytes(b"")
report["errors"] = {
    "missing file": error_of(lambda: safe_open("does-not-exist.safetensors", framework="pt")),
    "garbage header": error_of(lambda: safe_open(str(bad), framework="np")),
    "empty file": error_of(lambda: safe_open(str(empty), framework="np")),
    "garbage bytes": error_of(lambda: safetensors.torch.load(bad.read_bytes())),
    "bad framework": error_of(lambda: safe_open(P["plain"], framework="nope")),
}
report["hooked"] = HOOKED
print(json.dumps(report))
"""


def test_plain_files_go_to_safetensors_untouched(world: World) -> None:
    on = run(world, PLAIN_SCRIPT)
    off = run(world, PLAIN_SCRIPT, PYCRYPTOTENSORS_TRANSPARENT="0")
    assert on.pop("hooked") is True and off.pop("hooked") is False
    assert on["np/mmap"]["handle"] == "builtins.safe_open", on["np/mmap"]["handle"]  # safetensors' own Rust class
    assert on["pt/pread"]["slice"] == "builtins.PySafeSlice", on["pt/pread"]["slice"]
    for key in off:
        assert on[key] == off[key], key


def test_plain_files_do_not_import_the_crypto_machinery(world: World) -> None:
    """A process that only opens plain files pays for a header sniff, not for the ciphers, keys and policy."""
    out = run(
        world,
        """
        import safetensors.numpy
        HEAVY = ("cryptography", "regopy", "pycryptotensors.config", "pycryptotensors.reading.reader",
                 "pycryptotensors.keys.jwk", "pycryptotensors.cipher.aead", "pycryptotensors.policy.rego")
        with safe_open(P["plain"], framework="np") as f:
            same(f.get_tensor("w"), EXPECTED["w"], "plain")
        same(safetensors.numpy.load_file(P["plain"])["big"], EXPECTED["big"], "plain load_file")
        after_plain = sorted(m for m in HEAVY if m in sys.modules)
        with safe_open(P["encrypted"], framework="np") as f:
            same(f.get_tensor("w"), EXPECTED["w"], "encrypted")
        print(json.dumps({"after_plain": after_plain, "after_encrypted": sorted(m for m in HEAVY if m in sys.modules)}))
        """,
    )
    assert out["after_plain"] == []
    assert {"cryptography", "pycryptotensors.reading.reader", "pycryptotensors.policy.rego"} <= set(
        out["after_encrypted"]
    )


def test_encrypted_file_without_key_fails_with_missing_key(world: World) -> None:
    script = """
    import torch
    import safetensors.numpy
    import safetensors.torch
    data = pathlib.Path(P["encrypted"]).read_bytes()
    calls = {
        "safe_open np": lambda: safe_open(P["encrypted"], framework="np"),
        "safe_open pt pread": lambda: safe_open(P["encrypted"], framework="pt", device="cpu", backend="pread"),
        "torch.load_file": lambda: safetensors.torch.load_file(P["encrypted"]),
        "torch.load bytes": lambda: safetensors.torch.load(data),
        "numpy.load_file": lambda: safetensors.numpy.load_file(P["encrypted"]),
        "numpy.load bytes": lambda: safetensors.numpy.load(data),
    }
    print(json.dumps({label: error_of(call) for label, call in calls.items()}))
    """
    missing = run(world, script, world.no_keys)
    assert set(missing.values()) == {"pycryptotensors.errors.MissingKeyError"}, missing
    wrong = run(world, script, world.wrong_key)
    assert set(wrong.values()) == {"pycryptotensors.errors.WrongKeyError"}, wrong


def test_tampered_encrypted_file_fails_with_integrity_error(world: World) -> None:
    out = run(
        world,
        """
        import safetensors.torch
        with safe_open(P["tampered"], framework="np") as f:
            same(f.get_tensor("ids"), EXPECTED["ids"], "an untouched tensor still reads")
            errors = {"get_tensor": error_of(lambda: f.get_tensor("w"))}
            errors["get_slice"] = error_of(lambda: f.get_slice("w")[0])
        errors["load_file"] = error_of(lambda: safetensors.torch.load_file(P["tampered"]))
        errors["load bytes"] = error_of(lambda: safetensors.torch.load(pathlib.Path(P["tampered"]).read_bytes()))
        print(json.dumps(errors))
        """,
    )
    assert set(out.values()) == {"pycryptotensors.errors.IntegrityError"}, out


def test_transparent_off_hands_out_ciphertext(world: World) -> None:
    """Why the mode matters: plain safetensors reads an encrypted file without complaint, as garbage weights."""
    out = run(
        world,
        """
        import safetensors.torch
        assert not HOOKED
        with safe_open(P["encrypted"], framework="np") as f:
            w = f.get_tensor("w")
            metadata = f.metadata()
        loaded = safetensors.torch.load_file(P["encrypted"])
        print(json.dumps({
            "shape_kept": list(w.shape) == list(EXPECTED["w"].shape),
            "values_differ": not np.array_equal(w, EXPECTED["w"]),
            "torch_values_differ": not np.array_equal(loaded["big"].numpy(), EXPECTED["big"]),
            "plain_tensor_same": np.array_equal(loaded["norm"].numpy(), EXPECTED["norm"]),
            "crypto_metadata_visible": "__encryption__" in metadata,
            "pycryptotensors_imported": "pycryptotensors" in sys.modules,
        }))
        """,
        PYCRYPTOTENSORS_TRANSPARENT="0",
    )
    assert out == {
        "shape_kept": True,
        "values_differ": True,
        "torch_values_differ": True,
        "plain_tensor_same": True,
        "crypto_metadata_visible": True,
        "pycryptotensors_imported": False,
    }


def test_enable_disable_at_run_time(world: World) -> None:
    out = run(
        world,
        """
        import safetensors
        import safetensors.numpy
        import safetensors.torch
        from pycryptotensors.integrations import transparent

        original = safetensors._safetensors_rust.safe_open
        steps = {"start": transparent.is_enabled()}
        transparent.disable()
        transparent.disable()  # idempotent
        steps["disabled"] = transparent.is_enabled()
        steps["restored"] = {
            m.__name__ + "." + a: not getattr(getattr(m, a), "__pycryptotensors__", False)
            for m in (safetensors, safetensors.numpy, safetensors.torch) for a in ("safe_open", "load") if hasattr(m, a)
        }
        steps["hook_removed"] = not any(type(f).__name__ == "SafetensorsHook" for f in sys.meta_path)
        with safetensors.safe_open(P["encrypted"], framework="np") as f:
            steps["ciphertext_after_disable"] = not np.array_equal(f.get_tensor("w"), EXPECTED["w"])
        steps["load_file_ciphertext"] = not np.array_equal(
            safetensors.torch.load_file(P["encrypted"])["w"].numpy(), EXPECTED["w"])
        # a name imported by value before disable() keeps the wrapper (documented in transparent.py)
        steps["by_value_name_kept"] = getattr(safe_open, "__pycryptotensors__", False)

        transparent.enable()
        transparent.enable()  # idempotent: no wrapper around a wrapper
        steps["enabled"] = transparent.is_enabled()
        assert safetensors.safe_open.__wrapped__ is original
        assert safetensors.torch.load.__wrapped__.__module__ == "safetensors.torch"
        with safetensors.safe_open(P["encrypted"], framework="pt") as f:
            same(f.get_tensor("w"), EXPECTED["w"], "after enable")
        same(safetensors.torch.load_file(P["encrypted"])["big"], EXPECTED["big"], "load_file after enable")
        print(json.dumps(steps))
        """,
    )
    # disable() must restore every function it replaced, so that load_file (which calls safetensors.torch's
    # module-global safe_open) reads raw bytes again
    assert out == {
        "start": True,
        "disabled": False,
        "restored": {
            "safetensors.safe_open": True,
            "safetensors.numpy.safe_open": True,
            "safetensors.numpy.load": True,
            "safetensors.torch.safe_open": True,
            "safetensors.torch.load": True,
        },
        "hook_removed": True,
        "ciphertext_after_disable": True,
        "load_file_ciphertext": True,
        "by_value_name_kept": True,
        "enabled": True,
    }


def test_enable_at_run_time_when_off_at_start(world: World) -> None:
    out = run(
        world,
        """
        assert not HOOKED
        assert not any(type(f).__name__ == "SafetensorsHook" for f in sys.meta_path)
        import safetensors
        from pycryptotensors.integrations import transparent
        steps = {"start": transparent.is_enabled()}
        transparent.enable()
        steps["enabled"] = transparent.is_enabled()
        from safetensors import safe_open as later
        import safetensors.torch  # first imported now: patched by the hook enable() installed
        steps["torch_module_patched"] = getattr(safetensors.torch.safe_open, "__pycryptotensors__", False)
        with later(P["encrypted"], framework="np") as f:
            same(f.get_tensor("big"), EXPECTED["big"], "safe_open after enable")
        same(safetensors.torch.load_file(P["encrypted"])["w"], EXPECTED["w"], "torch.load_file after enable")
        steps["early_name_is_original"] = later.__wrapped__ is safe_open
        print(json.dumps(steps))
        """,
        PYCRYPTOTENSORS_TRANSPARENT="0",
    )
    assert out == {"start": False, "enabled": True, "torch_module_patched": True, "early_name_is_original": True}


def test_configure_supplies_keys_in_code(world: World) -> None:
    out = run(
        world,
        """
        import pycryptotensors as pc
        from pycryptotensors.integrations import transparent
        from pycryptotensors.keys.files import read_key_file

        keys_dir = pathlib.Path(P["settings"]).parent / "keys"
        ring = pc.KeyRing(read_key_file(keys_dir / "master.jwk") + read_key_file(keys_dir / "publisher.pub.jwk"))
        steps = {"before": error_of(lambda: safe_open(P["encrypted"], framework="np"))}
        transparent.configure(pc.LoadOptions(keyring=ring))
        with safe_open(P["encrypted"], framework="np") as f:
            same(f.get_tensor("w"), EXPECTED["w"], "configured")
        steps["configured"] = "ok"
        transparent.configure(None)
        steps["after_reset"] = error_of(lambda: safe_open(P["encrypted"], framework="np"))
        print(json.dumps(steps))
        """,
        world.no_keys,
    )
    assert out == {
        "before": "pycryptotensors.errors.MissingKeyError",
        "configured": "ok",
        "after_reset": "pycryptotensors.errors.MissingKeyError",
    }


REQUIRE_SCRIPT = """
import safetensors.numpy
import safetensors.torch

def attempt(target, with_bytes):
    calls = {
        "safe_open": lambda: safe_open(target, framework="np"),
        "torch.load_file": lambda: safetensors.torch.load_file(target),
        "numpy.load_file": lambda: safetensors.numpy.load_file(target),
    }
    if with_bytes:
        calls["torch.load bytes"] = lambda: safetensors.torch.load(pathlib.Path(target).read_bytes())
    return {label: error_of(call) for label, call in calls.items()}

print(json.dumps({
    "protected plain": attempt(TARGETS["protected"], TARGETS["bytes"]),
    "other plain": attempt(P["plain"], False),
    "encrypted": attempt(P["encrypted"], True),
}))
"""


def test_require_encryption_refuses_plain_files(world: World) -> None:
    """A consumer who requires encryption (docs/KEYS.md) must not get a plain file through transparent mode either.

    This is the attack the setting exists for: the encrypted model is swapped for a plain (or crypto-stripped)
    file, and unmodified code (transformers, vLLM) would load it without a word.
    """
    protected = world.root / "protected"
    protected.mkdir(exist_ok=True)
    swapped = protected / "model.safetensors"
    shutil.copy(world.plain, swapped)
    keys = world.root / "keys"
    everywhere = world.root / "require-everywhere.toml"
    everywhere.write_text(f'key_dirs = ["{keys}"]\nrequire_encryption = true\n')
    by_rule = world.root / "require-by-rule.toml"
    by_rule.write_text(f'key_dirs = ["{keys}"]\n\n[[rule]]\npath = "{protected}"\nrequire_encryption = true\n')
    refused = "pycryptotensors.errors.NotEncryptedError"

    for settings, with_bytes in ((everywhere, True), (by_rule, False)):  # rules apply to paths only, not bytes
        targets = {"protected": str(swapped), "bytes": with_bytes}
        out = run(world, f"TARGETS = {targets!r}\n" + REQUIRE_SCRIPT, settings)
        assert out["encrypted"] == dict.fromkeys(out["encrypted"]), (settings.name, out["encrypted"])
        assert out["protected plain"] == dict.fromkeys(out["protected plain"], refused), (settings.name, out)
        if settings is by_rule:
            assert out["other plain"] == dict.fromkeys(out["other plain"]), out["other plain"]
        else:
            assert out["other plain"] == dict.fromkeys(out["other plain"], refused), out["other plain"]


@pytest.mark.parametrize(
    ("value", "hooked"), [("0", False), ("false", False), (" Off ", False), ("no", False), ("1", True), ("", True)]
)
def test_environment_switch(world: World, value: str, hooked: bool) -> None:
    assert run(world, "print(json.dumps(HOOKED))", PYCRYPTOTENSORS_TRANSPARENT=value) is hooked
