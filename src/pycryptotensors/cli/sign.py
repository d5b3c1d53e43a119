"""``sign``: write the signed manifest (``model.sig``) of a model folder whose shards are already encrypted.

``encrypt`` and ``rewrap`` of a folder call :func:`sign_folder` themselves as their last step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError, NotEncryptedError
from ..keys.jwk import SigningKey
from ..model.folder import MANIFEST_NAME, SHARD_SUFFIX, is_weight_file, list_files
from ..model.manifest import write_manifest
from .common import add_output_options, emit, one_key

SIGN_HELP = """\
Sign a model folder: write model.sig, which lists every file of the folder (index, configs, tokenizer,
templates, code, model card, sub-modules such as 1_Pooling/) with its size and SHA-256, and binds each
encrypted shard by the digest of its signed header. Consumers check it before any key is released: a file
changed, added or missing, or a shard from another release, is refused. 'encrypt' and 'rewrap' of a folder
do this themselves; use 'sign' after editing a side file of an encrypted folder. The format is OpenSSF
model-signing's (a Sigstore bundle, DSSE, in-toto), signed with your Ed25519 publisher key (docs/FORMAT.md).

examples:
  pycryptotensors sign ./llama-enc --signing-key acme.jwk
  pycryptotensors sign ./llama-enc --signing-key acme.jwk --force     # replace an existing model.sig
"""


def sign_folder(folder: str | os.PathLike[str], signer: SigningKey, *, allow_plain_weights: bool = False) -> Path:
    """Check that the folder is fit to sign (every shard encrypted; no other weight format unless allowed),
    then write its manifest atomically, as the last file."""
    from ..integrations.transparent import is_crypto_file

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: 'sign' signs a model folder")
    names = list_files(root)
    if not names:
        raise ConfigError(f"{root} holds no file to sign")
    for name in names:
        if name.endswith(SHARD_SUFFIX) and not is_crypto_file(root / name):
            raise NotEncryptedError(f"{root / name} is a plain safetensors file: encrypt the folder first")
        if is_weight_file(name) and not name.endswith(SHARD_SUFFIX) and not allow_plain_weights:
            raise ConfigError(
                f"{root / name} is a plaintext checkpoint: remove it, or sign with --allow-plain-weights to list it"
            )
    return write_manifest(root, signer)


def run_sign(args: argparse.Namespace) -> int:
    signer: SigningKey = one_key(args.signing_key, SigningKey, "private signing key")
    root = Path(args.folder)
    if os.path.lexists(root / MANIFEST_NAME) and not args.force:
        raise FileExistsError(f"refusing to overwrite {root / MANIFEST_NAME} (use --force to replace it)")
    target = sign_folder(root, signer, allow_plain_weights=args.allow_plain_weights)
    files = len(list_files(root))
    emit(args, {"manifest": str(target), "files": files, "signer_kid": signer.kid}, f"signed {files} file(s): {target}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sign",
        help="sign a whole model folder (model.sig)",
        description=SIGN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="an encrypted model folder")
    parser.add_argument("--signing-key", required=True, metavar="FILE", help="JWK file of the private signing key")
    parser.add_argument(
        "--allow-plain-weights", action="store_true", help="list other checkpoint formats (*.bin, *.pt ...) too"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model.sig")
    add_output_options(parser)
    parser.set_defaults(run=run_sign)
