"""The memory and time model: what a RunPlan costs. A rough, documented first-order model.

The numbers are first-order estimates meant to answer "fits / won't fit, and what to change"; the
constants below are to be calibrated against GPU measurements (see bench/). Memory, in bytes:

- base weights: ``params x bits / 8`` (16-bit = 2 bytes, 8-bit = 1, 4-bit NF4 ~ 4.5 bits with its
  block constants; fp32 on a CPU = 4 bytes).
- trainable parameters (LoRA adapters, or every weight for a full fine-tune) cost
  ``16 bytes each``: fp32 weight 4 + fp32 gradient 4 + two fp32 AdamW moments 8.
- activations: a checkpointed layer keeps only its 16-bit input (``tokens x hidden x 2`` bytes) and one
  layer is recomputed at a time during the backward pass; a layer that is not checkpointed keeps
  everything its backward pass needs (``tokens x hidden x ACT_BYTES...`` below, measured: attention
  scores are never stored with sdpa/flash kernels). With ``gradient_checkpointing`` on, tuner
  checkpoints only as many layers as the GPU's memory needs (tuner.plan.decide), the last layers
  first left out: on a large card nothing is recomputed; where even every layer does not fit, the
  checkpointed inputs wait in host memory (tuner.fast.checkpoint_offload).
- logits: ``tokens x vocab x 4 bytes x 2`` (fp32 logits and their gradient in the loss).
- a fixed overhead (CUDA context, allocator slack).

``tokens`` = batch_size x tokens per row (``tokens_per_step`` or ``max_length``). Time: a training
token costs ``6 x params`` FLOPs for a full fine-tune, ``4 x params`` for LoRA (no weight gradients
of the frozen base), plus ``2 x params`` to recompute the forward pass with gradient checkpointing,
at an assumed effective throughput (MFU) per device.

``price`` counts exactly what a tuner.plan.decide.RunPlan says the run does; it decides nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuner.core.system import GIB, Hardware
from tuner.models.shape import ModelShape, lora_params

if TYPE_CHECKING:
    from tuner.plan.decide import RunPlan


# Calibrated on H100 measurements (bench/results/2026-11-28-h100-80gb-hbm3*.json): Llama-2-7B, Llama-3-8B
# and Qwen2.5-7B, QLoRA and bf16 LoRA r64, 512 to 131072 tokens per row, with and without Liger and
# the fp32 upcast; tests/test_estimate.py keeps every recorded row within 15% of its measured peak.
# NF4 with double quantization: 4 bits + one 8-bit scale per 64 weights + fp32 scales of those.
NF4_BITS = 4.127
# Activation bytes per token per hidden unit kept by one layer that is not checkpointed:
# ACT_BYTES + ACT_MLP_BYTES x intermediate / hidden, plus, with LoRA dropout, DROPOUT_BYTES x (6 +
# intermediate / hidden) for the dropped-out copies of the 7 adapted layers' inputs and their masks.
# Fitted on H200 rows without checkpointing (bench/results/2026-12-01-h200-nockpt.json): Llama-2-7B
# QLoRA 4096 with and without dropout, Llama-3-8B bf16 LoRA 4096 and QLoRA 2048.
ACT_BYTES = 19.0
ACT_MLP_BYTES = 5.3
DROPOUT_BYTES = 1.92
# Of those, what tuner.fast.rebuilt_activations rebuilds in backward instead (where the LoRA keeps its
# input: no dropout, or seeded): the MLP's gated product (2 bytes x intermediate / hidden) and, with
# Liger's RMSNorm, the two norm outputs (2 bytes each). Counted from the tensors the layer keeps, not
# yet measured on a GPU; the plan rebuilds only for the model families whose layers the mechanism knows.
REBUILT_PRODUCT_BYTES = 2
REBUILT_NORM_BYTES = 4
REBUILT_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# With gradient checkpointing a layer keeps only its input: 2 bytes per hidden unit in bf16/fp16, 4
# when peft's k-bit preparation has cast the embedding to fp32 (the residual stream is then fp32) ...
# ... plus the one layer recomputed during the backward pass: RECOMPUTE_BYTES + RECOMPUTE_MLP_BYTES x
# intermediate / hidden (the MLP's wide tensors dominate it).
RECOMPUTE_BYTES = 16
RECOMPUTE_MLP_BYTES = 15
# ... less, with LoRA dropout and fused LoRA, what regenerating the masks (tuner.fast.lora_fused) or drawing
# them from seeds (tuner.fast.seeded_dropout) saves in that layer: per hidden unit, q/k/v keep one shared input instead of three copies and three
# masks (7 bytes), o 1, gate/up 4, down 1 x intermediate / hidden. Measured on H200: -0.28 GiB for
# Llama-2-7B QLoRA at 4096 (bench/results/2026-12-01-h200-memory-regen.json); this counts 0.23.
REGEN_SAVED_BYTES = 12
# CUDA graphs of the layers that keep their activations (tuner.fast.layer_graphs) keep a static copy of
# each layer's 16-bit input: measured +1.2 GiB for 32 layers of hidden 4096 at 4096 tokens, +0.9 GiB for
# Qwen2.5-7B (28 x 3584) on H200 (bench/results/2026-12-01-h200-{graphs2,qwen}.json).
GRAPH_INPUT_BYTES = 2
# The checkpointed layers' graphs (tuner.fast.checkpoint_graphs) hold one layer's recomputation in a
# private pool that the rest of the step cannot reuse, three row-sized static buffers, and no dropout
# regeneration. Measured on H200 for Llama-2-7B QLoRA at 4096 tokens, every layer checkpointed: +0.82 GiB
# peak with the inputs offloaded (5.43 -> 6.25), +0.55 GiB with them on the GPU (5.70 -> 6.25); 29 and
# 20 of 32 layers checkpointed and graphed: 9.22 and 16.21 GiB (bench/results/2026-12-04-h200-
# {checkpoint-graphs,budgets-llama2-graphs,budgets-llama3}.json). 24 bytes per token per hidden unit
# besides the regeneration's keeps every one of those rows within 15% (tests/plan/test_estimate.py).
CHECKPOINT_GRAPH_BYTES = 24
# Rows longer than this recompute eagerly: the buffers grow with the row while the host's share of the
# step shrinks.
CHECKPOINT_GRAPH_MAX_TOKENS = 8192
# Bytes per token per vocabulary entry at the peak when the logits are materialised (16-bit logits,
# their fp32 loss copies and gradients, not all alive at once); Liger's fused cross-entropy never
# materialises them (chunks of a few thousand tokens: negligible).
LOGIT_BYTES = 4.75
# DoRA (peft's DoraLinearLayer, use_dora: true) keeps each adapted linear's 16-bit base output for the
# magnitude's gradient (per token: the linears' output widths x 2 bytes per layer that keeps its
# activations), and for one linear at a time builds an identity of its input width and its full weight
# three times (dequantized, the LoRA product, their sum for the column norms). Counted from peft's
# forward, not measured.
DORA_OUTPUT_BYTES = 2
DORA_WEIGHT_COPIES = 3
BYTES_PER_TRAINABLE = 16  # fp32 weight + fp32 grad + AdamW m and v
DDP_BUCKET_BYTES = 4  # DDP's fp32 gradient bucket per trainable parameter
# bitsandbytes' paged AdamW keeps m and v (8 bytes) in unified memory, outside PyTorch's allocator.
PAGED_OPTIMIZER_BYTES = 8
GPU_OVERHEAD_GIB = 1.4  # CUDA context and allocator fragmentation: on the device, not allocated
CPU_OVERHEAD_GIB = 1.0  # Python, torch and tokenizer in RAM
# Share of the device memory a run may plan to use; the rest is headroom for spikes.
USABLE_FRACTION = 0.9
# Share of the memory the automatic choice of checkpointed layers plans to fill: an out-of-memory error an
# hour into a run costs more than the speed. The estimate's device total is within 5% of every budget row
# of session 9 (0.96-1.04 of device_used_gib, Llama-2-7B and Llama-3-8B QLoRA at 8-24 GiB) and within
# 15% of all rows (tests/plan/test_estimate.py); 0.8 left Llama-3-8B's graphed plan (9.7 GiB) off on a
# 12 GiB card.
AUTO_CHECKPOINT_FRACTION = 0.85
# Checkpointed layers whose inputs are on the device at once when they are offloaded to host memory:
# the one being recomputed and the next one copied back.
OFFLOAD_INPUTS_ON_DEVICE = 2
# Effective training throughput. GPU: bf16 dense peak x GPU_MFU on the FLOPs below (recomputation
# included), plus a fixed host cost per step (what the GPU waits for: the LM head's loss, the optimizer,
# the Trainer's step; per layer too where layers are not replayed as CUDA graphs), which grows with the
# share of layers checkpointed (no graphs there, saved-tensor hooks, paged AdamW):
# GPU_STEP_SECONDS = (no layer checkpointed, every layer). Fitted on the H200 rows of session 5 with
# tuner's defaults (CUDA graphs, lean steps, cuDNN attention for one-sample rows, the dropout-gradient
# kernel): QLoRA at 4096 tokens 0.31 s (Llama-2-7B) and 0.34 s (Llama-3-8B), bf16 LoRA Llama-3-8B
# 0.31 s; with every layer checkpointed 0.56 to 0.65 s (Llama-2-7B QLoRA, session 4 and 5); within ~25%
# of each (tests/test_estimate.py). CPU: measured with SmolLM2-135M LoRA at ~171 tokens/s on 2 cores,
# i.e. ~1.4e11 FLOP/s.
GPU_PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40": 181e12,
    "4090": 165e12,
    "3090": 71e12,
    "A10": 125e12,
    "T4": 65e12,
    "V100": 125e12,
}
GPU_DEFAULT_PEAK = 100e12  # a GPU whose name matches none of the classes above


def gpu_class(name: str) -> str | None:
    """The GPU_PEAK_FLOPS class the time estimate prices a GPU of this name as; None: GPU_DEFAULT_PEAK."""
    return next((key for key in GPU_PEAK_FLOPS if key in name), None)


GPU_MFU = 0.54
GPU_STEP_SECONDS = {"quantized": (0.075, 0.21), "16-bit": (0.04, 0.3)}
# What replaying the checkpointed layers as CUDA graphs takes off that host cost with every layer
# checkpointed: Llama-2-7B QLoRA at 4096 tokens on H200, 0.543 -> 0.445 s per step with the inputs on the
# GPU, 0.518 -> 0.485 with them offloaded (bench/results/2026-12-04-h200-checkpoint-graphs.json).
CHECKPOINT_GRAPH_SAVED_SECONDS = 0.065
CPU_FLOPS = 1.4e11


@dataclass
class Estimate:
    weights_gib: float
    trainable_params: int
    trainable_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    total_gib: float  # what the device must hold
    allocated_gib: float  # of which PyTorch's allocator peak (torch.cuda.max_memory_allocated)
    available_gib: float
    fits: bool
    tokens_per_step: int
    seconds_per_step: float
    total_steps: int | None
    total_seconds: float | None
    checkpointed_layers: int = 0  # layers whose activations are recomputed in the backward pass
    offloaded: bool = False  # their inputs wait in host memory (tuner.fast.checkpoint_offload)
    graphs: bool = False  # the layers replayed as CUDA graphs (tuner.fast.layer_graphs)
    embedding_on_cpu: bool = (
        False  # the input embedding's table in host memory (tuner.fast.embedding_offload)
    )
    layers: int = 0
    plan: str = ""  # the run plan it priced (tuner.plan.decide.RunPlan.describe)
    advice: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """Expected training throughput: the GPU time model is calibrated on H200 bench rows
        (tests/plan/test_estimate.py keeps it within 25% of them) and scaled by the GPU's bf16 peak."""
        return self.tokens_per_step / self.seconds_per_step if self.seconds_per_step > 0 else 0.0


