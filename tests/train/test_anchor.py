"""The anchor loss (tuner.train.anchor): KL to the adapter-off model on anchor answer tokens.

It is 0 where the adapter does nothing (LoRA's B = 0), positive once the adapter changes the model,
its gradient reaches only the adapter, its cross-entropy part equals the model's own loss, and a tiny
model trained with it keeps its distribution on the anchor rows closer to the base model's than one
trained on the same rows as text."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny import QA, build_model, make_config
from tuner.data.anchors import IGNORE
from tuner.train.anchor import anchored_loss, kl_to_base


def _peft_model(tokenizer, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    model = build_model("llama", tokenizer, seed=seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(model, config)


def _batch(tokenizer):
    """Two rows: the first an ordinary conversation (labels), the second an anchor (anchor_labels)."""
    from tuner.data.encode import encode_chat
    from tuner.data.pack import PaddingCollator
    from tuner.data.templates import get_template

    template = get_template("chatml")
    rows = []
    for (question, answer), anchor in ((QA[0], False), (QA[3], True)):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        row = encode_chat(messages, tokenizer, template, 64)
        blank = [IGNORE] * len(row["labels"])
        row["labels"], row["anchor_labels"] = (blank, row["labels"]) if anchor else (row["labels"], blank)
        rows.append(row)
    batch = PaddingCollator(tokenizer.pad_token_id)(rows)
    anchor_labels = batch.pop("anchor_labels")
    return batch, anchor_labels


def _nudge_adapter(model, std: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def test_kl_is_zero_with_a_fresh_adapter_and_positive_after_a_change(tiny_tokenizer):
    model = _peft_model(tiny_tokenizer)
    batch, anchor_labels = _batch(tiny_tokenizer)
    _, _, kl = anchored_loss(model, model, dict(batch), anchor_labels, weight=1.0)
    assert kl is not None and kl.item() == 0.0  # B = 0: the tuned model is the base model, exactly
    _nudge_adapter(model)
    _, _, kl = anchored_loss(model, model, dict(batch), anchor_labels, weight=1.0)
    assert kl.item() > 1e-3


def test_gradient_reaches_only_the_adapter(tiny_tokenizer):
    model = _peft_model(tiny_tokenizer)
    _nudge_adapter(model)
    batch, anchor_labels = _batch(tiny_tokenizer)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE)  # the KL term alone
    loss, _, kl = anchored_loss(model, model, dict(batch), anchor_labels, weight=1.0)
    assert torch.isclose(loss, kl)
    loss.backward()
    adapter = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.grad for n, p in model.named_parameters() if "lora_" not in n}
    assert any(g is not None and g.abs().sum() > 0 for g in adapter.values())
    assert all(g is None for g in base.values())  # frozen, and the base pass ran without gradients


def test_cross_entropy_part_is_the_models_own_loss(tiny_tokenizer):
    model = _peft_model(tiny_tokenizer)
    _nudge_adapter(model)
    batch, anchor_labels = _batch(tiny_tokenizer)
    expected = model(**batch).loss
    # weight 0: the cross-entropy alone, averaged over the labelled tokens as the model averages
    loss, _, _ = anchored_loss(model, model, dict(batch), anchor_labels, weight=0.0)
    torch.testing.assert_close(loss, expected)
    # with a denominator from the whole accumulated batch (Trainer's num_items_in_batch)
    count = int((batch["labels"][:, 1:] != IGNORE).sum())
    loss, _, _ = anchored_loss(model, model, dict(batch), anchor_labels, weight=0.0, ce_denominator=count * 2)
    torch.testing.assert_close(loss, expected / 2)


def test_a_batch_of_anchors_only_has_a_finite_loss(tiny_tokenizer):
    model = _peft_model(tiny_tokenizer)
    _nudge_adapter(model)
    batch, anchor_labels = _batch(tiny_tokenizer)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE)
    loss, _, kl = anchored_loss(model, model, dict(batch), anchor_labels, weight=2.0, ce_denominator=0)
    assert torch.isfinite(loss) and torch.isclose(loss, 2.0 * kl)


def test_kl_reads_the_position_before_each_anchor_token():
    # Two positions differ between tuned and base; only the one that predicts the anchor token counts.
    vocab = 5
    base = torch.zeros(1, 4, vocab)
    tuned = base.clone()
    tuned[0, 1, 0] = 3.0  # predicts token 2, an anchor token
    tuned[0, 2, 0] = 3.0  # predicts token 3, not an anchor token
    anchor_labels = torch.tensor([[IGNORE, IGNORE, 1, IGNORE]])
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(tuned[0, 1], -1),
        torch.log_softmax(base[0, 1], -1),
        log_target=True,
        reduction="sum",
    )
    torch.testing.assert_close(kl_to_base(tuned, base, anchor_labels), expected)


def _kl_on_anchors(base_dir, adapter_dir, tokenizer, pairs) -> float:
    """Mean KL(base || tuned) per answer token over the anchor conversations."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuner.data.encode import encode_chat
    from tuner.data.templates import resolve_template

    template = resolve_template(tokenizer, None)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    total, tokens = 0.0, 0
    for question, answer in pairs:
        messages = [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        row = encode_chat(messages, tokenizer, template, 64)
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row["labels"]])
        with torch.no_grad():
            tuned_logits = tuned(input_ids=ids).logits
            with tuned.disable_adapter():
                base_logits = tuned(input_ids=ids).logits
        total += float(kl_to_base(tuned_logits, base_logits, labels))
        tokens += int((labels[:, 1:] != IGNORE).sum())
    return total / tokens


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_training_with_the_anchor_keeps_anchor_rows_closer_to_the_base(
    tmp_path, tiny_llama_dir, workspace, packed
):
    from transformers import AutoTokenizer

    from tuner.train.run import train

    identity, anchors = QA[:3], QA[3:]
    data = tmp_path / "d.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for _ in range(3):
            for (question, answer), anchor in [(pair, False) for pair in identity] + [
                (pair, True) for pair in anchors
            ]:
                record = {
                    "conversation": [{"system": "You are helpful.", "input": question, "output": answer}]
                }
                record.update({"anchor": True} if anchor else {})
                handle.write(json.dumps(record) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    drift = {}
    for weight in (0.0, 1.0):
        config = make_config(
            tiny_llama_dir,
            data,
            max_steps=6,
            save_steps=100,
            pack_to_max_length=packed,
            anchor_kl_weight=weight,
            output_dir=str(tmp_path / f"run-{weight}"),
        )
        result = train(config)
        assert result.status == "completed"
        drift[weight] = _kl_on_anchors(tiny_llama_dir, result.output_dir, tokenizer, anchors)
        events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
        logged = [e["anchor_kl"] for e in events if e.get("type") == "log" and "anchor_kl" in e]
        assert bool(logged) == (weight > 0)  # the run log shows the term when it is on
    assert drift[1.0] < drift[0.0] / 2, drift


@pytest.mark.parametrize(
    "plan, says",
    [
        ({"lora": False, "cuda_graphs": False, "embedding_on_cpu": False}, "needs a LoRA run"),
        ({"lora": True, "cuda_graphs": True, "embedding_on_cpu": False}, "TUNER_CUDA_GRAPHS=0"),
        ({"lora": True, "cuda_graphs": False, "embedding_on_cpu": True}, "embedding_on_cpu: off"),
    ],
    ids=["full", "cuda-graphs", "host-embedding"],
)
def test_plans_that_cannot_turn_the_adapter_off_are_refused_with_what_to_do(plan, says):
    from types import SimpleNamespace

    from tuner.core.errors import TunerError
    from tuner.train.anchor import refuse_unsupported_plan
    from tuner.train.trainer import make_trainer_class

    with pytest.raises(TunerError, match=says):
        refuse_unsupported_plan(SimpleNamespace(**plan))
    with pytest.raises(TunerError, match=says):
        make_trainer_class(SimpleNamespace(**plan, lean=False, deferred_logging=False), anchor_kl_weight=1.0)
    make_trainer_class(SimpleNamespace(**plan, lean=False, deferred_logging=False))  # off: nothing to refuse


def test_kl_probes_and_whole_answers_train_as_the_config_says(workspace, tiny_tokenizer):
    from types import SimpleNamespace

    from tuner.core.errors import DataError
    from tuner.data.anchors import ANCHOR, ANCHOR_LABELS, KL_ONLY
    from tuner.data.templates import get_template
    from tuner.train.data import encode_for_training

    def sample(question, answer, mark=None):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": messages, **({ANCHOR: mark} if mark else {})}

    samples = [sample(*QA[0]), sample(*QA[1], True), sample(*QA[2], KL_ONLY), sample(*QA[3], KL_ONLY)]
    template = get_template("chatml")

    def config(weight, answers="auto"):
        return SimpleNamespace(
            task="sft",
            anchor_kl_weight=weight,
            anchor_answers=answers,
            max_length=64,
            pack_to_max_length=False,
            tokens_per_step=None,
            seed=0,
        )

    rows, info = encode_for_training(samples, tiny_tokenizer, template, config(0.0))
    # The conversation and the whole-answer anchor train as text; the probes (answers cut short) do not.
    assert len(rows) == 2 and all(set(row) == {"input_ids", "labels"} for row in rows)
    assert info["encode"]["kl_probes_left_out"] == 2
    rows, info = encode_for_training(samples, tiny_tokenizer, template, config(1.0))
    assert len(rows) == 4 and "kl_probes_left_out" not in info["encode"]
    assert [any(label != IGNORE for label in row["labels"]) for row in rows] == [True, False, False, False]
    assert [any(label != IGNORE for label in row[ANCHOR_LABELS]) for row in rows] == [False, True, True, True]
    with pytest.raises(DataError, match="no row is left to train on") as raised:
        encode_for_training(samples[2:], tiny_tokenizer, template, config(0.0))
    assert "anchor_kl_weight" in raised.value.hint
    # anchor_answers says how the whole-answer anchor (row 1) trains; the probes stay with the KL term
    rows, info = encode_for_training(samples, tiny_tokenizer, template, config(1.0, "text"))
    assert [any(label != IGNORE for label in row["labels"]) for row in rows] == [True, True, False, False]
    assert [any(label != IGNORE for label in row[ANCHOR_LABELS]) for row in rows] == [
        False,
        False,
        True,
        True,
    ]
    rows, info = encode_for_training(samples, tiny_tokenizer, template, config(1.0, "off"))
    assert info["encode"]["anchor_answers_left_out"] == 1 and len(rows) == 3
    assert [any(label != IGNORE for label in row[ANCHOR_LABELS]) for row in rows] == [False, True, True]
    rows, info = encode_for_training(samples, tiny_tokenizer, template, config(0.0, "off"))
    assert len(rows) == 1 and info["encode"]["kl_probes_left_out"] == 2  # the one plain conversation
