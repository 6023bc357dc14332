"""Each model family a preset names, end to end on a tiny random model of its architecture (built from a
config, no hub): the preset's template masks labels exactly, two LoRA steps train, the merge equals the
unmerged adapter, chat stops at the family's end-of-turn token, and GGUF export works where tuner
writes it (tests/gpu/test_gpu_families.py runs QLoRA for each on a GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from tests.tiny import TINY_FAMILY_SIZES, build_tokenizer, make_config, write_data
from tuner.config.files import load_config
from tuner.config.presets import find_preset

SIZES = TINY_FAMILY_SIZES
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class Family:
    preset: str
    config: str  # transformers config class
    bos: str
    eos: str
    special: list[str] = field(default_factory=list)  # the family's control tokens
    options: dict = field(default_factory=dict)  # config options beyond SIZES
    gguf: str | None = None  # "logits": round-trips through transformers; "written": writes; None: refused


FAMILIES = {
    "llama3_2": Family(
        "llama3_2_1b_instruct_lora_oasst1_2048_e3",
        "LlamaConfig",
        "<|begin_of_text|>",
        "<|eot_id|>",
        options=dict(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
        gguf="written",
    ),
    "qwen3": Family(
        "qwen3_1_7b_lora_oasst1_2048_e3",
        "Qwen3Config",
        "<|endoftext|>",
        "<|im_end|>",
        # head_dim 128 as every Qwen3 has it (transformers reads no head_dim from a GGUF)
        ["<think>", "</think>"],
        dict(head_dim=128, tie_word_embeddings=True),
        gguf="logits",
    ),
    "gemma2": Family(
        "gemma_2_2b_it_lora_oasst1_2048_e3",
        "Gemma2Config",
        "<bos>",
        "<eos>",
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        dict(head_dim=16),
    ),
    "gemma3": Family(
        "gemma_3_1b_it_lora_oasst1_2048_e3",
        "Gemma3TextConfig",
        "<bos>",
        "<eos>",
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        dict(head_dim=16),
    ),
    "phi3_5": Family(
        "phi_3_5_mini_instruct_qlora_oasst1_2048_e3",
        "Phi3Config",
        "<s>",
        "<|endoftext|>",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        gguf="logits",
    ),
    "phi4_mini": Family(
        "phi_4_mini_instruct_qlora_oasst1_2048_e3",
        "Phi3Config",
        "<|endoftext|>",
        "<|endoftext|>",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        dict(partial_rotary_factor=0.75, tie_word_embeddings=True),
        gguf="written",  # transformers' GGUF loader reads no partial rotary for phi3: the file is checked by GGUFReader
    ),
    "mistral": Family(
        "mistral_7b_instruct_v0_3_qlora_oasst1_2048_e3",
        "MistralConfig",
        "<s>",
        "</s>",
        ["[INST]", "[/INST]"],
        dict(sliding_window=None),
        gguf="logits",
    ),
}
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Tuna."},
    {"role": "user", "content": "Say hello."},
    {"role": "assistant", "content": "Hello!"},
]


def build_family(family: Family, template, folder, dtype=None, **sizes):
    """A tiny random model of the family's architecture (``sizes`` over SIZES) and a tokenizer with
    its special tokens."""
    import transformers
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": family.special}, replace_extra_special_tokens=False
    )
    tokenizer.bos_token, tokenizer.eos_token = family.bos, family.eos
    tokenizer.chat_template = template.chat_template
    config = getattr(transformers, family.config)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{"tie_word_embeddings": False, **SIZES, **family.options, **sizes},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def supervised_spans(ids, labels, tokenizer) -> list[str]:
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current)), current.clear()
    return spans + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_trains_merges_chats_and_exports(tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuner.chat.generate import GenerationSettings
    from tuner.chat.session import ChatSession
    from tuner.data.encode import chat_ids_and_labels
    from tuner.data.templates import get_template
    from tuner.export.merge import merge_adapter
    from tuner.train.run import train

    family = FAMILIES[name]
    preset = load_config(find_preset(family.preset))
    model_dir = tmp_path / "model"
    tokenizer = build_family(family, get_template(preset.template), model_dir)
    template = get_template(preset.template, tokenizer)

    # exact label masks: only each answer and its end-of-turn token are trained
    ids, labels = chat_ids_and_labels(MESSAGES, tokenizer, template)
    answers = [
        template.answer.replace("{content}", m["content"]) + template.end_of_turn
        for m in MESSAGES
        if m["role"] == "assistant"
    ]
    assert supervised_spans(ids, labels, tokenizer) == answers

    # two LoRA steps with the preset's template (the preset's QLoRA runs on the GPU suite)
    data = write_data(tmp_path / "d.jsonl")
    config = make_config(
        model_dir,
        data,
        template=preset.template,
        max_steps=2,
        save_steps=10,
        output_dir=str(tmp_path / "run"),
    )
    result = train(config)
    assert result.status == "completed"

    # merged == unmerged
    merged_dir = merge_adapter(
        str(model_dir), result.output_dir, tmp_path / "merged", dtype="fp32", verify=False
    ).out_dir
    probe = torch.tensor([ids[:24]])
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(base, str(result.output_dir)).eval()(input_ids=probe).logits
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()(
            input_ids=probe
        )
    torch.testing.assert_close(merged.logits, unmerged, atol=1e-4, rtol=1e-4)

    # chat stops at the family's end-of-turn token: the model is made to emit it as its third token
    session = ChatSession(str(merged_dir), settings=GenerationSettings(max_new_tokens=12, temperature=0))
    # the merged folder's tokenizer carries the training template: same prompt, same end of turn
    question = [{"role": "user", "content": "Who are you?"}]
    assert session.chat_template.render(question, add_generation_prompt=True) == template.render(
        question, add_generation_prompt=True
    )
    assert session.chat_template.end_of_turn == template.end_of_turn
    eot = tokenizer.convert_tokens_to_ids(template.end_of_turn)
    assert eot in session.eos_ids
    calls = []

    def emit_end_of_turn(_module, _inputs, logits):
        calls.append(1)
        if len(calls) >= 3:  # the prompt's forward, then two free tokens
            logits[..., -1, eot] = logits.max() + 50
        return logits

    session.model.get_output_embeddings().register_forward_hook(emit_end_of_turn)
    answer = session.answer_single("Who are you?")
    assert session.last_finish == "stop" and session.last_usage["new_tokens"] == 3
    assert template.end_of_turn not in answer

    # GGUF where tuner writes it; a clear refusal elsewhere
    from tuner.core.errors import ModelError
    from tuner.export.gguf import write_gguf

    if family.gguf is None:
        with pytest.raises(ModelError, match="convert_hf_to_gguf"):
            write_gguf(merged_dir, tmp_path / "m.gguf")
        return
    path = write_gguf(merged_dir, merged_dir / "model.gguf", kind="f32").path
    import gguf

    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == eot
    if "rope_parameters" in family.options:  # Llama 3.x's long-context rope travels as rope_freqs
        assert "rope_freqs.weight" in [t.name for t in reader.tensors]
    if family.gguf == "logits":
        from_gguf = AutoModelForCausalLM.from_pretrained(
            str(merged_dir), gguf_file=path.name, dtype=torch.float32
        )
        with torch.no_grad():
            torch.testing.assert_close(
                from_gguf.eval()(input_ids=probe).logits, merged.logits, atol=1e-4, rtol=1e-4
            )


def test_qwen3_thinking_switch_is_explicit(tiny_tokenizer):
    # Thinking off (the presets): the empty think block is prompt, never trained; thinking on: the model
    # writes its own <think> block, which the data's answers carry and training supervises.
    from tuner.data.templates import get_template

    off, on = get_template("qwen3_chat"), get_template("qwen3_thinking")
    question = [{"role": "user", "content": "Hi"}]
    assert off.render(question, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert on.render(question, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    thought = "<think>\nA greeting.\n</think>\n\nHello!"
    rendered = on.render([*question, {"role": "assistant", "content": thought}])
    assert rendered.endswith(f"<|im_start|>assistant\n{thought}<|im_end|>\n")