def _base_bits(method: str, quantization: str, device: str) -> float:
    if method == "qlora" or quantization == "4bit":
        return NF4_BITS
    if quantization == "8bit":
        return 8.5  # int8 + outlier handling and per-row scales
    return 32 if device == "cpu" else 16


def activation_bytes(shape: ModelShape, lora_dropout: float, seeded_dropout: bool = False) -> float:
    """Bytes per token per hidden unit that one layer without checkpointing keeps for its backward
    (``seeded_dropout``: its masks are drawn again from seeds, nothing kept for them)."""
    ratio = shape.intermediate / shape.hidden
    dropout = DROPOUT_BYTES * (6 + ratio) if lora_dropout > 0 and not seeded_dropout else 0.0
    return ACT_BYTES + ACT_MLP_BYTES * ratio + dropout


def rebuilt_bytes(shape: ModelShape, liger: bool) -> float:
    """Bytes per token per hidden unit of :func:`activation_bytes` that a kept layer rebuilds in
    backward instead of keeping (tuner.fast.rebuilt_activations), for a model of REBUILT_FAMILIES."""
    norms = REBUILT_NORM_BYTES if liger else 0.0
    return REBUILT_PRODUCT_BYTES * shape.intermediate / shape.hidden + norms


def price(get, plan: RunPlan, shape: ModelShape, hw: Hardware, dataset_tokens: int | None = None) -> Estimate:
    """Memory (GiB) and time of a run of the config read by ``get`` (key, default) under ``plan``."""
    liger, upcast = plan.liger, plan.kbit_upcast
    checkpointed, offload, graphs = plan.checkpointed_layers, plan.offload_checkpoints, plan.cuda_graphs
    method = get("method", "lora") or "lora"
    quant = get("quantization", "none") or "none"
    max_length = int(get("max_length", 2048) or 2048)
    row_tokens = int(get("tokens_per_step") or max_length)
    batch = int(get("batch_size", 1) or 1)
    accum = int(get("accumulative_counts", 1) or 1)
    checkpointed = max(0, min(shape.layers, checkpointed))
    tokens = batch * row_tokens

    bits = _base_bits(method, quant, hw.device)
    quantized = bits < 16
    residual_bytes = 2 if hw.device == "cuda" else 4  # 16-bit on a GPU, fp32 on a CPU
    embedding_on_cpu = False
    if method == "full":
        trainable = shape.params
        # The fp32 master copy is counted in BYTES_PER_TRAINABLE; keep 16-bit weights only on GPU.
        weights = shape.params * 2 if hw.device == "cuda" else 0
    else:
        trainable = lora_params(shape, int(get("lora_r", 64) or 64), get("lora_targets", "all-linear"))
        weights = shape.params * bits / 8
        if quantized:  # bitsandbytes quantizes the layers' linear weights, not the embedding/LM head
            kept = shape.embedding_params
            kept_bytes = 4 if upcast else 2
            weights = (shape.params - kept) * bits / 8 + kept * kept_bytes
            residual_bytes = 4 if upcast else 2
        # what moving the table saves is GPU memory, and a tied table cannot move
        embedding_on_cpu = plan.embedding_on_cpu and hw.device == "cuda" and not shape.tied
        if embedding_on_cpu:
            # the frozen input embedding's table waits in host memory (tuner.fast.embedding_offload)
            weights -= shape.vocab * shape.hidden * (kept_bytes if quantized else bits / 8)
    trainable_bytes = trainable * BYTES_PER_TRAINABLE
    if plan.processes > 1 and not plan.deepspeed and hw.device == "cuda":
        # torchrun DDP: its gradient buckets hold a second copy of every trainable gradient (fp32 for
        # LoRA; accelerate does not ask for gradient_as_bucket_view), 0.6 GiB for a 7B model at r64
        trainable_bytes += trainable * DDP_BUCKET_BYTES
    # Paged AdamW keeps its state in device memory PyTorch does not count (the plan picks it for a
    # quantized base that needs every layer checkpointed, or asked for by name).
    paged = hw.device == "cuda" and plan.optimizer.startswith("paged_")
    outside_allocator = trainable * PAGED_OPTIMIZER_BYTES if paged else 0
    dropout = float(get("lora_dropout", 0.1) or 0) if method != "full" else 0.0
    kept_per_layer = activation_bytes(shape, dropout, plan.seeded_dropout) * (residual_bytes / 2)
    if plan.rebuild_activations:  # the plan allows it only with a 16-bit residual stream
        kept_per_layer -= rebuilt_bytes(shape, plan.liger)
    act = tokens * shape.hidden * (shape.layers - checkpointed) * kept_per_layer
    checkpoint_graphs = plan.checkpoint_graphs and hw.device == "cuda"
    if checkpointed:
        recompute = RECOMPUTE_BYTES + RECOMPUTE_MLP_BYTES * shape.intermediate / shape.hidden
        # a recomputed layer keeps one input per group of linears reading it, not copies and masks:
        # seeded dropout anywhere, regeneration (eager only) otherwise
        if dropout > 0 and (plan.seeded_dropout or (plan.fused_lora and not checkpoint_graphs)):
            recompute -= REGEN_SAVED_BYTES + shape.intermediate / shape.hidden
        if checkpoint_graphs:
            recompute += CHECKPOINT_GRAPH_BYTES
        # offloaded: only the inputs on their way to and from host memory stay on the device
        kept_inputs = min(OFFLOAD_INPUTS_ON_DEVICE, checkpointed) if offload else checkpointed
        act += tokens * shape.hidden * (residual_bytes * kept_inputs + recompute)
    if graphs and hw.device == "cuda":
        act += tokens * shape.hidden * (shape.layers - checkpointed) * GRAPH_INPUT_BYTES
    if method != "full" and get("use_dora", False):
        act += dora_bytes(shape, tokens, shape.layers - checkpointed + (1 if checkpointed else 0))
    logits = 0 if liger else tokens * shape.vocab * LOGIT_BYTES
    if plan.wide_loss_chunks:
        # one wide chunk's logits, alive at the end of the forward, where the activations peak
        logits = wide_chunk_logits_bytes(tokens, shape.hidden, shape.vocab)
    overhead = (GPU_OVERHEAD_GIB if hw.device == "cuda" else CPU_OVERHEAD_GIB) * GIB
    allocated = weights + trainable_bytes - outside_allocator + act + logits
    total = allocated + outside_allocator + overhead

    # Attention: 6 x layers x d_attn x context FLOPs per token (QK^T and AV, forward and backward,
    # half the pairs under the causal mask); packed samples attend within themselves only.
    context = min(max_length, row_tokens)
    attention = 6 * shape.layers * shape.heads * shape.head_dim * context
    flops_per_token = (6 if method == "full" else 4) * shape.params + attention
    # the forward pass of the checkpointed layers again
    flops_per_token += (2 * shape.params + attention / 3) * checkpointed / shape.layers
    step_tokens = tokens * accum
    if hw.device == "cuda":
        known = gpu_class(hw.name)
        peak = GPU_DEFAULT_PEAK if known is None else GPU_PEAK_FLOPS[known]
        unchecked, every = GPU_STEP_SECONDS["quantized" if quantized else "16-bit"]
        if checkpoint_graphs:
            every -= CHECKPOINT_GRAPH_SAVED_SECONDS
        fixed = (unchecked + (every - unchecked) * checkpointed / shape.layers) * batch * accum
        seconds_per_step = fixed + step_tokens * flops_per_token / (peak * GPU_MFU)
    else:
        throughput = CPU_FLOPS * max(1, hw.cpu_count) / 2  # calibrated on 2 cores
        seconds_per_step = step_tokens * flops_per_token / throughput
    max_steps = int(get("max_steps", -1) or -1)
    if max_steps > 0:
        steps = max_steps
    elif dataset_tokens:
        steps = math.ceil(dataset_tokens / step_tokens * float(get("max_epochs", 3) or 3))
    else:
        steps = None
    available = hw.memory_gib
    return Estimate(
        weights_gib=weights / GIB,
        trainable_params=trainable,
        trainable_gib=trainable_bytes / GIB,
        activations_gib=act / GIB,
        logits_gib=logits / GIB,
        overhead_gib=overhead / GIB,
        total_gib=total / GIB,
        allocated_gib=allocated / GIB,
        available_gib=available,
        fits=total / GIB <= available * USABLE_FRACTION,
        tokens_per_step=step_tokens,
        seconds_per_step=seconds_per_step,
        total_steps=steps,
        total_seconds=steps * seconds_per_step if steps else None,
        checkpointed_layers=checkpointed,
        offloaded=offload and checkpointed > 0,
        graphs=graphs and hw.device == "cuda",
        embedding_on_cpu=method != "full" and bool(embedding_on_cpu),
        layers=shape.layers,
        plan=plan.describe(),
    )


