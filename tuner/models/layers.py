from __future__ import annotations


def decoder_layers(model) -> list:
    """The decoder layers, in order, of a model whose layers transformers can checkpoint one by one
    (empty for remote-code models)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpointing_layers(model) -> list:
    """The decoder layers transformers checkpoints one by one (empty for remote-code models, whose
    own checkpointing stays all-or-nothing)."""
    return [layer for layer in decoder_layers(model) if layer.gradient_checkpointing]
