"""Every speed and memory decision of a run, made once: the RunPlan.

The engine (tuner.train) executes the plan, the estimate (tuner.plan.estimate) prices it, the run log
and every bench row print it. The rules live here and nowhere else: which mechanism of tuner.fast
applies where, how many layers recompute their activations, where the embedding and the optimizer
state live. Inputs: the config (a TrainConfig or a dict of its keys), the speed settings
(tuner.config.speed), the hardware, the model's shape and the memory budget.

A plan is made before the model exists (all the estimate needs); training makes it once the base
model is loaded, passing what only the loaded model can tell (whether Liger's kernels took).
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, replace

from tuner.config.deepspeed import partitions_weights
from tuner.config.speed import SpeedSettings
from tuner.core.system import Hardware, world_size
from tuner.models.shape import ModelShape
from tuner.plan.memory import AUTO_CHECKPOINT_FRACTION, CHECKPOINT_GRAPH_MAX_TOKENS, REBUILT_FAMILIES, price


@dataclass(frozen=True)
class RunPlan:
    """What one run does with the machine. Fields are decisions; properties follow from them and
    the number of checkpointed layers, so a plan with another count stays consistent
    (``with_checkpointing``)."""

    device: str  # "cuda" or "cpu"
    processes: int  # torchrun's world size
    deepspeed: bool
    lora: bool  # LoRA or QLoRA (not a full fine-tune)
    quantized: bool  # a 4/8-bit base
    layers: int
    # attention: tuner's varlen kernel for packed rows (CUDA) where the model takes it, else SDPA
    varlen_attention: bool
    liger: bool  # Liger's kernels (CUDA, an architecture Liger patches, not under ZeRO-3)
    liger_wide_chunks: (
        bool  # the setting asks for wide loss chunks (they apply where nothing is checkpointed)
    )
    fused_lora: bool  # LoRA linears through tuner.fast.lora_fused (not under DeepSpeed)
    kbit_upcast: bool  # peft's fp32 cast of a k-bit base's unquantized weights
    graphs_allowed: bool  # CUDA graphs may replay the layers
    embedding_policy: str  # the config's embedding_on_cpu: auto, on or off
    lean: bool  # the setting's lean steps, one process
    optimizer_asked: str  # the config's optimizer ("auto" or a name)
    checkpointed_layers: int  # layers that recompute their activations in the backward pass
    offload_checkpoints: bool  # their inputs wait in host memory (tuner.fast.checkpoint_offload)
    budget_gib: float | None = None  # the memory the checkpoint count was planned for
    # the checkpointed layers may replay as CUDA graphs (the planner says no where their memory does not fit)
    graph_checkpointed: bool = True
    row_tokens: int = 0  # tokens of a training row (tokens_per_step, else max_length); 0 unknown
    # the optimizer's state must be able to page to host memory: even with every layer checkpointed the
    # plan does not fit its budget with the state on the device (optimizer_state_overflows)
    page_optimizer_state: bool = False
    # tuner.fast.seeded_dropout may draw the LoRA dropout (fused LoRA on CUDA, the setting, the kernels load)
    dropout_kernels: bool = False
    lora_dropout: bool = False  # the config's LoRA dropout is on
    dropout_product: bool = False  # the setting: seeded dropout inside the first LoRA product
    seeded_eager: bool = False  # the setting asks for seeded dropout in eager plans too (to measure them)
    # tuner.fast.rebuilt_activations may rebuild cheap activations of the layers that keep theirs (the
    # setting, CUDA, fused LoRA, a 16-bit residual stream, a model family whose layers it knows)
    rebuild_allowed: bool = False
    # the planner found the memory tight enough to rebuild them (checkpoint_plan): not where every layer
    # keeps its activations without it
    rebuild_kept: bool = False

    @property
    def memory_tight(self) -> bool:
        """Every layer had to be checkpointed to fit."""
        return self.checkpointed_layers >= self.layers

    @property
    def cuda_graphs(self) -> bool:
        """Some layers replay as CUDA graphs: those that keep their activations, and the checkpointed
        ones where ``checkpoint_graphs``."""
        return self.graphs_allowed and (self.checkpointed_layers < self.layers or self.checkpoint_graphs)

    @property
    def seeded_dropout(self) -> bool:
        """LoRA dropout drawn from seeds, no masks or dropped-out copies kept: where every layer replays
        as a CUDA graph. There the freed memory buys fewer checkpointed layers and the kernels' launches
        cost the host nothing; launched eagerly they cost it more than the masks save: on an emulated
        8 GiB card (every layer checkpointed, eager) Llama-2-7B QLoRA ran 7,301 tok/s seeded against
        8,907 with the masks, on 24 GiB (graphed) 12,608 against 11,478
        (bench/results/2026-12-05-h200-cards-seeded.json). Eager plans keep the masks, drawn again for
        checkpointed layers (tuner.fast.lora_fused's regeneration)."""
        every_layer_graphed = self.checkpointed_layers == 0 or self.checkpoint_graphs
        return self.dropout_kernels and (self.seeded_eager or (self.cuda_graphs and every_layer_graphed))

    @property
    def seeded_product(self) -> bool:
        """Where the dropout is seeded, the dropped-out input made inside the first LoRA product
        (tuner.fast.dropout_products) when the setting asks for it."""
        return self.seeded_dropout and self.dropout_product

    @property
    def rebuild_activations(self) -> bool:
        """The layers that keep their activations rebuild their MLP's gated product and (with Liger)
        their norms' outputs in backward instead of keeping them (tuner.fast.rebuilt_activations), and
        the planner spends what that frees on fewer checkpointed layers. Only where the memory is tight
        (``rebuild_kept``: the rebuilding kernels cost time that a roomy run need not pay) and where the
        LoRA keeps its input rather than a dropped-out copy: dropout off, or seeded."""
        keeps_inputs = not self.lora_dropout or self.seeded_dropout
        return (
            self.rebuild_allowed
            and self.rebuild_kept
            and keeps_inputs
            and self.checkpointed_layers < self.layers
        )

    @property
    def checkpoint_graphs(self) -> bool:
        """The checkpointed layers replay as CUDA graphs too (tuner.fast.checkpoint_graphs): rows up
        to CHECKPOINT_GRAPH_MAX_TOKENS tokens, where the host's launches are what the GPU waits for,
        unless the planner found that their memory does not fit."""
        return (
            self.graphs_allowed
            and self.graph_checkpointed
            and self.checkpointed_layers > 0
            and 0 < self.row_tokens <= CHECKPOINT_GRAPH_MAX_TOKENS
        )

    @property
    def wide_loss_chunks(self) -> bool:
        # half a GiB of logits is small only against what a run that checkpoints nothing holds
        # (measured for LoRA and QLoRA; a full fine-tune keeps Liger's own chunks)
        return (
            self.device == "cuda"
            and self.liger
            and self.liger_wide_chunks
            and self.lora
            and self.checkpointed_layers == 0
        )

    @property
    def embedding_on_cpu(self) -> bool:
        """Whether the frozen input embedding's table is asked into host memory (the mechanism still
        refuses where the embedding cannot move: tied, trained, not on a GPU)."""
        wanted = self.embedding_policy == "on" or (self.embedding_policy == "auto" and self.memory_tight)
        return wanted and self.lora and not self.deepspeed and self.processes <= 1

    @property
    def deferred_logging(self) -> bool:
        """Logged values read back one logging point late (tuner.fast.deferred_log)."""
        return self.lean and not self.deepspeed

    @property
    def async_batch_copy(self) -> bool:
        """Batches copied to the GPU without blocking (measured on one process without DeepSpeed)."""
        return self.lean and not self.deepspeed and self.device == "cuda"

    @property
    def optimizer(self) -> str:
        """AdamW as ``optimizer: auto`` picks it. On a GPU: torch's fused AdamW (one kernel launch for
        all LoRA weights; bitsandbytes' paged AdamW launches one per weight, which the host cannot hide
        behind short steps), except for a 4/8-bit base whose state does not fit beside the rest even
        with every layer checkpointed (``page_optimizer_state``): there paged AdamW's state moves to
        host memory instead of the run failing. The two are the same 32-bit AdamW. Under DeepSpeed as
        before this choice existed (paged AdamW for 4/8-bit bases, else torch's unfused AdamW): its
        offload configs keep the optimizer state in host memory, where the fused kernel cannot run."""
        if self.optimizer_asked != "auto":
            return self.optimizer_asked
        if self.device != "cuda":
            return "adamw_torch"
        if self.deepspeed:
            return "paged_adamw_32bit" if self.quantized else "adamw_torch"
        return "paged_adamw_32bit" if self.quantized and self.page_optimizer_state else "adamw_torch_fused"

    def with_checkpointing(
        self, layers: int, offload: bool, graphed: bool = True, rebuild: bool | None = None
    ) -> RunPlan:
        """This plan with another checkpoint plan (``rebuild`` None: ``rebuild_kept`` as it is)."""
        return replace(
            self,
            checkpointed_layers=max(0, min(self.layers, layers)),
            offload_checkpoints=offload,
            graph_checkpointed=graphed,
            rebuild_kept=self.rebuild_kept if rebuild is None else rebuild,
        )

    def as_dict(self) -> dict:
        """The decisions and what follows from them, for status.json and bench rows."""
        derived = (
            "memory_tight",
            "cuda_graphs",
            "checkpoint_graphs",
            "seeded_dropout",
            "seeded_product",
            "rebuild_activations",
            "wide_loss_chunks",
            "embedding_on_cpu",
            "deferred_logging",
            "async_batch_copy",
            "optimizer",
        )
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}

    def describe(self) -> str:
        """The run log's line about the plan."""
        parts = [f"{self.device}" + (f" x{self.processes}" if self.processes > 1 else "")]
        parts.append("varlen attention" if self.varlen_attention else "sdpa attention")
        if self.liger:
            parts.append("liger" + (" (wide loss chunks)" if self.wide_loss_chunks else ""))
        if self.fused_lora:
            seeded = " (seeded dropout in the product)" if self.seeded_product else " (seeded dropout)"
            parts.append("fused LoRA" + (seeded if self.seeded_dropout else ""))
        if self.layers:
            where = " (inputs in host memory)" if self.offload_checkpoints else ""
            parts.append(f"{self.checkpointed_layers} of {self.layers} layers checkpointed{where}")
        if self.rebuild_activations:
            parts.append("cheap activations rebuilt")
        if self.cuda_graphs:
            parts.append("CUDA graphs" + (" (checkpointed layers too)" if self.checkpoint_graphs else ""))
        if self.embedding_on_cpu and self.device == "cuda":  # on a CPU the table is in host memory anyway
            parts.append("embedding in host memory")
        parts.append(self.optimizer)
        if self.lean:
            parts.append("lean steps")
        if self.budget_gib is not None and self.device == "cuda":
            parts.append(f"planned for {self.budget_gib:.1f} GiB")
        return ", ".join(parts)


