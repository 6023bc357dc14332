"""The model a training run trains: the base model loaded (4/8-bit), then the run's plan
(tuner.plan.decide.RunPlan) executed on it: attention, Liger's kernels, LoRA, fused LoRA, which layers
are checkpointed and what waits in host memory, CUDA graphs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from tuner.config.deepspeed import partitions_weights
from tuner.config.schema import method_bits
from tuner.config.speed import SpeedSettings
from tuner.core import system
from tuner.core.system import ALLOCATOR_TIP, CUDA_CONTEXT_GIB, GIB, expandable_segments_on, gpu_memory_cap_gib
from tuner.fast import embedding_offload, seeded_dropout
from tuner.fast.attention import NAME as VARLEN
from tuner.fast.attention import use_varlen_attention
from tuner.fast.checkpoint_offload import offload_checkpoints
from tuner.fast.layer_graphs import graph_layers
from tuner.fast.lora_fused import fuse_lora, set_dropout_regeneration
from tuner.fast.loss_chunks import use_wide_chunks
from tuner.fast.rebuilt_activations import rebuild_activations
from tuner.models.layers import checkpointing_layers, decoder_layers
from tuner.models.load import LoadedModel, add_lora, apply_liger, load_model
from tuner.models.shape import shape_from_config
from tuner.plan.decide import RunPlan, liger_applies, plan_run
from tuner.plan.memory import CHECKPOINT_GRAPH_MAX_TOKENS

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    """What build_model did: the loaded base, the plan it executed, and what each mechanism reported
    (a mechanism may still decline what the plan asked, e.g. an embedding tied to the LM head)."""

    loaded: LoadedModel
    plan: RunPlan | None = None
    attention: str = ""
    attention_reason: str = ""
    liger: bool = False
    fused_lora: int = 0  # LoRA layers running tuner.fast.lora_fused's fused function
    checkpointing: str = ""  # which layers recompute their activations ("" when checkpointing is off)
    memory_tight: bool = False  # every layer had to be checkpointed to fit
    wide_loss_chunks: bool = False
    embedding_on_cpu: str = ""  # what tuner.fast.embedding_offload did ("" nothing)
    layer_graphs: object = None  # tuner.fast.layer_graphs.LayerGraphs when installed
    rebuilt_layers: int = 0  # kept layers rebuilding cheap activations (tuner.fast.rebuilt_activations)

    @property
    def dtype(self):
        return self.loaded.dtype

    def describe(self) -> str:
        loaded = self.loaded
        quant = f", {loaded.bits}-bit" if loaded.bits else ""
        liger = ", liger kernels" if self.liger else ""
        liger += " (wide loss chunks)" if self.wide_loss_chunks else ""
        ckpt = f", gradient checkpointing {self.checkpointing}" if self.checkpointing else ""
        fused = f", {self.fused_lora} fused LoRA layers" if self.fused_lora else ""
        if self.rebuilt_layers:
            fused += f", cheap activations rebuilt in {self.rebuilt_layers} kept layers"
        graphs = f", {self.layer_graphs.describe()}" if self.layer_graphs is not None else ""
        graphs += f", {self.embedding_on_cpu}" if self.embedding_on_cpu else ""
        dtype = str(loaded.dtype).replace("torch.", "")
        return (
            f"{loaded.device}, {dtype}{quant}, attention {self.attention} ({self.attention_reason})"
            f"{liger}{fused}{ckpt}{graphs}"
        )


def build_model(config, settings: SpeedSettings | None = None):
    """Base model (+ LoRA unless full fine-tuning) with the run's plan executed on it. Returns
    (model, BuiltModel). ``settings``: the run's speed settings (default: this environment's)."""
    settings = settings or SpeedSettings.from_env(os.environ)
    system.use_local_gpu()  # under torchrun: the plan prices, and the weights go to, this rank's GPU
    hw = system.hardware()
    bits = method_bits(config)
    loaded = load_model(
        config.model,
        bits=bits,
        precision=config.precision,
        trust_remote_code=config.trust_remote_code,
        partitioned=partitions_weights(config.deepspeed),
    )
    model = loaded.model
    model.config.use_cache = False  # caches are useless in training and break position-id packing
    built = BuiltModel(loaded, attention=loaded.attention, attention_reason=loaded.attention_reason)
    if settings.attention == "tuner":
        switched, why = use_varlen_attention(model, skip_packed_scan=settings.lean_steps)
        if switched:
            built.attention, built.attention_reason = VARLEN, why
    if liger_applies(config, settings, hw):
        built.liger = apply_liger(model)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    plan = plan_run(
        config,
        settings,
        hw,
        shape_from_config(text_config.to_dict()),
        budget_gib=_budget_gib(),
        liger=built.liger,
        dropout_kernels=seeded_dropout.available(),
    )
    built.plan = plan
    if config.method != "full":
        model = add_lora(
            model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            targets=config.lora_targets,
            quantized=bits is not None,
            gradient_checkpointing=config.gradient_checkpointing,
            upcast=plan.kbit_upcast,
            dora=config.use_dora,
            rslora=config.use_rslora,
            init=config.lora_init,
        )
        if plan.fused_lora:
            built.fused_lora = fuse_lora(
                model, seeded_dropout=plan.seeded_dropout, dropout_product=plan.seeded_product
            )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    built.checkpointing = limit_checkpointing(model, config, built)
    if built.liger:
        # Set for every run (the wrapper is process-wide): wide only where the plan checkpoints no
        # layer, so the half-GiB chunk is small against what the run holds.
        built.wide_loss_chunks = use_wide_chunks(built.plan.wide_loss_chunks)
    if built.plan.embedding_on_cpu:
        built.embedding_on_cpu = move_embedding_to_host(model)
    if built.plan.rebuild_activations:
        # before the graphs: they capture the layers' forward as it is then
        built.rebuilt_layers = rebuild_activations(decoder_layers(model))
    if built.plan.cuda_graphs:
        built.layer_graphs = graph_layers(
            model,
            built.attention,
            offload_checkpoints=built.plan.offload_checkpoints,
            max_checkpointed_tokens=CHECKPOINT_GRAPH_MAX_TOKENS,
        )
    log.info("run plan: %s", built.plan.describe())
    return model, built


def _budget_gib() -> float | None:
    """The GPU memory a run may use: what is free now plus what PyTorch holds (the weights just
    loaded) and the CUDA context, within TUNER_GPU_MEMORY_GIB; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    budget = (free + torch.cuda.memory_reserved()) / GIB + CUDA_CONTEXT_GIB
    cap = gpu_memory_cap_gib()
    return budget if cap is None else min(budget, cap)


