"""llama.cpp itself on the GGUF of each family: its tokenization of the chat prompt (rendered with the
family's template, special tokens parsed, as its chat does) must be training's ids, and its logits on
those ids the source model's within the type's tolerance.

Needs a llama.cpp build: ``bash scripts/gguf_llama_cpp.sh`` makes one (libllama in
``$LLAMA_CPP_BUILD/bin``, default /tmp/tuner-llama-cpp-build; headers in .cache/llama.cpp). Without one,
or without g++, these tests are skipped. ``llama_cpp_logits.cpp`` is the probe they compile."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import GGUF_FAMILIES, save_family_model, save_tiny_model
from tuner.export.gguf import TOLERANCE, write_gguf

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / ".cache" / "llama.cpp"
BUILD = Path(os.environ.get("LLAMA_CPP_BUILD", "/tmp/tuner-llama-cpp-build"))
CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the capital of France? 12345 你好 and more words"},
]
# llama.cpp picks Phi-3's long or short rope factors by the context it runs with (long above the
# original context), transformers by the sequence length: run at the original context to compare.
N_CTX = {"phi4_mini": 256}
# the families written before these (byte-level BPE, ChatML template), for comparison
TEMPLATES = {"llama": "chatml", "qwen2": "qwen_chat"} | {
    name: spec["template"] for name, spec in GGUF_FAMILIES.items()
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    library = BUILD / "bin"
    if not (library / "libllama.so").exists() or not (SOURCE / "include" / "llama.h").exists():
        pytest.skip(f"no llama.cpp build in {BUILD} (bash scripts/gguf_llama_cpp.sh makes one)")
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the llama.cpp probe")
    binary = tmp_path_factory.mktemp("llama-cpp") / "llama_cpp_logits"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O2",
            str(Path(__file__).with_name("llama_cpp_logits.cpp")),
            f"-I{SOURCE / 'include'}",
            f"-I{SOURCE / 'ggml' / 'include'}",
            f"-L{library}",
            "-lllama",
            "-lggml",
            "-lggml-base",
            f"-Wl,-rpath,{library}",
            "-o",
            str(binary),
        ],
        check=True,
    )
    return binary


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_llama_cpp_tokenizes_and_computes_as_training(tmp_path, probe, name, kind):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.data.templates import get_template

    if name in GGUF_FAMILIES:
        folder = save_family_model(name, tmp_path / "model")
    else:
        folder = save_tiny_model(name, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template = get_template(TEMPLATES[name], tokenizer)
    prompt = template.render(CONVERSATION, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    path = write_gguf(folder, tmp_path / "model.gguf", kind=kind, template=template).path
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    run = subprocess.run(
        [str(probe), str(path), str(tmp_path / "prompt.txt"), str(N_CTX.get(name, 512)), *map(str, ids)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert [int(token) for token in lines[0].split()[1:]] == ids  # llama.cpp reads the prompt as training did
    got = np.array([[float(value) for value in line.split()[1:]] for line in lines[1:]])
    worst = float(np.abs(got - expected).max())
    assert worst <= (5e-3 if kind == "f32" else TOLERANCE[kind]), f"{name} {kind}: logits differ by {worst}"
