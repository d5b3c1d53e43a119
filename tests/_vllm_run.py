"""Runs vLLM cases for tests/test_vllm.py; executed with the vLLM venv's python (scripts/setup-vllm-venv.sh).

``python tests/_vllm_run.py JOB.json``: JOB names the prompts (token ids), the number of tokens to generate and
a list of cases, each ``{"name", "model", "env": {...}, "llm": {extra vllm.LLM arguments}}``. The cases run one
after the other in this process: each sets its environment (which the engine processes vLLM spawns inherit),
starts an engine, generates greedily, prints ``RESULT {"name": ..., "tokens": [[...], ...]}`` and shuts the
engine down. Each case's output starts with ``CASE name``: the engine processes write to the same stdout and
stderr, and a case's engine is gone before the next case starts, so their tracebacks (our exception named in
them) fall between the markers. A case that fails prints ``FAILED name: ExceptionType: message``; the next
case still runs, and the exit status is 1.

The engine core is spawned, so everything that builds an LLM stays under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time


def run_case(case: dict, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from vllm import LLM, SamplingParams

    saved = {name: os.environ.get(name) for name in case.get("env", {})}
    os.environ.update(case.get("env", {}))
    llm = None
    try:
        llm = LLM(
            model=case["model"],
            dtype="float32",  # greedy tokens then equal those of transformers' generate
            enforce_eager=True,
            max_model_len=64,
            max_num_seqs=len(prompts),
            skip_tokenizer_init=True,  # the tiny model has no tokenizer: prompts are token ids
            seed=0,
            **case.get("llm", {}),
        )
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]
    finally:
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as error:
                print(f"shutdown of {case['name']}: {error}", file=sys.stderr)
            del llm
        gc.collect()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    failed = 0
    for case in job["cases"]:
        print(f"CASE {case['name']}", flush=True)
        started = time.monotonic()
        try:
            tokens = run_case(case, job["prompts"], job["max_tokens"])
        except Exception as error:
            print(f"FAILED {case['name']}: {type(error).__name__}: {error}", flush=True)
            failed += 1
            continue
        result = {"name": case["name"], "tokens": tokens, "seconds": round(time.monotonic() - started, 1)}
        print(f"RESULT {json.dumps(result)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
