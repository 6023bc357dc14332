"""Named templates reproduce each family's official format; their Jinja renders identically."""

from __future__ import annotations

import pytest

from tests.tiny import build_tokenizer
from tuner.core.errors import TunerError
from tuner.data.templates import get_template, list_templates, resolve_template
from tuner.data.templates.base import ChatTemplate
from tuner.data.templates.from_tokenizer import implicit_system

CONVERSATION = [
    {"role": "system", "content": "You are a doctor."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Dose?"},
    {"role": "assistant", "content": "One tablet."},
]

# The official formats, written out by hand (system, two user/assistant turns).
EXPECTED = {
    "internlm_chat": (
        "<s><|System|>:You are a doctor.\n<|User|>:Hi<eoh>\n<|Bot|>:Hello!<eoa>\n"
        "<|User|>:Dose?<eoh>\n<|Bot|>:One tablet.<eoa>\n"
    ),
    "internlm2_chat": (
        "<s><|im_start|>system\nYou are a doctor.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nDose?<|im_end|>\n"
        "<|im_start|>assistant\nOne tablet.<|im_end|>\n"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a doctor.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nDose?<|im_end|>\n"
        "<|im_start|>assistant\nOne tablet.<|im_end|>\n"
    ),
    "llama2_chat": (
        "<s>[INST] <<SYS>>\nYou are a doctor.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
        "<s>[INST] Dose? [/INST] One tablet. </s>"
    ),
    "llama3_chat": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a doctor.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDose?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nOne tablet.<|eot_id|>"
    ),
    "default": (
        "### System:\nYou are a doctor.\n\n### User:\nHi\n\n### Assistant:\nHello!</s>\n\n"
        "### User:\nDose?\n\n### Assistant:\nOne tablet.</s>\n\n"
    ),
    # Qwen3's official template with enable_thinking=False: an empty think block opens every answer
    # it generates; tuner trains every turn that way, so training and chat agree.
    "qwen3_chat": (
        "<|im_start|>system\nYou are a doctor.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n<|im_start|>user\nDose?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nOne tablet.<|im_end|>\n"
    ),
    "gemma_chat": (
        "<bos><start_of_turn>user\nYou are a doctor.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nDose?<end_of_turn>\n<start_of_turn>model\nOne tablet.<end_of_turn>\n"
    ),
    "phi3_chat": (
        "<|system|>\nYou are a doctor.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nDose?<|end|>\n<|assistant|>\nOne tablet.<|end|>\n"
    ),
    "phi4_mini_chat": (
        "<|system|>You are a doctor.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>"
        "<|user|>Dose?<|end|><|assistant|>One tablet.<|end|>"
    ),
    "mistral_chat": "<s>[INST] You are a doctor.\n\nHi[/INST] Hello!</s>[INST] Dose?[/INST] One tablet.</s>",
}
EXPECTED["qwen_chat"] = EXPECTED["chatml"]
EXPECTED["qwen3_thinking"] = EXPECTED["chatml"]  # the answers carry their own <think> block

END_OF_TURN = {
    "internlm_chat": "<eoa>",
    "internlm2_chat": "<|im_end|>",
    "chatml": "<|im_end|>",
    "qwen_chat": "<|im_end|>",
    "llama2_chat": "</s>",
    "llama3_chat": "<|eot_id|>",
    "default": "</s>",
    "qwen3_chat": "<|im_end|>",
    "qwen3_thinking": "<|im_end|>",
    "gemma_chat": "<end_of_turn>",
    "phi3_chat": "<|end|>",
    "phi4_mini_chat": "<|end|>",
    "mistral_chat": "</s>",
}


