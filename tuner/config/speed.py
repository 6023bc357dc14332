"""Speed switches of the training path, read from environment variables when a run starts.

A switch's default changes only once bench/bench_train.py has measured the change to pay on a GPU
(docs/benchmarks.md); the bench's ``--variant env.NAME=...`` measures them side by side.
"""

from __future__ import annotations

import os

from tuner.core.errors import TunerError
from tuner.core.system import world_size

SWITCHES = {
    # auto: reentrant on one process, non-reentrant under torchrun (see checkpoint_reentrant)
    "TUNER_CHECKPOINTING": ("non-reentrant", ("auto", "reentrant", "non-reentrant")),
    # lean: tokens and FLOPs counted on the host, no per-step device sync or module walk for them
    # (one process only, see lean_steps); trainer: transformers' own per-step bookkeeping
    "TUNER_STEP_OVERHEAD": ("lean", ("lean", "trainer")),
    # on: packed rows use PyTorch's varlen flash kernel on CUDA when flash-attn is absent
    # (tuner.fast.attention); off: transformers' SDPA with a block mask built from the position ids
    "TUNER_VARLEN": ("on", ("on", "off")),
    # on: peft's k-bit preparation casts the unquantized weights of a 4/8-bit base to fp32;
    # off: they stay bf16/fp16 (tuner.models.load.add_lora)
    "TUNER_KBIT_UPCAST": ("off", ("on", "off")),
    # on: Liger's fused kernels where Liger supports the architecture (CUDA only)
    "TUNER_LIGER": ("on", ("on", "off")),
    # auto: with gradient_checkpointing on, checkpoint only as many layers as the GPU's free memory
    # needs, and keep their inputs in host memory when even every layer does not fit
    # (tuner.plan.estimate.checkpoint_plan; one CUDA process without DeepSpeed); all: every layer;
    # offload: every layer, inputs in host memory (tuner.fast.checkpoint_offload)
    "TUNER_CHECKPOINT_LAYERS": ("auto", ("auto", "all", "offload")),
    # on: LoRA layers train through one fused autograd function each (tuner.fast.lora_fused); off: peft's
    # own forward (always under DeepSpeed: ZeRO-3's weights exist only inside peft's path, and the
    # other stages are not measured with it yet)
    "TUNER_FUSED_LORA": ("on", ("on", "off")),
    # on: when no layer is checkpointed (one CUDA process, no DeepSpeed, varlen or flash attention),
    # the decoder layers replay as CUDA graphs once a row shape repeats, and packed batches are padded
    # to full rows so that they repeat (tuner.fast.layer_graphs)
    "TUNER_CUDA_GRAPHS": ("on", ("on", "off")),
    # auto: when every layer is checkpointed (memory is tight), the frozen input embedding's table
    # stays in host memory and each step looks its tokens up there (tuner.fast.embedding_offload); on:
    # always (one CUDA process, no DeepSpeed, an untied embedding)
    "TUNER_EMBEDDING_ON_CPU": ("auto", ("off", "auto", "on")),
    # on: with tuner_varlen attention on a Hopper (or newer) GPU, a row that is one sample runs
    # SDPA's cuDNN kernel instead of the varlen flash kernel (tuner.fast.attention.cudnn_for_one_sample)
    "TUNER_CUDNN_ATTENTION": ("on", ("on", "off")),
    # on: fused LoRA's backward adds the dropout-masked input gradient with a Triton kernel at full
    # bandwidth instead of PyTorch's mixed-dtype addcmul (tuner.fast.dropout_grad; CUDA with Triton)
    "TUNER_DROPOUT_GRAD_KERNEL": ("on", ("on", "off")),
    # on: fused LoRA draws its dropout mask inside Triton kernels from a per-call seed instead of
    # keeping a dropped-out copy and a mask per linear (tuner.fast.lora_dropout_kernels). Off: measured
    # 18-19% slower at 4096 tokens (bf16 LoRA and QLoRA, H200, session 6) for ~9 GiB less peak memory
    # on an 8B model with no layer checkpointed.
    "TUNER_LORA_DROPOUT_KERNEL": ("off", ("off", "on")),
    # on: a logged step's loss and gradient norm reach the host by an asynchronous copy and are
    # logged at the next logging point, instead of by a device sync at this one (tuner.fast.deferred_log;
    # one process without DeepSpeed)
    "TUNER_DEFERRED_LOGGING": ("on", ("on", "off")),
    # on: on CUDA, accelerate's DataLoader copies each batch to the GPU with non_blocking=True (from
    # pinned memory; one process without DeepSpeed, where it was measured); off: blocking copies, each
    # a device sync at the step boundary, after which the GPU idles through the step's Python prelude
    "TUNER_ASYNC_BATCH_COPY": ("on", ("on", "off")),
    # on: for tuner_varlen attention on unpadded rows, transformers' mask preparation skips its scan
    # of the position ids for packed samples (a device sync per forward) whose result that attention
    # never uses (tuner.fast.attention._skip_packed_scan). The three switches above measured together:
    # +4.3% bf16 LoRA, +3.5-4% QLoRA at 4096 tokens (docs/benchmarks.md, session 6); each of the first
    # two alone changed nothing, as the other's syncs still drained the GPU at the step boundary.
    "TUNER_SKIP_PACKED_SCAN": ("on", ("on", "off")),
    # wide: where no layer is checkpointed, Liger's fused linear cross-entropy computes the logits in
    # chunks of up to half a GiB instead of its default budget (32 chunks of 128 tokens for a 128k
    # vocabulary at 4096 tokens; tuner.fast.loss_chunks). Measured: +2.6% bf16 LoRA and QLoRA on Llama-3-8B
    # at 4096 tokens, +0.2% on Llama-2-7B (32k vocabulary, 1 chunk either way), peak +0.06 GiB
    # (docs/benchmarks.md, session 7).
    "TUNER_LOSS_CHUNKS": ("wide", ("liger", "wide")),
}