def _getter(cfg):
    return cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)


def liger_applies(cfg, settings: SpeedSettings, hw: Hardware, *, installed: bool | None = None) -> bool:
    """Whether a run of ``cfg`` asks for Liger's kernels: a GPU, the setting, Liger importable
    (``installed`` overrides that, for a GPU this machine does not have) and weights that are not
    partitioned by ZeRO-3 (Liger's fused loss reads the LM head's weight directly)."""
    get = _getter(cfg)
    if installed is None:
        installed = importlib.util.find_spec("liger_kernel") is not None
    return (
        hw.device == "cuda"
        and settings.liger != "off"
        and installed
        and not partitions_weights(get("deepspeed", None))
    )


def plan_run(
    cfg,
    settings: SpeedSettings,
    hw: Hardware,
    shape: ModelShape,
    *,
    budget_gib: float | None = None,
    liger: bool | None = None,
    processes: int | None = None,
    liger_installed: bool | None = None,
    dropout_kernels: bool | None = None,
) -> RunPlan:
    """The plan of a run of ``cfg`` on ``hw`` for a model of ``shape``.

    ``budget_gib``: the memory the run may use (default: the device's);
    ``liger``: whether Liger's kernels took (training passes what happened; default: whether they
    would, see ``liger_applies``); ``processes``: torchrun's world size (default: this process's);
    ``dropout_kernels``: whether tuner.fast.seeded_dropout's kernels load (training passes it; default:
    they do on a CUDA machine, where torch ships Triton on Linux)."""
    get = _getter(cfg)
    processes = world_size() if processes is None else processes
    method = get("method", "lora") or "lora"
    quantization = get("quantization", "none") or "none"
    deepspeed = bool(get("deepspeed", None))
    lora = method != "full"
    # DoRA recomputes each layer's full weight in peft's own forward: the fused LoRA path does not
    # apply to it, and CUDA graphs of its layers are not measured
    dora = bool(get("use_dora", False))
    # The anchor loss (tuner.train.anchor) runs the layers a second time with the adapter off: CUDA
    # graphs would replay them as captured, adapter on, and the embedding in host memory reads a
    # batch's ids once. The planner leaves both out rather than have training refuse the run.
    anchor_kl = (get("task", "sft") or "sft") == "sft" and float(get("anchor_kl_weight", 0) or 0) > 0
    embedding_policy = get("embedding_on_cpu", "auto") or "auto"
    if anchor_kl and embedding_policy == "auto":
        embedding_policy = "off"
    if liger is None:
        liger = liger_applies(cfg, settings, hw, installed=liger_installed)
    fused_lora = lora and not dora and not deepspeed and settings.fused_lora
    if budget_gib is None:
        budget_gib = hw.memory_gib  # already held to TUNER_GPU_MEMORY_GIB (tuner.core.system.hardware)
    plan = RunPlan(
        device=hw.device,
        processes=processes,
        deepspeed=deepspeed,
        lora=lora,
        quantized=method == "qlora" or quantization in ("4bit", "8bit"),
        layers=shape.layers,
        varlen_attention=settings.attention == "tuner" and hw.device == "cuda",
        liger=bool(liger),
        liger_wide_chunks=settings.liger == "wide",
        fused_lora=fused_lora,
        dropout_kernels=fused_lora
        and hw.device == "cuda"
        and settings.seeded_dropout != "off"
        and dropout_kernels is not False,
        seeded_eager=settings.seeded_dropout == "always",
        lora_dropout=lora and float(get("lora_dropout", 0.1) or 0) > 0,
        dropout_product=settings.dropout_product,
        rebuild_allowed=fused_lora
        and hw.device == "cuda"
        and settings.rebuild_activations
        and not settings.kbit_upcast
        and shape.family in REBUILT_FAMILIES,
        kbit_upcast=settings.kbit_upcast,
        graphs_allowed=settings.cuda_graphs
        and hw.device == "cuda"
        and lora
        and not dora
        and not deepspeed
        and processes <= 1
        and not anchor_kl,
        embedding_policy=embedding_policy,
        lean=settings.lean_steps and processes <= 1,
        optimizer_asked=get("optimizer", "auto") or "auto",
        checkpointed_layers=0,
        offload_checkpoints=False,
        budget_gib=budget_gib,
        row_tokens=int(get("tokens_per_step", None) or get("max_length", 0) or 0),
    )
    plan = plan.with_checkpointing(*checkpoint_plan(cfg, plan, shape, hw, budget_gib))
    return replace(plan, page_optimizer_state=optimizer_state_overflows(cfg, plan, shape, hw, budget_gib))