def dora_bytes(shape: ModelShape, tokens: int, layers_alive: int) -> float:
    """What DoRA adds (see DORA_OUTPUT_BYTES): the base outputs of ``layers_alive`` layers' linears
    (those keeping their activations, plus the one being recomputed) and one linear's transient
    identity and full-weight copies (the largest: the MLP's)."""
    attention_out = (shape.heads + 2 * shape.kv_heads) * shape.head_dim + shape.hidden
    outputs = attention_out + 2 * shape.intermediate + shape.hidden
    transient = shape.intermediate**2 + DORA_WEIGHT_COPIES * shape.intermediate * shape.hidden
    return DORA_OUTPUT_BYTES * (tokens * outputs * layers_alive + transient)


# The transient logits of one wide chunk (16-bit): half a GiB, ~1% of what a roomy 8B run holds.
WIDE_LOGITS_BYTES = 2**29


def chunk_budget(tokens: int, hidden: int, element_bytes: int) -> int:
    """Liger's ``chunk_mem_const`` that lets one chunk's logits take ``WIDE_LOGITS_BYTES``.

    >>> chunk_budget(4096, 4096, 2)  # Llama-3-8B at 4,096 tokens: 16 -> 2 chunks of 2,048 tokens
    16
    >>> chunk_budget(65536, 4096, 2)  # rows so long that Liger's own budget is already the cap
    1
    """
    return max(1, WIDE_LOGITS_BYTES // max(1, tokens * hidden * element_bytes))


def wide_chunk_logits_bytes(tokens: int, hidden: int, vocab: int, element_bytes: int = 2) -> int:
    """The logits of one wide chunk, as Liger sizes its chunks from ``chunk_budget``'s value (its
    chunk is the next power of two above tokens / ceil(vocab / (budget x hidden)), at most all tokens).

    >>> wide_chunk_logits_bytes(4096, 4096, 128256) / 2**20  # 2 chunks of 2,048 tokens
    501.0
    """
    budget = chunk_budget(tokens, hidden, element_bytes)
    chunks = -(-vocab // (budget * hidden))
    chunk = min(1 << max(0, (-(-tokens // chunks) - 1).bit_length()), tokens)
    return chunk * vocab * element_bytes
