"""Run by tests/test_transformers.py with the python of ``.venv-tf457`` (transformers 4.57, see
scripts/setup-tf457-venv.sh): ``from_pretrained`` of an encrypted, sharded model directory, with no code
change, must give exactly the logits the main venv computed from the plain model.

Usage: python tests/_tf457_run.py MODEL_DIR EXPECTED_LOGITS.pt INPUT_IDS_JSON
Prints one JSON line; exits non-zero on any mismatch.
"""

import json
import sys

assert "_pycryptotensors_startup" in sys.modules, "the transparent-mode start-up hook (.pth) is not installed"
assert "pycryptotensors" not in sys.modules, "pycryptotensors was imported at interpreter start"

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def main() -> int:
    model_dir, expected_path, input_ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    import safetensors

    report = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "hooked": bool(getattr(safetensors.safe_open, "__pycryptotensors__", False)),
    }
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    model.eval()
    report["loading_info"] = {k: sorted(map(str, v)) for k, v in info.items() if v}
    with torch.no_grad():
        logits = model(torch.tensor(input_ids)).logits
    expected = torch.load(expected_path)
    report["same_shape"] = logits.shape == expected.shape
    report["equal"] = bool(report["same_shape"] and torch.equal(logits, expected))
    if not report["equal"] and report["same_shape"]:
        report["max_abs_diff"] = float((logits - expected).abs().max())
    print(json.dumps(report))
    ok = report["equal"] and report["hooked"] and report["transformers"].startswith("4.57.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
