"""The model a training run trains: base load (4/8-bit), attention and fused kernels, LoRA, and the
DeepSpeed config that decides some of it."""

from __future__ import annotations

import logging

from tuner.config.deepspeed import partitions_weights
from tuner.config.schema import method_bits
from tuner.config.speed import checkpoint_reentrant, embedding_on_cpu, fused_lora_in_use, switch
from tuner.core import system
from tuner.models.layers import checkpointing_layers

log = logging.getLogger(__name__)


def build_model(config):
    """Base model (+ LoRA unless full fine-tuning), with gradient checkpointing as asked."""
    from tuner.models.load import add_lora, load_model

    bits = method_bits(config)
    loaded = load_model(
        config.model, bits=bits, precision=config.precision, trust_remote_code=config.trust_remote_code
    )
    model = loaded.model
    model.config.use_cache = False  # caches are useless in training and break position-id packing
    if switch("TUNER_VARLEN") == "on":
        from tuner.fast.attention import NAME as VARLEN
        from tuner.fast.attention import use_for_training

        switched, why = use_for_training(model)
        if switched:
            loaded.attention, loaded.attention_reason = VARLEN, why
    if switch("TUNER_LIGER") == "on" and not partitions_weights(config):
        from tuner.models.load import apply_liger

        loaded.liger = apply_liger(model)
    reentrant = checkpoint_reentrant()
    if config.method == "full":
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            if reentrant:
                model.enable_input_require_grads()
        loaded.checkpointing = limit_checkpointing(model, config, loaded)
        return model, loaded
    model = add_lora(
        model,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=config.lora_targets,
        quantized=bits is not None,
        gradient_checkpointing=config.gradient_checkpointing,
        reentrant=reentrant,
        upcast=switch("TUNER_KBIT_UPCAST") == "on",
        dora=config.use_dora,
        rslora=config.use_rslora,
        init=config.lora_init,
    )
    if fused_lora_in_use(config.method, config.deepspeed):
        from tuner.fast.lora_fused import fuse_lora

        loaded.fused_lora = fuse_lora(model)
    loaded.checkpointing = limit_checkpointing(model, config, loaded)
    if loaded.liger:
        from tuner.fast.loss_chunks import use_wide_chunks

        # Set for every run (the wrapper is process-wide): wide only where memory left every layer's
        # activations on the GPU, so the half-GiB chunk is small against what the run holds.
        roomy = not any(
            getattr(layer, "gradient_checkpointing", False) for layer in checkpointing_layers(model)
        )
        loaded.wide_loss_chunks = use_wide_chunks(switch("TUNER_LOSS_CHUNKS") == "wide" and roomy)
    if embedding_on_cpu(loaded.memory_tight, config.deepspeed):
        loaded.embedding_on_cpu = move_embedding_to_host(model)
    if switch("TUNER_CUDA_GRAPHS") == "on" and not config.deepspeed:
        from tuner.fast.layer_graphs import graph_layers

        loaded.layer_graphs = graph_layers(model, loaded)
    return model, loaded


def limit_checkpointing(model, config, loaded) -> str:
    """Leave gradient checkpointing on only for the layers that memory needs it for, the first ones,
    and keep their saved inputs in host memory when even that does not fit (tuner.plan.estimate.checkpoint_plan,
    from the GPU memory free now): a layer left out keeps its activations and skips its recomputation,
    about a third of its compute. Returns what the run log says about it ("" when checkpointing is off)."""
    if not config.gradient_checkpointing:
        return ""
    import torch

    from tuner.core.system import (
        ALLOCATOR_TIP,
        CUDA_CONTEXT_GIB,
        expandable_segments_on,
        gpu_memory_cap_gib,
    )
    from tuner.models.shape import shape_from_config
    from tuner.plan.estimate import GIB, checkpoint_plan

    layers = checkpointing_layers(model)
    if not torch.cuda.is_available() or not layers:
        loaded.memory_tight = True
        return "on every layer"
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    shape = shape_from_config(text_config.to_dict())
    free, _ = torch.cuda.mem_get_info()
    budget = (free + torch.cuda.memory_reserved()) / GIB + CUDA_CONTEXT_GIB
    cap = gpu_memory_cap_gib()
    if cap is not None:
        budget = min(budget, cap)
    upcast = switch("TUNER_KBIT_UPCAST") == "on"
    count, offload = checkpoint_plan(config, shape, system.hardware(), budget, liger=loaded.liger, upcast=upcast)
    count = min(count, len(layers))
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < count
    if loaded.fused_lora and count:
        from tuner.fast.lora_fused import set_dropout_regeneration

        # A checkpointed layer's saved tensors are what the backward peak holds: there LoRA dropout
        # keeps only the shared input and draws its mask again instead of saving a copy per linear.
        for layer in layers[:count]:
            set_dropout_regeneration(layer, True)
    loaded.memory_tight = count == len(layers)
    if count == 0:
        return (
            f"on 0 of {len(layers)} layers (every layer's activations fit in {budget:.0f} GiB of GPU memory)"
        )
    if count < len(layers):
        return f"on {count} of {len(layers)} layers (the rest fit in {budget:.0f} GiB of GPU memory)"
    if offload:
        from tuner.fast.checkpoint_offload import offload_checkpoints

        offload_checkpoints(layers)
        tip = "" if expandable_segments_on() else f"; {ALLOCATOR_TIP}"
        return f"on every layer ({count}), inputs kept in host memory{tip}"
    return f"on every layer ({count})"


def move_embedding_to_host(model) -> str:
    """The input embedding's table into host memory where it can go (tuner.fast.embedding_offload);
    returns what the run log says about it."""
    from tuner.fast.embedding_offload import offload_embedding, why_not_offloadable

    reason = why_not_offloadable(model)
    if reason:
        log.info("input embedding stays on the GPU: %s", reason)
        return ""
    size = offload_embedding(model)
    return f"input embedding in host memory ({size / 2**30:.2f} GiB of GPU memory freed)"