def switch(name: str) -> str:
    default, allowed = SWITCHES[name]
    value = os.environ.get(name, "").strip().lower() or default
    if value not in allowed:
        raise TunerError(f"{name}={value!r}: use one of {', '.join(allowed)}")
    return value


def checkpoint_reentrant() -> bool:
    """Which gradient checkpointing: reentrant or not.

    The reentrant kind runs the first forward under no_grad and builds the autograd graph once, in
    the backward's recomputation; the non-reentrant kind builds it twice (forward and recomputation)
    and calls saved-tensor hooks on every op, which costs CPU time per step that short rows cannot
    hide behind GPU work. Under torchrun the non-reentrant kind stays: DistributedDataParallel with
    find_unused_parameters (which transformers turns on for peft models) fails with reentrant
    checkpointing."""
    mode = switch("TUNER_CHECKPOINTING")
    if mode == "auto":
        return world_size() <= 1
    return mode == "reentrant"


def lean_steps() -> bool:
    """Trim Trainer's per-step host work (see make_trainer_class). One process only: with several,
    each rank's token count must be gathered, which is what Trainer's own bookkeeping does."""
    return switch("TUNER_STEP_OVERHEAD") == "lean" and world_size() <= 1


def deferred_logging() -> bool:
    """Whether logged values are read back one logging point late (see tuner.fast.deferred_log)."""
    return switch("TUNER_DEFERRED_LOGGING") == "on" and world_size() <= 1


def fused_lora_in_use(method: str, deepspeed) -> bool:
    """Whether training runs LoRA through tuner.fast.lora_fused: TUNER_FUSED_LORA on, a LoRA method, and
    not under DeepSpeed (ZeRO-3 gathers weights only inside peft's own path, and the fused function
    has not been run under the other stages' engines on a GPU)."""
    return method != "full" and not deepspeed and switch("TUNER_FUSED_LORA") == "on"


def embedding_on_cpu(every_layer_checkpointed: bool, deepspeed) -> bool:
    """Whether TUNER_EMBEDDING_ON_CPU asks for the input embedding in host memory in this run (the
    embedding itself must allow it too: tuner.fast.embedding_offload.why_not_offloadable)."""
    mode = switch("TUNER_EMBEDDING_ON_CPU")
    wanted = mode == "on" or (mode == "auto" and every_layer_checkpointed)
    return wanted and not deepspeed and world_size() <= 1
