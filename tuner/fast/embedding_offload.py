"""The frozen input embedding kept in host memory during training, to lower peak GPU memory.

Why: LoRA and QLoRA never train the input embedding, yet it sits on the GPU in 16 bits: 0.24 GiB
for Llama-2-7B's 32k vocabulary, 1.0 GiB for Llama-3-8B's 128k, as much as a whole recomputed layer
or more. A step needs only the rows of its tokens (4096 x 4096 x 2 bytes = 32 MiB at 4096 tokens):
looking them up on the host and copying them over costs a few milliseconds of host work, so it is
meant for runs whose memory is tight (every layer checkpointed).

The lookup needs the token ids on the host. Reading them back from the GPU would wait for all the
GPU work queued before them (the previous step's backward and optimizer), leaving the GPU idle while
the host then queues the next forward: measured on an H200, that cost up to 21% of a Llama-2 QLoRA
step. So training batches also carry the collator's own host copy of the ids
(:func:`with_host_input_ids`), which tuner's Trainer hands to the embedding just before the forward
(:func:`hand_over_host_ids`); a forward without one (generation, another caller) reads them back.

Only a plain, untied ``nn.Embedding`` that does not train moves (a tied one is also the LM head,
which the GPU needs; scaled embeddings such as Gemma's are subclasses and stay). The hooks that make
the embedding's output require grad (gradient checkpointing with LoRA) are set again on the new
module. The host copy is a plain attribute, not a parameter or buffer, so ``model.to()`` leaves it
where it is and the model's device stays the GPU.
"""

from __future__ import annotations

import torch
from torch import nn


class HostEmbedding(nn.Module):
    """An input embedding whose table is in host memory and whose output is on ``device``."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.device = embedding.weight.device
        self.host_weight = embedding.weight.detach().to("cpu")  # not a parameter: model.to() leaves it
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.next_host_ids = None  # the next forward's token ids on the host (hand_over_host_ids)
        self.readbacks = 0  # forwards not handed their ids, which read them back from the device

    @property
    def weight(self) -> torch.Tensor:
        return self.host_weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids, self.next_host_ids = self.next_host_ids, None  # good for one forward only
        if ids is None or ids.shape != input_ids.shape:
            ids = input_ids.to("cpu")
            self.readbacks += 1
        flat = ids.reshape(-1)
        pin = self.device.type == "cuda"  # a pinned source lets the copy below leave the host free
        rows = torch.empty((flat.numel(), self.embedding_dim), dtype=self.host_weight.dtype, pin_memory=pin)
        torch.index_select(self.host_weight, 0, flat, out=rows)
        return rows.view(*ids.shape, self.embedding_dim).to(self.device, non_blocking=True)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, table in host memory, output on {self.device}"


# Batch key of the token ids' host copy (a HostIds); tuner's Trainer takes it out before the model
# sees the batch.
HOST_INPUT_IDS = "tuner_host_input_ids"


class HostIds:
    """A CPU tensor that rides in a batch unmoved: accelerate moves only what has ``.to`` to the
    device, and the DataLoader pins only what has ``.pin_memory``."""

    __slots__ = ("ids",)

    def __init__(self, ids: torch.Tensor):
        self.ids = ids


def with_host_input_ids(collator):
    """``collator`` whose batches also carry their input ids' host copy under HOST_INPUT_IDS."""

    def collate(rows):
        batch = collator(rows)
        batch[HOST_INPUT_IDS] = HostIds(batch["input_ids"])
        return batch

    return collate


def hand_over_host_ids(model, inputs: dict) -> None:
    """Take the host copy of the ids out of ``inputs`` and give it to ``model``'s HostEmbedding for
    the forward that comes next (nothing to do where the model has none)."""
    host = inputs.pop(HOST_INPUT_IDS, None)
    embedding = _base(model).get_input_embeddings() if host is not None else None
    if isinstance(embedding, HostEmbedding):
        embedding.next_host_ids = host.ids


def _base(model) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _require_grads_hooks(base) -> list:
    hooks = getattr(base, "_require_grads_hooks", None)  # transformers 5.24+: one per embedding
    if hooks:
        return list(hooks)
    hook = getattr(base, "_require_grads_hook", None)  # earlier: one
    return [hook] if hook is not None else []


def why_not_offloadable(model) -> str | None:
    """Why ``model``'s input embedding cannot move to host memory, or None when it can."""
    base = _base(model)
    embedding = base.get_input_embeddings()
    if type(embedding) is not nn.Embedding:
        return f"the input embedding is a {type(embedding).__name__}, not a plain nn.Embedding"
    if embedding.weight.requires_grad:
        return "the input embedding trains"
    output = base.get_output_embeddings()
    weight = getattr(output, "weight", None)
    if weight is not None and weight.data_ptr() == embedding.weight.data_ptr():
        return "the input embedding is tied to the LM head"
    if embedding.weight.device.type != "cuda":
        return f"the input embedding is on {embedding.weight.device.type}, not a GPU"
    return None


def offload_embedding(model) -> int:
    """Move ``model``'s frozen input embedding to host memory (see the module docstring). Returns the
    bytes of GPU memory it held; raises ValueError with the reason where it cannot move."""
    reason = why_not_offloadable(model)
    if reason:
        raise ValueError(reason)
    base = _base(model)
    embedding = base.get_input_embeddings()
    size = embedding.weight.numel() * embedding.weight.element_size()
    hooks = _require_grads_hooks(base)
    for hook in hooks:
        hook.remove()
    base.set_input_embeddings(HostEmbedding(embedding))
    if hooks:
        base.enable_input_require_grads()
    return size
