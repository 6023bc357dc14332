"""GGUF export (tuner.export.gguf): the file loads back with transformers (``gguf_file=``) and gives the
merged model's logits within the type's tolerance; its tokenizer splits the training prompt into the
same ids; the chat template in its metadata renders the prompt training rendered; the Modelfile names
it and keeps the template's first marker."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_run
from tuner.export.gguf import TOLERANCE, write_gguf
from tuner.export.merge import merge_adapter

CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the capital of France? 12345 你好"},
]


def metadata(path) -> dict:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    wanted = (
        "tokenizer.chat_template",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.pre",
        "general.architecture",
        "general.file_type",
    )
    return {key: fields[key].contents() for key in wanted if key in fields}


def gguf_logits(folder, name, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def merged(tmp_path_factory, tiny_llama_dir):
    """A tiny Llama merged with a LoRA adapter of a run (tuner merge), and its logits on the training prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gguf")
    run = make_run(root, tiny_llama_dir, std=0.2)
    out = merge_adapter(str(tiny_llama_dir), run, root / "merged", dtype="fp32", verify=False).out_dir
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    return out, tokenizer, prompt, ids, expected


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0"])
def test_gguf_logits_match_the_merged_model(merged, kind):
    out, _tokenizer, _prompt, ids, expected = merged
    result = write_gguf(out, out / f"model-{kind}.gguf", kind=kind)
    got = gguf_logits(out, result.path.name, ids)
    worst = (got - expected).abs().max().item()
    assert worst <= TOLERANCE[kind], f"{kind}: logits differ by {worst}"
    if kind != "f32":
        assert worst > 0  # the type was really applied
    with pytest.raises(Exception, match="--force"):
        write_gguf(out, result.path, kind=kind)


def test_gguf_tokenizer_and_template_reproduce_the_training_prompt(merged):
    from jinja2 import Environment
    from transformers import AutoTokenizer

    out, tokenizer, prompt, ids, _ = merged
    path = write_gguf(out, out / "model.gguf", kind="f16", force=True).path
    meta = metadata(path)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the tiny tokenizer adds no BOS: nor may llama.cpp
    rendered = (
        Environment()
        .from_string(meta["tokenizer.chat_template"])
        .render(messages=CONVERSATION, add_generation_prompt=True)
    )
    assert rendered == prompt
    from_gguf = AutoTokenizer.from_pretrained(str(out), gguf_file=path.name)
    assert from_gguf(prompt, add_special_tokens=False)["input_ids"] == ids[0].tolist()


def test_qwen2_round_trip_and_its_own_split(tmp_path, tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen2_dir))
    prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    path = write_gguf(tiny_qwen2_dir, tmp_path / "qwen2.gguf", kind="f32").path
    assert metadata(path)["tokenizer.ggml.pre"] == "qwen2"  # Qwen2Tokenizer's split, as training used
    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen2_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    torch.testing.assert_close(gguf_logits(tmp_path, path.name, ids), expected, atol=1e-4, rtol=1e-4)
    from_gguf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert from_gguf(prompt, add_special_tokens=False)["input_ids"] == ids[0].tolist()


def test_unsupported_inputs_are_clear_errors(merged, tmp_path):
    from tuner.core.errors import TunerError

    out = merged[0]
    with pytest.raises(TunerError, match="llama-quantize"):
        write_gguf(out, tmp_path / "x.gguf", kind="q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


def test_merge_with_gguf_writes_the_file_the_modelfile_names(tmp_path, tiny_llama_dir, capsys):
    from tuner.__main__ import main

    run = make_run(tmp_path, tiny_llama_dir)
    out = tmp_path / "merged"
    assert main(["merge", str(tiny_llama_dir), str(run), str(out), "--no-verify", "--gguf", "q8_0"]) == 0
    assert (out / "model.gguf").is_file() and "FROM ./model.gguf" in (out / "Modelfile").read_text()
    assert metadata(out / "model.gguf")["general.file_type"] == 7  # MOSTLY_Q8_0
    assert main(["merge", str(tiny_llama_dir), str(run), str(tmp_path / "m2"), "--gguf", "q4_k_m"]) == 2
    assert "llama-quantize" in capsys.readouterr().err and not (tmp_path / "m2").exists()
    # export-gguf from the run itself: merged on the way, same logits as from the merged folder
    assert main(["export-gguf", str(run), str(tmp_path / "run.gguf"), "--type", "f32"]) == 0
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    torch.testing.assert_close(
        gguf_logits(tmp_path, "run.gguf", ids), gguf_logits(out, "model.gguf", ids), atol=0.1, rtol=0.1
    )
    assert not list(tmp_path.glob(".merge-*"))  # the temporary merge is gone


def test_modelfile_keeps_a_bos_marker_the_tokenizer_does_not_add(tiny_tokenizer):
    # SmolLM2's BOS token is <|im_start|> and its tokenizer adds none: the Modelfile used to strip it
    # from the template and so dropped the first <|im_start|> of every prompt.
    import copy

    from tuner.data.templates import resolve_template
    from tuner.export.gguf_tokenizer import adds_bos
    from tuner.export.modelfile import ollama_modelfile

    smol_like = copy.deepcopy(tiny_tokenizer)
    smol_like.bos_token = "<|im_start|>"
    template = resolve_template(smol_like, None)
    assert not adds_bos(smol_like)
    # merge_adapter's call
    kept = ollama_modelfile(template, bos_token=smol_like.bos_token if adds_bos(smol_like) else None)
    assert '"<|im_start|>system\\n"' in kept and '"<|im_start|>user\\n"' in kept
    stripped = ollama_modelfile(template, bos_token="<|im_start|>")  # what the old call did for SmolLM2
    assert '"<|im_start|>user\\n"' not in stripped


@pytest.mark.slow
def test_embedded_model_gguf_keeps_its_prompt_and_logits(tmp_path, default_model_dir):
    # SmolLM2: BOS is <|im_start|> and its tokenizer adds none, so the GGUF must not ask llama.cpp to add
    # one, and the Modelfile must keep the first <|im_start|> of the template.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = merge_adapter(
        str(default_model_dir),
        make_run(tmp_path, default_model_dir, std=0.002),
        tmp_path / "merged",
        dtype="fp32",
        verify=False,
        gguf="f16",
    ).out_dir
    meta = metadata(merged / "model.gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert meta["tokenizer.ggml.add_bos_token"] is False and tokenizer.bos_token == "<|im_start|>"
    assert meta["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert '"<|im_start|>system\\n"' in (merged / "Modelfile").read_text()
    prompt = tokenizer.apply_chat_template(CONVERSATION[1:], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    from_gguf = AutoTokenizer.from_pretrained(str(merged), gguf_file="model.gguf")
    assert from_gguf(prompt, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)(
            input_ids=ids
        ).logits
    worst = (gguf_logits(merged, "model.gguf", ids) - expected).abs().max().item()
    assert worst <= 0.5, worst  # f16 weights over 30 layers of a real model