def test_every_template_is_tested():
    assert set(list_templates()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_official_format_multi_turn_with_system(tiny_tokenizer, name):
    template = get_template(name, tiny_tokenizer)
    assert template.render(CONVERSATION) == EXPECTED[name]
    assert template.end_of_turn == END_OF_TURN[name]
    assert template.end_of_turn in template.stop_words


GENERATION_PROMPTS = {
    "internlm_chat": "<s><|User|>:Hi<eoh>\n<|Bot|>:",
    "internlm2_chat": "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "qwen_chat": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ),
    "llama2_chat": "<s>[INST] Hi [/INST]",
    "llama3_chat": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "default": "### User:\nHi\n\n### Assistant:\n",
    "qwen3_chat": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "qwen3_thinking": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "gemma_chat": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "phi3_chat": "<|user|>\nHi<|end|>\n<|assistant|>\n",
    "phi4_mini_chat": "<|user|>Hi<|end|><|assistant|>",
    "mistral_chat": "<s>[INST] Hi[/INST]",
}


@pytest.mark.parametrize("name", sorted(GENERATION_PROMPTS))
def test_generation_prompt_without_system(tiny_tokenizer, name):
    rendered = get_template(name, tiny_tokenizer).render(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True
    )
    assert rendered == GENERATION_PROMPTS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_jinja_renders_identically(tiny_tokenizer, name):
    template = get_template(name, tiny_tokenizer)
    variants = [CONVERSATION, CONVERSATION[1:], CONVERSATION[:2], CONVERSATION[:4], CONVERSATION[1:4]]
    for messages in variants:
        for generation in (False, True):
            jinja = tiny_tokenizer.apply_chat_template(
                messages,
                chat_template=template.chat_template,
                tokenize=False,
                add_generation_prompt=generation,
            )
            assert jinja == template.render(messages, add_generation_prompt=generation)


def test_jinja_survives_a_saved_tokenizer(tmp_path, tiny_tokenizer):
    """Exported tokenizers carry the training template; reloading renders the same text."""
    from transformers import AutoTokenizer

    template = get_template("llama3_chat", tiny_tokenizer)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = template.chat_template
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.apply_chat_template(CONVERSATION, tokenize=False) == EXPECTED["llama3_chat"]


def test_content_is_inserted_verbatim(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "{content} {system} '\"\\n"},
        {"role": "assistant", "content": "}{"},
    ]
    for name in list_templates():
        template = get_template(name, tiny_tokenizer)
        jinja = tiny_tokenizer.apply_chat_template(
            messages, chat_template=template.chat_template, tokenize=False
        )
        assert jinja == template.render(messages)
        assert "{content} {system} '\"\\n" in jinja and "}{" in jinja


def test_default_template_uses_the_tokenizer_eos(tiny_tokenizer):
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    template = get_template("default", tokenizer)
    assert template.end_of_turn == "<|endoftext|>"
    assert template.stop_words[0] == "<|endoftext|>"
    assert "{eos}" not in template.chat_template


def test_resolve_prefers_a_name_then_the_tokenizer_template_then_default(tiny_tokenizer):
    assert resolve_template(tiny_tokenizer, "internlm_chat").name == "internlm_chat"
    own = resolve_template(tiny_tokenizer)
    assert own.name == "tokenizer" and own.end_of_turn == "<|im_end|>"
    assert own.render(CONVERSATION) == EXPECTED["chatml"]
    bare = build_tokenizer()
    bare.chat_template = None
    assert resolve_template(bare).name == "default"


@pytest.mark.parametrize(("source", "end"), [("llama3_chat", "<|eot_id|>"), ("llama2_chat", "</s>")])
def test_end_of_turn_detected_from_a_tokenizer_template(source, end):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = get_template(source).chat_template
    template = resolve_template(tokenizer)
    assert template.name == "tokenizer"
    assert template.end_of_turn == end
    assert end in template.stop_words


def test_end_of_turn_falls_back_to_eos():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert resolve_template(tokenizer).end_of_turn == "</s>"


def test_unknown_template_lists_choices():
    with pytest.raises(TunerError, match="llama3_chat"):
        get_template("llama4")


def test_system_only_first_and_known_roles():
    template = get_template("chatml")
    with pytest.raises(TunerError, match="only the first"):
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(TunerError, match="role"):
        template.render([{"role": "tool", "content": "a"}])


def test_custom_template_data():
    template = ChatTemplate(name="plain", user="Q: {content}\n", assistant_prefix="A:", end_of_turn="<eoa>")
    assert (
        template.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
        == "Q: x\nA:y<eoa>"
    )


def test_implicit_system_prompt_is_found():
    """A template that silently adds its own system prompt must be visible to the user."""
    tokenizer = build_tokenizer()
    tokenizer.chat_template = get_template("qwen_chat").chat_template
    assert implicit_system(resolve_template(tokenizer)) == "You are a helpful assistant."
    assert implicit_system(resolve_template(build_tokenizer())) is None  # plain ChatML adds none
    assert implicit_system(get_template("llama2_chat")) is None
