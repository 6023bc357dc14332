"""Encoding: labels cover exactly the assistant answers plus their end-of-turn token."""

from __future__ import annotations

import pytest

from tests.tiny import build_tokenizer
from tuner.core.errors import DataError, TunerError
from tuner.data.encode import chat_ids_and_labels, encode_chat, encode_pretrain, encode_samples
from tuner.data.templates import get_template, resolve_template
from tuner.data.templates.base import ChatTemplate

MESSAGES = [
    {"role": "system", "content": "You are a doctor."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Dose?"},
    {"role": "assistant", "content": "One tablet."},
]

# The conversation above cut into (text, supervised?) pieces by hand, from the official formats.
SEGMENTS = {
    "chatml": [
        (
            "<|im_start|>system\nYou are a doctor.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            0,
        ),
        ("Hello!<|im_end|>", 1),
        ("\n<|im_start|>user\nDose?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("One tablet.<|im_end|>", 1),
        ("\n", 0),
    ],
    "internlm_chat": [
        ("<s><|System|>:You are a doctor.\n<|User|>:Hi<eoh>\n<|Bot|>:", 0),
        ("Hello!<eoa>", 1),
        ("\n<|User|>:Dose?<eoh>\n<|Bot|>:", 0),
        ("One tablet.<eoa>", 1),
        ("\n", 0),
    ],
    "llama2_chat": [
        ("<s>[INST] <<SYS>>\nYou are a doctor.\n<</SYS>>\n\nHi [/INST]", 0),
        (" Hello! </s>", 1),
        ("<s>[INST] Dose? [/INST]", 0),
        (" One tablet. </s>", 1),
    ],
    "llama3_chat": [
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a doctor.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            0,
        ),
        ("Hello!<|eot_id|>", 1),
        (
            "<|start_header_id|>user<|end_header_id|>\n\nDose?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            0,
        ),
        ("One tablet.<|eot_id|>", 1),
    ],
    "default": [
        ("### System:\nYou are a doctor.\n\n### User:\nHi\n\n### Assistant:\n", 0),
        ("Hello!</s>", 1),
        ("\n\n### User:\nDose?\n\n### Assistant:\n", 0),
        ("One tablet.</s>", 1),
        ("\n\n", 0),
    ],
}
SEGMENTS["qwen_chat"] = SEGMENTS["chatml"]
SEGMENTS["internlm2_chat"] = [("<s>" + SEGMENTS["chatml"][0][0], 0)] + SEGMENTS["chatml"][1:]


def expected_ids_and_labels(tokenizer, segments):
    """Tokenize each piece on its own; supervised pieces keep their ids as labels."""
    ids, labels = [], []
    for text, supervised in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if supervised else [-100] * len(piece)
    return ids, labels


@pytest.mark.parametrize("name", sorted(SEGMENTS))
def test_exact_labels_for_every_named_template(tiny_tokenizer, name):
    template = get_template(name, tiny_tokenizer)
    ids, labels = chat_ids_and_labels(MESSAGES, tiny_tokenizer, template)
    expected_ids, expected_labels = expected_ids_and_labels(tiny_tokenizer, SEGMENTS[name])
    # The pieces tokenize the same alone as in the whole text, so this is an independent check.
    assert (
        ids
        == expected_ids
        == tiny_tokenizer("".join(t for t, _ in SEGMENTS[name]), add_special_tokens=False)["input_ids"]
    )
    assert labels == expected_labels
    supervised = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert supervised[-1] == tiny_tokenizer.convert_tokens_to_ids(template.end_of_turn)


def test_no_special_token_added_twice(tiny_tokenizer):
    ids, _ = chat_ids_and_labels(MESSAGES, tiny_tokenizer, get_template("internlm2_chat"))
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


def test_tokenizer_own_template(tiny_tokenizer):
    template = resolve_template(tiny_tokenizer)
    ids, labels = chat_ids_and_labels(MESSAGES, tiny_tokenizer, template)
    assert (ids, labels) == expected_ids_and_labels(tiny_tokenizer, SEGMENTS["chatml"])


@pytest.mark.slow
def test_exact_labels_embedded_model_own_template(default_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    template = resolve_template(tokenizer)
    assert template.end_of_turn == "<|im_end|>"
    messages = MESSAGES[1:]  # no system: SmolLM2's template inserts its own
    ids, labels = chat_ids_and_labels(messages, tokenizer, template)
    smol = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    segments = [
        (f"<|im_start|>system\n{smol}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", 0),
        *SEGMENTS["chatml"][1:],
    ]
    assert (ids, labels) == expected_ids_and_labels(tokenizer, segments)
    assert tokenizer.decode([i for i, la in zip(ids, labels, strict=True) if la != -100]) == (
        "Hello!<|im_end|>One tablet.<|im_end|>"
    )


def test_prefix_guard_names_template_and_position(tiny_tokenizer):
    # "Assistant: " ends with a space that byte-level BPE merges into the answer (" Hello"): the
    # prompt's tokens are not a prefix of the conversation's tokens.
    spacey = ChatTemplate(
        name="spacey", user="User: {content}\n", assistant_prefix="Assistant: ", end_of_turn="</s>"
    )
    messages = [
        {"role": "user", "content": "Capital?"},
        {"role": "assistant", "content": "capital of France"},
    ]
    with pytest.raises(TunerError, match=r"template spacey: .*first difference at token \d+"):
        chat_ids_and_labels(messages, tiny_tokenizer, spacey)


def test_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{{ messages | length }}" + tokenizer.chat_template
    with pytest.raises(TunerError, match="not a prefix"):
        chat_ids_and_labels(MESSAGES, tokenizer, resolve_template(tokenizer))


def test_bad_conversations_raise_with_location(tiny_tokenizer):
    template = get_template("chatml")
    samples = [
        {"messages": MESSAGES},
        {"messages": MESSAGES[:2], "source": {"path": "d.jsonl", "line": 7}},
    ]
    with pytest.raises(DataError, match=r"d.jsonl:7: .*end with an assistant"):
        encode_samples(samples, tiny_tokenizer, template, 512)
    with pytest.raises(TunerError, match="expected a user"):
        encode_chat(MESSAGES[:1] + MESSAGES[2:], tiny_tokenizer, template, 512)


def test_truncation_keeps_the_start_and_drops_unsupervised(tiny_tokenizer):
    template = get_template("chatml")
    full_ids, full_labels = chat_ids_and_labels(MESSAGES, tiny_tokenizer, template)
    first_answer = next(i for i, label in enumerate(full_labels) if label != -100)

    cut = encode_chat(MESSAGES, tiny_tokenizer, template, first_answer + 2)
    assert cut == {"input_ids": full_ids[: first_answer + 2], "labels": full_labels[: first_answer + 2]}
    assert encode_chat(MESSAGES, tiny_tokenizer, template, first_answer) is None

    samples = [{"messages": MESSAGES}, {"messages": MESSAGES[1:3]}]
    short = len(chat_ids_and_labels(MESSAGES[1:3], tiny_tokenizer, template)[0])
    rows, stats = encode_samples(samples, tiny_tokenizer, template, short)
    assert stats.samples == 2 and stats.truncated == 1
    assert stats.lengths == [len(full_ids), short]
    assert (stats.encoded, stats.dropped_empty_after_truncation) == (
        (2, 0) if short > first_answer else (1, 1)
    )
    rows, stats = encode_samples(samples, tiny_tokenizer, template, first_answer)
    assert stats.dropped_empty_after_truncation == 1 and stats.truncated == 1
    assert stats.encoded == len(rows) == 1
    assert stats.supervised_tokens == sum(label != -100 for label in rows[0]["labels"])


def test_pretraining_wraps_and_cuts_into_chunks(tiny_tokenizer):
    text = "The capital of France is Paris. Paris is a city in Europe."
    body = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = [tiny_tokenizer.bos_token_id, *body, tiny_tokenizer.eos_token_id]
    assert encode_pretrain(text, tiny_tokenizer, 4096) == [{"input_ids": whole, "labels": whole}]

    size = 5 if len(whole) % 5 != 1 else 6  # a last chunk of one token predicts nothing and is dropped
    rows = encode_pretrain(text, tiny_tokenizer, size)
    assert [t for row in rows for t in row["input_ids"]] == whole  # cut, not truncated
    assert all(len(row["input_ids"]) <= size and row["labels"] == row["input_ids"] for row in rows)
    assert encode_pretrain(text, tiny_tokenizer, len(whole) - 1) == [
        {"input_ids": whole[:-1], "labels": whole[:-1]}
    ]

    _, stats = encode_samples([{"text": text}], tiny_tokenizer, None, size)
    assert stats.chunked == 1 and stats.encoded == len(rows) and stats.supervised_tokens == len(whole)


def test_encoding_is_fast_enough(tiny_tokenizer):
    import time

    start = time.perf_counter()
    rows, stats = encode_samples(
        [{"messages": MESSAGES}] * 1000, tiny_tokenizer, get_template("chatml"), 2048
    )
    assert stats.encoded == 1000
    assert time.perf_counter() - start < 10  # ~0.3 s here; thousands of samples in seconds


def test_default_template_takes_bos_from_a_tokenizer_that_adds_one():
    """Llama-style tokenizers add BOS to plain text: the default template renders it once, never twice."""
    from tokenizers import processors

    tokenizer = build_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    template = get_template("default", tokenizer)
    assert (
        template.render([{"role": "user", "content": "Hi"}], True) == "<s>### User:\nHi\n\n### Assistant:\n"
    )
    ids, _ = chat_ids_and_labels(MESSAGES[1:3], tokenizer, template)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    rows = encode_pretrain("Hi", tokenizer, 100)
    assert rows[0]["input_ids"].count(tokenizer.bos_token_id) == 1
