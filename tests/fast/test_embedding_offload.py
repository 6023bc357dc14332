"""tuner.fast.embedding_offload: the input embedding's table in host memory gives the same outputs and
gradients, keeps the require-grad hook gradient checkpointing needs, and refuses tied or trained
embeddings. On the CPU the "device" is the CPU itself; the memory saving is measured on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuner.fast.embedding_offload import HostEmbedding, offload_embedding, why_not_offloadable


def _model(tiny_tokenizer, **sizes):
    from tests.tiny import build_model

    return build_model("llama", tiny_tokenizer, **sizes)


def test_host_embedding_looks_up_the_same_rows():
    torch.manual_seed(0)
    embedding = nn.Embedding(50, 8, padding_idx=0).requires_grad_(False)
    host = HostEmbedding(embedding)
    ids = torch.tensor([[0, 3, 49, 3]])
    assert torch.equal(host(ids), embedding(ids))
    assert host.weight.device.type == "cpu" and host.num_embeddings == 50 and host.embedding_dim == 8
    assert not list(host.parameters()) and not list(host.buffers())  # model.to() cannot move it back


def test_refused_where_the_embedding_cannot_move(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    model.requires_grad_(False)
    assert why_not_offloadable(model) == "the input embedding is on cpu, not a GPU"
    model.get_input_embeddings().weight.requires_grad_(True)
    assert why_not_offloadable(model) == "the input embedding trains"
    tied = _model(tiny_tokenizer, tie_word_embeddings=True).requires_grad_(False)
    with pytest.raises(ValueError, match="tied to the LM head"):
        offload_embedding(tied)
    assert type(tied.get_input_embeddings()) is nn.Embedding  # left as it was


def test_a_lora_model_trains_the_same_with_the_table_in_host_memory(tiny_tokenizer, monkeypatch):
    # why_not_offloadable wants a GPU; on the CPU the move itself is what is tested
    import tuner.fast.embedding_offload as offload
    from tuner.models.load import add_lora

    ids = torch.randint(3, 500, (2, 16))

    def loss_and_grads(model):
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    results = []
    for move in (False, True):
        model = add_lora(
            _model(tiny_tokenizer), r=4, alpha=8, dropout=0.0, gradient_checkpointing=True
        )
        model.train()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.linspace(-0.1, 0.1, param.numel()).view_as(param))
        if move:
            monkeypatch.setattr(offload, "why_not_offloadable", lambda model: None)
            size = offload_embedding(model)
            embedding = model.get_base_model().get_input_embeddings()
            assert isinstance(embedding, HostEmbedding) and size == embedding.weight.numel() * 4
            assert embedding(ids).requires_grad  # the input-gradient hook checkpointing relies on is back
        results.append(loss_and_grads(model))
    (loss, grads), (moved_loss, moved_grads) = results
    assert grads and grads.keys() == moved_grads.keys()
    torch.testing.assert_close(moved_loss, loss)
    for name in grads:
        torch.testing.assert_close(moved_grads[name], grads[name])


def test_asked_for_on_a_cpu_the_embedding_stays_and_the_run_builds(
    workspace, tiny_llama_dir, monkeypatch, caplog
):
    import logging

    from tests.tiny import make_config, write_data
    from tuner.train.model import build_model

    config = make_config(tiny_llama_dir, write_data(workspace / "d.jsonl"), name="emb", embedding_on_cpu="on")
    with caplog.at_level(logging.INFO, logger="tuner.train.model"):
        model, loaded = build_model(config)
    assert type(model.get_base_model().get_input_embeddings()) is nn.Embedding
    assert loaded.embedding_on_cpu == "" and "input embedding" not in loaded.describe()
    assert "input embedding stays on the GPU: the input embedding is on cpu, not a GPU" in caplog.text


def test_the_forward_looks_up_the_host_ids_it_is_handed_and_reads_back_without_them():
    from accelerate.utils import send_to_device

    from tuner.fast.embedding_offload import HOST_INPUT_IDS, HostIds, hand_over_host_ids, with_host_input_ids

    embedding = nn.Embedding(50, 4).requires_grad_(False)
    host = HostEmbedding(embedding)
    model = nn.Module()
    model.get_input_embeddings = lambda: host
    batch = with_host_input_ids(lambda rows: {"input_ids": torch.tensor([rows])})([5, 6, 7])
    assert isinstance(batch[HOST_INPUT_IDS], HostIds)
    moved = send_to_device(batch, "meta")  # what the Trainer's DataLoader does with a batch
    assert moved["input_ids"].device.type == "meta" and moved[HOST_INPUT_IDS] is batch[HOST_INPUT_IDS]
    hand_over_host_ids(model, moved)
    assert HOST_INPUT_IDS not in moved  # the model never sees it
    # The handed-over copy is what the forward looks up (a different tensor of the same shape here,
    # to tell them apart), once: the next forward reads its own ids back.
    assert torch.equal(host(torch.tensor([[1, 2, 3]])), embedding(torch.tensor([[5, 6, 7]])))
    assert host.readbacks == 0
    assert torch.equal(host(torch.tensor([[1, 2, 3]])), embedding(torch.tensor([[1, 2, 3]])))
    assert host.readbacks == 1
    host.next_host_ids = torch.tensor([[5, 6]])  # a shape that does not match is not used
    assert torch.equal(host(torch.tensor([[1, 2, 3]])), embedding(torch.tensor([[1, 2, 3]])))
    assert host.readbacks == 2


def test_a_training_run_hands_every_forward_its_host_ids(workspace, tiny_llama_dir, monkeypatch):
    # The whole path on a CPU (the move itself allowed there): collator, DataLoader, tuner's Trainer.
    import tuner.fast.embedding_offload as offload
    from tests.tiny import make_config, write_data
    from tuner.train.run import train

    monkeypatch.setattr(offload, "why_not_offloadable", lambda model: None)
    handed = []
    forward = HostEmbedding.forward

    def spy(self, input_ids):
        handed.append(self.next_host_ids is not None and torch.equal(self.next_host_ids, input_ids))
        return forward(self, input_ids)

    monkeypatch.setattr(HostEmbedding, "forward", spy)
    config = make_config(
        tiny_llama_dir, write_data(workspace / "d.jsonl"), name="emb", max_steps=3, embedding_on_cpu="on"
    )
    result = train(config)
    assert result.status == "completed"
    assert len(handed) >= 3 and all(handed)
