"""GPU paths of chat and merge (run on the device): 4-bit and 8-bit chat, QLoRA adapter merged onto an
fp16 base giving the same logits as base + adapter.

Self-contained: a 4-layer Llama-shaped model (hidden 1024) with random weights, built from a config
and the tiny test tokenizer; no model hub. Outputs are printed (run with -s to record them).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.gpu

GREEDY = {"max_new_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def small_llama_dir(tmp_path_factory):
    import torch

    from tests.tiny import SMALL_GPU_SIZES, save_tiny_model

    return save_tiny_model(
        "llama", tmp_path_factory.mktemp("small-llama-fp16"), torch.float16, **SMALL_GPU_SIZES
    )


@pytest.fixture(scope="module")
def qlora_adapter(small_llama_dir, tmp_path_factory):
    """A LoRA adapter made on the 4-bit base (as QLoRA training does), with random non-zero B."""
    import torch

    from tuner.models.load import add_lora, load_model, release

    loaded = load_model(str(small_llama_dir), bits=4, precision="fp16")
    model = add_lora(loaded.model, r=8, alpha=16, dropout=0.0, quantized=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    folder = tmp_path_factory.mktemp("qlora-adapter")
    model.save_pretrained(str(folder))
    release(model, loaded)
    return folder


def _logits(model, tokenizer, text="The capital of France is Paris. Who are you?"):
    import torch

    ids = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        return model(**ids).logits.float()


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_chat_streams_and_compares(small_llama_dir, qlora_adapter, bits):
    from tuner.chat.generate import GenerationSettings
    from tuner.chat.session import ChatSession

    settings = GenerationSettings(**GREEDY)
    session = ChatSession(str(small_llama_dir), bits=bits, settings=settings)
    linear = type(session.model.model.layers[0].self_attn.q_proj).__name__
    assert linear == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    deltas = list(session.stream("Who are you?"))
    answer = "".join(deltas)
    assert answer == session.history[-1].assistant and session.last_finish in ("stop", "length")
    print(f"\n{bits}-bit answer ({session.last_usage}): {answer!r}")
    session.close()

    with_adapter = ChatSession(str(small_llama_dir), adapter=qlora_adapter, bits=bits, settings=settings)
    base, tuned = with_adapter.compare("Who are you?")
    print(f"{bits}-bit compare: base={base!r} tuned={tuned!r}")
    assert base == answer  # the adapter switched off gives the plain quantized model's answer
    assert "".join(with_adapter.stream_single("Who are you?")) == tuned
    with_adapter.close()


def test_qlora_adapter_merged_onto_fp16_base_equals_unmerged(small_llama_dir, qlora_adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.export.merge import merge_adapter

    out = tmp_path / "merged"
    result = merge_adapter(
        str(small_llama_dir), qlora_adapter, out, dtype="fp16", max_shard_size="20MB", verify=False
    )
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config, "the merge must never produce a quantized model"
    assert len(list(out.glob("model-*.safetensors"))) > 1
    tokenizer = AutoTokenizer.from_pretrained(str(out))

    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float16).cuda().eval()
    assert merged.dtype == torch.float16
    merged_logits = _logits(merged, tokenizer)
    del merged
    base = AutoModelForCausalLM.from_pretrained(str(small_llama_dir), dtype=torch.float16).cuda().eval()
    base_logits = _logits(base, tokenizer)
    unmerged = PeftModel.from_pretrained(base, str(qlora_adapter)).eval()
    unmerged_logits = _logits(unmerged, tokenizer)

    change = (unmerged_logits - base_logits).abs().max().item()
    error = (merged_logits - unmerged_logits).abs().max().item()
    print(
        f"\nQLoRA merge: eos ids {result.eos_token_ids}; adapter changes logits by {change:.4f}, merged vs unmerged {error:.5f}"
    )
    assert change > 0.05, "the adapter must change the output for this test to mean anything"
    # fp16 rounding of the merged weights only (unmerged keeps the adapter in fp32).
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=2e-2, rtol=2e-2)
    assert torch.equal(merged_logits.argmax(-1), unmerged_logits.argmax(-1))


@pytest.fixture
def embedded_dir():
    from tuner.core.errors import ModelError
    from tuner.models.embedded import ensure_default_model

    try:
        return ensure_default_model()
    except ModelError as exc:  # the embedded model's wheel is not installed on this machine
        pytest.skip(str(exc))


def test_embedded_model_4bit_chat_stops_at_end_of_turn(embedded_dir):
    """The embedded SmolLM2 in 4 bits answers and ends on <|im_end|> (skipped where it is not installed)."""
    from tuner.chat.generate import GenerationSettings
    from tuner.chat.session import ChatSession

    session = ChatSession(
        str(embedded_dir), bits=4, settings=GenerationSettings(max_new_tokens=200, temperature=0)
    )
    answer = session.answer("What is the capital of France? One sentence.")
    print(f"\nembedded 4-bit: {answer!r} ({session.last_finish}, {session.last_usage})")
    assert answer and session.last_finish == "stop"
    session.close()
