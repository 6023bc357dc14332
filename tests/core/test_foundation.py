"""The foundation: atomic writes, error messages, the embedded default model, the engine/UI split."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tuner.core.errors import DataError, OutputExistsError
from tuner.core.io import atomic_open, read_jsonl, write_jsonl_atomic

REPO = Path(__file__).resolve().parent.parent


def test_jsonl_written_atomically_without_escaping(tmp_path):
    out = tmp_path / "a.jsonl"
    assert write_jsonl_atomic(out, [{"q": "你好"}, {"q": "é"}], force=False) == 2
    assert out.read_text(encoding="utf-8") == '{"q": "你好"}\n{"q": "é"}\n'
    assert read_jsonl(out) == [{"q": "你好"}, {"q": "é"}]


def test_existing_file_never_overwritten_without_force(tmp_path):
    out = tmp_path / "a.jsonl"
    out.write_text("precious\n")
    with pytest.raises(OutputExistsError, match="--force"):
        write_jsonl_atomic(out, [{"x": 1}], force=False)
    assert out.read_text() == "precious\n"


def test_failed_write_leaves_original_and_no_temp_file(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("precious")
    with pytest.raises(RuntimeError), atomic_open(out) as handle:
        handle.write("half")
        raise RuntimeError("crash mid-write")
    assert out.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_bad_jsonl_line_reports_line_and_column(tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError) as info:
        read_jsonl(bad)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{bad}:2:")


def test_engine_never_imports_gradio():
    offenders = []
    for path in (REPO / "tuner").rglob("*.py"):
        if "ui" in path.relative_to(REPO / "tuner").parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "gradio" for name in names):
                offenders.append(str(path))
    assert offenders == []


@pytest.mark.slow
def test_embedded_model_converted_and_answers(default_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == "The capital of France is Paris."


def test_cli_works_from_any_folder_as_installed(tmp_path):
    # scripts/install.sh installs tuner (editable): the CLI runs in a workspace outside the repository.
    import os
    import shutil
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    commands = [[sys.executable, "-m", "tuner", "list-presets", "-p", "qlora"]]
    if shutil.which("tuner"):
        commands.append(["tuner", "list-presets", "-p", "qlora"])
    for command in commands:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "qwen2_5_7b_instruct_qlora_oasst1_2048_e3" in done.stdout