def optimizer_state_overflows(cfg, plan: RunPlan, shape: ModelShape, hw: Hardware, budget_gib: float) -> bool:
    """Whether a 4/8-bit run that checkpoints every layer still prices above ``budget_gib`` with its
    AdamW state on the device. Only there does paged AdamW pay: its state sits in unified memory that a
    full card pages to host memory instead of failing, while its one launch per weight costs host time
    on every step. Measured on emulated cards (bench/results/2026-12-04-h200-cards-*.json): Llama-3-8B
    QLoRA at 4096 tokens on 12 GiB, 7,768 -> 8,844 tok/s (10.53 -> 10.25 GiB of the card); Llama-2-7B
    on 8 GiB (priced 7.85 GiB, 7.60 used), 6,016-6,276 paged against 6,236 and 8,750 fused in two calls.
    Llama-3-8B on 8 GiB (priced 9.12) keeps paged AdamW. The device total is the same with either: the
    state only moves between PyTorch's allocator and unified memory."""
    if hw.device != "cuda" or not plan.quantized or not plan.memory_tight or not budget_gib:
        return False
    return price(_getter(cfg), plan, shape, hw).total_gib > budget_gib


def checkpoint_plan(
    cfg, plan: RunPlan, shape: ModelShape, hw: Hardware, budget_gib: float
) -> tuple[int, bool, bool, bool]:
    """(layers to checkpoint, whether their inputs wait in host memory, whether the checkpointed
    layers may replay as CUDA graphs, whether the kept layers rebuild their cheap activations).

    None when ``gradient_checkpointing`` is off. With it on, the config's ``checkpoint_layers``:
    ``all`` checkpoints every layer, ``offload`` every layer with the inputs in host memory; ``auto``
    (one CUDA process without DeepSpeed) the fewest layers that keep the estimate within
    AUTO_CHECKPOINT_FRACTION of ``budget_gib`` (every layer left out saves its recomputation, about a
    third of its compute), and when even every layer does not fit, every layer with its input
    offloaded (in one process; several processes checkpoint every layer instead). On a CPU and under
    DeepSpeed (whose ZeRO stages split what a GPU holds), every layer. The checkpointed layers' CUDA graphs cost memory (tuner.plan.memory): where the plan with
    them does not fit, it is made again without them, and where even that does not fit they stay off.
    Where every layer keeps its activations without rebuilding any, nothing is rebuilt; past that the
    plan rebuilds where ``plan.rebuild_allowed``."""
    get = _getter(cfg)
    if not get("gradient_checkpointing", True):
        return 0, False, True, False
    mode = get("checkpoint_layers", "auto") or "auto"
    limit = budget_gib * AUTO_CHECKPOINT_FRACTION

    def fits(count: int, offload: bool, graphed: bool, rebuild: bool = False) -> bool:
        planned = plan.with_checkpointing(count, offload, graphed, rebuild)
        return price(get, planned, shape, hw).total_gib <= limit

    if mode != "auto":
        offload = mode == "offload" and hw.device == "cuda"
        return shape.layers, offload, hw.device == "cuda" and fits(shape.layers, offload, True), False
    if hw.device != "cuda" or plan.deepspeed:
        return shape.layers, False, True, False
    # Several processes without DeepSpeed (torchrun DDP) hold the whole model on every GPU, so each
    # prices like one process. Before, they checkpointed every layer: on 2 x H200, Llama-2-7B QLoRA at
    # 4096 tokens trained at 11,740 tok/s on both GPUs together against 14,679 on one GPU with the auto
    # plan (bench/results/multi-gpu/2026-12-04-h200x2-two-gpus-7b.json). Their inputs stay on the GPU: offloaded
    # checkpoints were measured in one process only.
    offload_allowed = plan.processes <= 1
    rebuild = plan.rebuild_allowed
    for graphed in (True, False):
        if fits(0, False, graphed):
            return 0, False, graphed, False
        for count in range(shape.layers + 1):
            if fits(count, False, graphed, rebuild):
                return count, False, graphed, rebuild
        if offload_allowed and fits(shape.layers, True, graphed):
            return shape.layers, True, graphed, False
    return shape.layers, offload_allowed, False, False
