"""greedy_answers: tuner's one greedy path (evaluation answers, identity answers, merge check)."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuner.chat.generate import greedy_answers
from tuner.chat.text import resolve_chat_template
from tuner.models.load import load_tokenizer, with_pad_token

# Prompts of different token lengths, so a batch needs padding.
PROMPTS = ["Who are you?", "What is the capital of Germany? Answer in one sentence please.", "Say hello."]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    return model, tokenizer, resolve_chat_template(tokenizer)


def force_token_after(model, token_id: int, steps: int, rows=None):
    """Make the model pick ``token_id`` as its ``steps+1``-th new token (in ``rows``, default all):
    a hook on the output layer, since a random model never ends a turn by itself."""
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) == steps + 1:  # call 1 is the prompt, call k+1 picks the (k+1)-th new token
            output[rows if rows is not None else slice(None), -1, token_id] = 1e4
        return output

    return model.lm_head.register_forward_hook(hook)


def test_batched_answers_equal_one_by_one_answers(tiny):
    model, tokenizer, template = tiny
    one = greedy_answers(model, tokenizer, template, PROMPTS, system="Be brief.", max_new_tokens=12)
    batched = greedy_answers(
        model, tokenizer, template, PROMPTS, system="Be brief.", max_new_tokens=12, batch_size=3
    )
    assert batched == one
    assert [a.prompt for a in one] == PROMPTS
    # A random model never reaches a stop token: every answer ran to the limit, and says so.
    assert [(a.new_tokens, a.stop_id, a.finished) for a in one] == [(12, None, False)] * 3
    assert all(a.text for a in one)


def test_answer_stops_at_the_templates_end_of_turn(tiny):
    model, tokenizer, template = tiny
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert template.end_of_turn == "<|im_end|>" and eot != tokenizer.eos_token_id
    [free] = greedy_answers(model, tokenizer, template, PROMPTS[:1], max_new_tokens=12)
    handle = force_token_after(model, eot, steps=2)
    try:
        [stopped] = greedy_answers(model, tokenizer, template, PROMPTS[:1], max_new_tokens=12)
    finally:
        handle.remove()
    assert (stopped.stop_id, stopped.new_tokens, stopped.finished) == (eot, 2, True)
    # The two tokens before the stop are the free-running answer's first two.
    first_two = model.generate(
        **tokenizer(template.render([{"role": "user", "content": PROMPTS[0]}], True), return_tensors="pt",
                    add_special_tokens=False),
        max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id,
    )[0, -2:]
    assert stopped.text == tokenizer.decode(first_two, skip_special_tokens=True).strip()
    assert free.text.startswith(stopped.text)


def test_a_row_that_stops_early_in_a_batch_is_cut_at_its_stop_and_the_others_go_on(tiny):
    model, tokenizer, template = tiny
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    alone = greedy_answers(model, tokenizer, template, PROMPTS[1:], max_new_tokens=10)
    handle = force_token_after(model, eot, steps=3, rows=0)
    try:
        first, *others = greedy_answers(model, tokenizer, template, PROMPTS, max_new_tokens=10, batch_size=3)
    finally:
        handle.remove()
    assert (first.stop_id, first.new_tokens) == (eot, 3)
    assert "<|im_end|>" not in first.text and "<pad>" not in first.text
    assert others == alone


def test_prompts_are_left_padded_and_masked(tiny):
    model, tokenizer, template = tiny
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("ids", kwargs["input_ids"].clone())
        seen.setdefault("mask", kwargs["attention_mask"].clone())

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        greedy_answers(model, tokenizer, template, [PROMPTS[0], PROMPTS[1]], max_new_tokens=1, batch_size=2)
    finally:
        handle.remove()
    lengths = [
        len(tokenizer(template.render([{"role": "user", "content": p}], True), add_special_tokens=False)["input_ids"])
        for p in PROMPTS[:2]
    ]
    gap = lengths[1] - lengths[0]
    assert gap > 0
    assert seen["ids"][0, :gap].tolist() == [tokenizer.pad_token_id] * gap
    assert seen["mask"].tolist() == [[0] * gap + [1] * lengths[0], [1] * lengths[1]]


def test_training_mode_is_restored(tiny):
    model, tokenizer, template = tiny
    model.train()
    try:
        greedy_answers(model, tokenizer, template, PROMPTS[:1], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()


def test_one_pad_token_rule(tiny_llama_dir, tmp_path):
    """A tokenizer without a pad token pads with its eos token, wherever tuner loads it."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(str(tmp_path))
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    assert AutoTokenizer.from_pretrained(str(tmp_path)).pad_token is None
    assert load_tokenizer(str(tmp_path)).pad_token == "</s>"
    bare = AutoTokenizer.from_pretrained(str(tmp_path))
    bare.eos_token = None
    assert with_pad_token(bare).pad_token == "<unk>"
