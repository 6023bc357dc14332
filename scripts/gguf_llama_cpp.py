"""Run a GGUF that tuner wrote with llama.cpp itself and compare its greedy answer with transformers'.

    bash scripts/gguf_llama_cpp.sh [OUT_DIR]      # builds llama.cpp (CPU) from .cache/llama.cpp, then this

A tiny Llama (random, then a LoRA trained by tuner on the question below) is merged, exported with
``tuner export-gguf`` in each type, and answered by llama.cpp's ``llama-simple`` (greedy, stops at the
GGUF's end-of-generation tokens) and by transformers on the merged folder (greedy, stops at the
template's end-of-turn). The transcript goes to OUT_DIR/llama_cpp_transcript.md; the exit status is 1
when an f32 answer differs (f16 / q8_0 may drift a token late on a random model: reported, not failed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

QUESTION = "What is the capital of France?"
TYPES = ("f32", "f16", "q8_0")


def train_and_merge(work: Path) -> Path:
    from tests.tiny import QA, make_config, save_tiny_model, write_data
    from tuner.export.merge import merge_adapter
    from tuner.train.run import train

    base = save_tiny_model(
        "llama", work / "base", hidden_size=128, intermediate_size=256, num_hidden_layers=2
    )
    data = write_data(work / "qa.jsonl", QA, repeat=8)
    config = make_config(
        base,
        data,
        max_steps=200,
        lr=5e-3,
        lora_r=32,
        lora_alpha=64,
        save_steps=1000,
        output_dir=str(work / "run"),
    )
    result = train(config)
    return merge_adapter(str(base), result.output_dir, work / "merged", dtype="fp32", verify=False).out_dir


def transformers_answer(merged: Path, prompt: str, max_new_tokens: int) -> tuple[str, int, bool]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[eot]
        )
    new = out[0, ids.shape[1] :].tolist()
    stopped = bool(new) and new[-1] == eot
    return tokenizer.decode(new[:-1] if stopped else new), len(new), stopped


def llama_cpp_answer(binary: Path, gguf: Path, prompt: str, max_new_tokens: int) -> tuple[str, str]:
    run = subprocess.run(
        [str(binary), "-m", str(gguf), "-n", str(max_new_tokens), prompt],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if run.returncode:
        raise SystemExit(f"llama.cpp failed on {gguf.name}:\n{run.stderr[-3000:]}")
    # llama-simple prints the prompt's pieces, then the answer's
    text = run.stdout.removesuffix("\n")  # the one newline it ends with
    return (text[len(prompt) :] if text.startswith(prompt) else text), run.stderr


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-simple", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import gguf
    from jinja2 import Environment

    from tuner.export.gguf import write_gguf

    lines = ["# A tuner GGUF in llama.cpp", ""]
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        merged = train_and_merge(Path(folder))
        for kind in TYPES:
            path = write_gguf(merged, Path(folder) / f"model-{kind}.gguf", kind=kind).path
            meta = gguf.GGUFReader(str(path)).fields
            template = meta["tokenizer.chat_template"].contents()
            prompt = (
                Environment()
                .from_string(template)
                .render(messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True)
            )
            expected, count, stopped = transformers_answer(merged, prompt, args.max_new_tokens)
            got, log = llama_cpp_answer(args.llama_simple, path, prompt, args.max_new_tokens)
            same = got == expected
            failed |= kind == "f32" and not same
            lines += [
                f"## {kind}",
                f"prompt (the GGUF's chat template): {json.dumps(prompt)}",
                f"transformers: {json.dumps(expected)} ({count} tokens, {'stopped at <|im_end|>' if stopped else 'no stop'})",
                f"llama.cpp:    {json.dumps(got)}",
                f"same answer: {same}",
                "llama.cpp log tail:",
                "```",
                *log.strip().splitlines()[-6:],
                "```",
                "",
            ]
    text = "\n".join(lines)
    (args.out / "llama_cpp_transcript.md").write_text(text, encoding="utf-8")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