def limit_checkpointing(model, config, built: BuiltModel) -> str:
    """Leave gradient checkpointing on only for the layers the plan checkpoints, the first ones, and
    keep their saved inputs in host memory where the plan says so: a layer left out keeps its
    activations and skips its recomputation, about a third of its compute. Returns what the run log
    says about it ("" when checkpointing is off)."""
    if not config.gradient_checkpointing:
        return ""
    layers = checkpointing_layers(model)
    plan = built.plan
    if plan.device != "cuda" or not layers:
        built.memory_tight = True
        return "on every layer"
    count = min(plan.checkpointed_layers, len(layers))
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < count
    if built.fused_lora and count and not plan.checkpoint_graphs and not plan.seeded_dropout:
        # A checkpointed layer's saved tensors are what the backward peak holds: there LoRA dropout
        # keeps only the shared input and draws its mask again instead of saving a copy per linear
        # (not in CUDA graphs: the redraw swaps generator states on the host, tuner.fast.checkpoint_graphs).
        for layer in layers[:count]:
            set_dropout_regeneration(layer, True)
    built.memory_tight = count == len(layers)
    budget = plan.budget_gib
    if count == 0:
        return (
            f"on 0 of {len(layers)} layers (every layer's activations fit in {budget:.0f} GiB of GPU memory)"
        )
    if count < len(layers):
        return f"on {count} of {len(layers)} layers (the rest fit in {budget:.0f} GiB of GPU memory)"
    if plan.offload_checkpoints:
        offload_checkpoints(layers)
        tip = "" if expandable_segments_on() else f"; {ALLOCATOR_TIP}"
        return f"on every layer ({count}), inputs kept in host memory{tip}"
    return f"on every layer ({count})"


def move_embedding_to_host(model) -> str:
    """The input embedding's table into host memory where it can go (tuner.fast.embedding_offload);
    returns what the run log says about it."""
    reason = embedding_offload.why_not_offloadable(model)
    if reason:
        log.info("input embedding stays on the GPU: %s", reason)
        return ""
    size = embedding_offload.offload_embedding(model)
    return f"input embedding in host memory ({size / 2**30:.2f} GiB of GPU memory freed)"
