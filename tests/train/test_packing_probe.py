"""The packing probe (tuner.train.packing_probe): a model that honours packed position ids passes, one whose
attention ignores them is caught, and training then falls back to one sample per row."""

from __future__ import annotations

import json

import torch

from tests.tiny import build_model, build_tokenizer
from tuner.data.pack import PackedCollator
from tuner.train.packing_probe import packs_in_isolation


class IgnoresPositionIds(torch.nn.Module):
    """A causal LM whose attention sees the whole row, like a remote-code model that ignores packing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids=None, **kwargs):
        restarting_ignored = torch.arange(input_ids.shape[1]).unsqueeze(0)
        return self.model(input_ids=input_ids, position_ids=restarting_ignored, **kwargs)


def test_a_model_that_honours_packed_position_ids_passes():
    model = build_model("llama", build_tokenizer(), num_hidden_layers=2)
    model.train()
    assert packs_in_isolation(model, PackedCollator(), 500)
    assert model.training  # left as it was found


def test_a_model_whose_attention_crosses_samples_is_caught(monkeypatch):
    import tuner.train.packing_probe

    for seed in range(3):
        model = IgnoresPositionIds(build_model("llama", build_tokenizer(), seed=seed, num_hidden_layers=2))
        assert not packs_in_isolation(model, PackedCollator(), 500)
        # caught by a wide margin: the leak moves logits by more than 20% of the largest
        monkeypatch.setattr(tuner.train.packing_probe, "ISOLATED_RTOL", 0.2)
        assert not packs_in_isolation(model, PackedCollator(), 500)
        monkeypatch.undo()


def test_training_falls_back_to_one_sample_per_row_when_packing_would_leak(
    workspace, tiny_llama_dir, monkeypatch
):
    import tuner.train.data
    import tuner.train.packing_probe
    from tests.tiny import make_config, write_data
    from tuner.runs.events import read_events
    from tuner.train.run import train

    rows_seen = []
    real_collator = tuner.train.data.make_collator

    def recording_collator(tokenizer, packed, attention="sdpa", pad_to=None):
        rows_seen.append(packed)
        return real_collator(tokenizer, packed, attention, pad_to)

    monkeypatch.setattr(tuner.train.packing_probe, "packs_in_isolation", lambda *args: False)
    monkeypatch.setattr(tuner.train.data, "make_collator", recording_collator)  # the probe's and training's
    data = write_data(workspace / "d.jsonl", repeat=2)
    result = train(make_config(tiny_llama_dir, data, pack_to_max_length=True, max_steps=2, name="leaky"))
    assert result.status == "completed"
    messages = [e.get("message", "") for e in read_events(result.run_dir)]
    assert any("does not keep packed samples apart" in m and "one sample per row" in m for m in messages)
    assert rows_seen[-1] is False  # the training collator pads single samples
    saved = json.loads((result.run_dir / "status.json").read_text())
    assert saved["status"] == "completed"


def test_training_packs_when_the_model_keeps_samples_apart(workspace, tiny_llama_dir, monkeypatch):
    import tuner.train.data
    from tests.tiny import make_config, write_data
    from tuner.runs.events import read_events
    from tuner.train.run import train

    rows_seen = []
    real_collator = tuner.train.data.make_collator

    def recording_collator(tokenizer, packed, attention="sdpa", pad_to=None):
        rows_seen.append(packed)
        return real_collator(tokenizer, packed, attention, pad_to)

    monkeypatch.setattr(tuner.train.data, "make_collator", recording_collator)  # the probe's and training's
    data = write_data(workspace / "d.jsonl", repeat=2)
    result = train(make_config(tiny_llama_dir, data, pack_to_max_length=True, max_steps=2, name="packed"))
    assert result.status == "completed"
    assert not any("packed samples apart" in e.get("message", "") for e in read_events(result.run_dir))
    assert rows_seen == [True, True]  # the probe's collator, then training's: packed rows


def test_a_packing_check_that_cannot_run_means_no_packing(workspace, tiny_llama_dir, monkeypatch):
    import tuner.train.packing_probe
    from tests.tiny import make_config, write_data
    from tuner.runs.events import read_events
    from tuner.train.run import train

    def broken(*args):
        raise RuntimeError("this model wants other inputs")

    monkeypatch.setattr(tuner.train.packing_probe, "packs_in_isolation", broken)
    data = write_data(workspace / "d.jsonl", repeat=2)
    result = train(make_config(tiny_llama_dir, data, pack_to_max_length=True, max_steps=1, name="unchecked"))
    assert result.status == "completed"
    messages = [e.get("message", "") for e in read_events(result.run_dir)]
    assert any(
        "failed to run (RuntimeError: this model wants other inputs)" in m and "one sample per row" in m
        for m in messages
    )
