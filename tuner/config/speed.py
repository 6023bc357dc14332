"""How a run uses the machine, never what it learns: the speed settings, read once when a run starts.

Each setting is one user-meaningful escape hatch with its environment variable, its default and the
measurement behind the default. A default changes only once bench/ has measured the change to pay on a
GPU; a mechanism measured slower is deleted, not switched off (docs/performance.md keeps its numbers).
tuner.plan.decide turns these settings, the config and the hardware into the run's RunPlan; the
mechanisms in tuner.fast never read the environment.

The two memory policies a user picks per run (how many layers to checkpoint, the input embedding in
host memory) are TrainConfig keys, not settings: ``checkpoint_layers`` and ``embedding_on_cpu``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tuner.core.errors import TunerError
from tuner.core.system import GPU_MEMORY_CAP, parse_gpu_memory_cap

ON_OFF = ("on", "off")


def setting(default: Any, env: str, does: str, measured: str, choices: tuple[str, ...] = ON_OFF):
    """A speed setting: its default, the variable that overrides it, what it does, and the
    measurement behind the default (a sentence and the results file)."""
    return field(
        default=default, metadata={"env": env, "does": does, "measured": measured, "choices": choices}
    )


@dataclass(frozen=True)
class SpeedSettings:
    """The speed settings of one run. Read once per run (``from_env``); saved in status.json and in
    every bench row."""

    attention: str = setting(
        "tuner",
        "TUNER_ATTENTION",
        "tuner: packed rows through PyTorch's varlen flash kernel (no flash-attn needed), one-sample rows "
        "through cuDNN on Hopper, transformers' packed-sample scan skipped; sdpa: transformers' SDPA "
        "with a block mask",
        "512-token samples packed into 16,384-token rows, Llama-2-7B QLoRA, H100: 3,304 -> 5,321 tok/s "
        "(+61%); cuDNN for a 4096-token one-sample row 1.98 -> 1.09 ms per layer on H200 "
        "(bench/results/2026-11-28-h100-80gb-hbm3-packing.json, 2026-12-01-h200-cudnn.json)",
        choices=("tuner", "sdpa"),
    )
    fused_lora: bool = setting(
        True,
        "TUNER_FUSED_LORA",
        "each LoRA linear trains through one fused autograd function (not under DeepSpeed, not DoRA), its "
        "dropout-masked input gradient through one Triton kernel",
        "Llama-3-8B bf16 LoRA, 4096 tokens: 9,532 -> 10,548 tok/s; Llama-2-7B QLoRA step kernels "
        "0.351 -> 0.304 s (bench/results/2026-12-01-h200-fused.json, 2026-12-01-h200-dropout-kernel.json)",
    )
    seeded_dropout: str = setting(
        "on",
        "TUNER_SEEDED_DROPOUT",
        "fused LoRA on CUDA with Triton, where every layer replays as a CUDA graph: each dropout mask is "
        "drawn from a seed by tuner's kernels, in forward and again in backward, so no mask or "
        "dropped-out copy is kept; the planner spends the memory that frees on fewer checkpointed layers "
        "(eager plans keep the masks); always: in eager plans too (to measure them), off: masks everywhere",
        "Llama-2-7B QLoRA 4096 on an emulated 24 GiB card: 11,478 -> 12,608 tok/s, 19 -> 11 layers "
        "checkpointed; eager on 8 GiB it lost (8,907 -> 7,301), so eager plans do not use it "
        "(bench/results/2026-12-05-h200-cards-seeded.json)",
        choices=("on", "always", "off"),
    )
    dropout_product: bool = setting(
        False,
        "TUNER_DROPOUT_PRODUCT",
        "where the LoRA dropout is seeded: the dropped-out input is made tile by tile inside the first LoRA "
        "product (one Triton kernel), never written to memory, instead of a dropout kernel then a matrix "
        "product; in backward the input gradient's dropped-out LoRA term and the A gradient are made the same "
        "way",
        "off until measured on a GPU: checked on the CPU through Triton's interpreter (the same mask, the "
        "fused LoRA linear's outputs and gradients by hand); the dropout kernel it replaces took 31-48 us "
        "a call at 4096 tokens (bench/probes/seeded_dropout_speed.py). `python -m bench.train_speed --suite "
        "cards-product` measures it (bench/results/<date>-h200-cards-product.json)",
    )
    rebuild_activations: bool = setting(
        False,
        "TUNER_REBUILD_ACTIVATIONS",
        "fused LoRA on CUDA, where memory is tight and the LoRA keeps its input (dropout off, or seeded): "
        "the layers that keep their activations rebuild their MLP's gated product and Liger's RMSNorm "
        "outputs in backward instead of keeping them, and the planner spends the memory on fewer "
        "checkpointed layers",
        "off until measured on a GPU: on the CPU the rebuilt tensors equal the forward's bit for bit and "
        "are freed after forward; Llama-2-7B keeps 9.4 of its 33 bytes per token per hidden unit less per "
        "kept layer, 11 -> 5 layers checkpointed on 24 GiB as priced. `python -m bench.train_speed --suite "
        "cards-rebuilt` measures it (bench/results/<date>-h200-cards-rebuilt.json)",
    )
    cuda_graphs: bool = setting(
        True,
        "TUNER_CUDA_GRAPHS",
        "one CUDA process, no DeepSpeed, LoRA: the decoder layers replay as CUDA graphs and packed batches "
        "are padded to full rows; checkpointed layers too (rows up to 8,192 tokens) where the plan finds "
        "the memory for their graphs",
        "layers that keep their activations: +1% to +21% in all five same-process comparisons, e.g. "
        "Llama-2-7B QLoRA 4096 8,939 -> 10,851 tok/s, ~1.2 GiB more peak (bench/results/2026-12-01-h200-"
        "graphs2.json); every layer checkpointed, Llama-2-7B QLoRA 4096: 7,548 -> 9,200 tok/s at 12 GiB, "
        "+0.55 GiB peak (2026-12-04-h200-checkpoint-graphs.json)",
    )
    liger: str = setting(
        "wide",
        "TUNER_LIGER",
        "Liger's fused kernels where Liger supports the architecture (CUDA; not under ZeRO-3); wide: its "
        "fused cross-entropy in half-GiB chunks where no layer is checkpointed; on: Liger's own chunks",
        "Liger: 7,624 -> 9,478 tok/s on packed 512-token samples (H100); wide chunks: +2.6% bf16 LoRA and "
        "QLoRA on Llama-3-8B at 4096, peak +0.06 GiB (bench/results/2026-12-01-h200-loss-chunks.json, "
        "2026-12-01-h200-wide-repeat.json)",
        choices=("wide", "on", "off"),
    )
    lean_steps: bool = setting(
        True,
        "TUNER_LEAN_STEPS",
        "one process: no device sync at the step boundary (tokens counted on the host, logged values "
        "read back one logging point late, batches copied without blocking)",
        "+4.3% bf16 LoRA, +3.5-4% QLoRA at 4096 tokens, measured as one change "
        "(bench/results/2026-12-01-h200-step-boundary.json)",
    )
    kbit_upcast: bool = setting(
        False,
        "TUNER_KBIT_UPCAST",
        "on: peft's k-bit preparation casts the unquantized weights of a 4/8-bit base to fp32; off: they "
        "stay bf16/fp16, as torchtune and Unsloth train",
        "off: +43% on packed 512-token samples and 5 GiB less (Llama-2-7B QLoRA, H100; "
        "bench/results/2026-11-28-h100-80gb-hbm3-switches.json)",
    )
    gpu_memory_gib: float | None = setting(
        None,
        GPU_MEMORY_CAP,
        "hold a run to this many GiB of the GPU (a shared GPU, or to plan for a smaller card)",
        "131,072-token Llama-3-8B QLoRA row on an H200 held to 80 GiB: 45.2 GiB "
        "(bench/results/2026-12-01-h200-long-context-cap80.json)",
        choices=(),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SpeedSettings:
        """The settings a run gets in this environment; a value that is not allowed raises
        TunerError naming the variable and its choices."""
        chosen: dict[str, Any] = {}
        for f in fields(cls):
            env = f.metadata["env"]
            text = environ.get(env, "").strip().lower()
            if not text:
                continue
            if f.name == "gpu_memory_gib":
                chosen[f.name] = parse_gpu_memory_cap(text)
                continue
            choices = f.metadata["choices"]
            if text not in choices:
                raise TunerError(f"{env}={text!r}: use one of {', '.join(choices)}")
            chosen[f.name] = text == "on" if choices == ON_OFF else text
        return cls(**chosen)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults (what a run log line needs to say)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def reference() -> list[dict[str, Any]]:
    """One row per setting for docs/performance.md: name, variable, default, choices, what it does and
    what was measured."""
    rows = []
    for f in fields(SpeedSettings):
        default = f.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        rows.append(
            {
                "setting": f.name,
                "env": f.metadata["env"],
                "default": "none" if default is None else default,
                "choices": f.metadata["choices"],
                "does": f.metadata["does"],
                "measured": f.metadata["measured"],
            }
        )
    return rows
