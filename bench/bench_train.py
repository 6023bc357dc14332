"""Training speed and memory: tuner's own training path against a plain transformers + peft + bitsandbytes loop.

Both tools train the same random-init model of a real shape (Llama-2-7B, Llama-3-8B, Qwen2.5-7B, or
a tiny one for CPU smoke tests) on the same random token rows: batch 1, ``seq`` tokens per optimizer
step, labels = inputs, LoRA r64 / alpha16 / dropout 0.1 on all linear layers, gradient checkpointing.

* ``tuner``: the model is built by ``tuner.train.build_model`` from a ``TrainConfig`` (folder load,
  NF4 4-bit for qlora, peft's k-bit preparation, LoRA), trained by tuner's Trainer class with
  ``tuner.train.training_arguments`` (its optimizer and precision choices), tuner's ``PackedCollator``
  and its event callback, as ``tuner.train.train`` assembles them.
* ``plain``: the issue's baseline, a hand-written loop: ``from_pretrained`` with a BitsAndBytesConfig
  (NF4, double quant), ``prepare_model_for_kbit_training``, ``get_peft_model``, bitsandbytes'
  PagedAdamW32bit (for lora too), torch autocast (fp16 + GradScaler for Llama-2 QLoRA as XTuner
  0.1.9's recipe did, bf16 otherwise), reentrant gradient checkpointing (transformers' old default),
  grad clipping at 1.0, ``loss.item()`` each step. No packing, no fused kernels.

Usage (see bench/README.md)::

    python bench/bench_train.py --shape llama2-7b --method qlora --seq 512,4096 --tool tuner,plain \
        --steps 10 --warmup 3 --out bench/results/2026-11-20-h100.json
    python bench/bench_train.py --all --out ...          # every shape x method x 512/2048/4096 x tool
    python bench/bench_train.py --tiny --in-process ...  # CPU smoke test (tiny model, no quantization)
    python bench/bench_train.py --report bench/results/2026-11-20-h100.json   # markdown table

One configuration (shape, method, seq, tool) runs per process: with several, this process is a driver
that runs each as a child process in turn (memory isolation: a fresh CUDA allocator, no leftovers), and
each child appends its row to the ``--out`` JSON list (atomically, under a lock).

Measurement: ``--warmup`` steps first (allocator growth, paged optimizer state, cuBLAS handles), then
``--steps`` timed steps; the time of a step is the host clock between consecutive step ends, each
after ``torch.cuda.synchronize()``, so it holds everything a step costs (data loading, logging,
forward, backward, optimizer). ``tok_s`` = tokens per step / mean step time. ``--clock window``
synchronizes only at the last warm-up step's end and the last timed step's end: a sync after every
step idles the GPU while the host starts the next one, which a training run does not do (tuner's own
syncs, logging among them, still happen), so the mean over the window is the run's throughput; the
per-step spread is then host time only. Memory: peak allocated
and reserved bytes of PyTorch's allocator after ``reset_peak_memory_stats`` once the model is loaded
(bitsandbytes' paged optimizer state lives in CUDA managed memory outside that allocator; the
device-wide ``device_used_gib``, sampled from ``cudaMemGetInfo`` at the warm-up's end and the window's,
includes it and the CUDA context; outside the timed steps, as some drivers take milliseconds for that
call, ``mem_get_info_ms`` records how long it took; rows before 2026-12-01 session 6 sampled it after
every step). MFU: see :func:`flops_per_token`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tuner and tests.tiny, when run as `python bench/bench_train.py`

GIB = 2**30
REAL_SHAPES = ("llama2-7b", "llama3-8b", "qwen2.5-7b")
SHAPES = (*REAL_SHAPES, "tiny")
METHODS = ("qlora", "lora")
TOOLS = ("tuner", "plain")
DEFAULT_SEQS = (512, 2048, 4096)
DEFAULT_MODELS_DIR = Path(tempfile.gettempdir()) / "bench-models"
PEAK_CACHE = "bf16_peak.json"
COMPLETE_MARK = "bench-complete"

# The shapes of the real models (their config.json values), with random weights.
SHAPE_CONFIGS = {
    "llama2-7b": dict(
        family="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
    ),
    "llama3-8b": dict(
        family="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    ),
    "qwen2.5-7b": dict(
        family="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
    # CPU smoke tests: the vocabulary is the tiny test tokenizer's (filled in at build time).
    "tiny": dict(
        family="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=None,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
    ),
}

LORA = dict(r=64, alpha=16, dropout=0.1, targets="all-linear")
LR = 2e-4
PLAIN_REENTRANT = True  # the plain loop's gradient checkpointing (tuner uses non-reentrant)
MAX_NORM = 1.0


@dataclass(frozen=True)
class Spec:
    """One benchmark configuration: what a child process measures."""

    shape: str
    method: str
    seq: int
    tool: str
    sample_len: int | None = None  # tuner only: pack samples of this length into the seq-token row
    variant: str | None = None  # tuner only: the name of a --variant (overrides of tuner's settings)

    @property
    def label(self) -> str:
        packed = f"-pack{self.sample_len}" if self.sample_len else ""
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.shape}-{self.method}-{self.seq}{packed}-{self.tool}{variant}"


VARIANT_KINDS = ("env", "set", "arg")


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME[:KIND.KEY=VALUE,...]`` -> (name, {kind: {key: value}}): a named set of overrides for a
    tuner row. ``env``: an environment variable while the row runs (tuner's TUNER_* speed switches);
    ``set``: a TrainConfig key; ``arg``: a TrainingArguments attribute, set after tuner built them.
    Values are JSON where they parse (numbers, true/false), else strings.

    >>> parse_variant("fp16:set.precision=fp16,env.TUNER_LIGER=on")
    ('fp16', {'env': {'TUNER_LIGER': 'on'}, 'set': {'precision': 'fp16'}, 'arg': {}})
    >>> parse_variant("base")
    ('base', {'env': {}, 'set': {}, 'arg': {}})
    """
    name, _, rest = text.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise argparse.ArgumentTypeError(f"variant name {name!r}: letters, digits and _.+- only")
    overrides: dict = {kind: {} for kind in VARIANT_KINDS}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        target, eq, raw = item.partition("=")
        kind, dot, key = target.partition(".")
        if not (eq and dot and key) or kind not in VARIANT_KINDS:
            raise argparse.ArgumentTypeError(f"{item!r}: write KIND.KEY=VALUE, KIND one of {VARIANT_KINDS}")
        if kind == "env":
            overrides[kind][key] = raw
            continue
        try:
            overrides[kind][key] = json.loads(raw)
        except ValueError:
            overrides[kind][key] = raw
    return name, overrides


@contextlib.contextmanager
def environment(values: dict):
    """Set environment variables for the duration of one row, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------------------- shapes


def shape_dims(shape: str, vocab_size: int | None = None) -> dict:
    dims = dict(SHAPE_CONFIGS[shape])
    if dims["vocab_size"] is None:
        dims["vocab_size"] = vocab_size
    return dims


def model_config(shape: str, tokenizer):
    """The transformers config of a shape, with the tokenizer's special token ids."""
    import torch
    from transformers import LlamaConfig, Qwen2Config

    dims = shape_dims(shape, len(tokenizer))
    family = dims.pop("family")
    rope_theta = dims.pop("rope_theta")
    cls = LlamaConfig if family == "llama" else Qwen2Config
    config = cls(
        **dims,
        rope_theta=rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )
    # transformers 5 keeps the RoPE base in rope_parameters; make sure it took the shape's value.
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = rope_theta
    else:
        config.rope_theta = rope_theta
    config.dtype = torch.bfloat16
    return config


def linear_params(dims: dict) -> int:
    """N: weights of the matrix products per token (attention and MLP projections, LM head).

    Embedding lookups are not matrix products; biases, norms and LoRA's own small matrices are left out.
    """
    h, inter, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    heads, kv = dims["num_attention_heads"], dims["num_key_value_heads"]
    head_dim = h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o; k, v
    mlp = 3 * h * inter  # gate, up, down
    return layers * (attn + mlp) + h * dims["vocab_size"]


def flops_per_token(dims: dict, sample_lengths: list[int]) -> float:
    """Model FLOPs per trained token: 4N + attention, the issue's definition.

    * 4N: each frozen base weight does 2 FLOPs per token forward and 2 backward for the input
      gradient; a frozen weight gets no weight gradient, so not the usual 6N. Recomputation by
      gradient checkpointing is not counted (it is overhead, not model work), nor is LoRA's own
      work (about 2% of N at r64).
    * attention: QK^T and AV cost 2 x 2 x d_attn FLOPs per (query, key) pair forward, 3x that
      forward + backward (no frozen weights there); causal, so a sample of S tokens has S(S+1)/2
      pairs: 12 x layers x d_attn x pairs / tokens, i.e. 6 x layers x d_attn x (S + 1) per token for
      one unpacked sample (the PaLM count 12 x layers x d x S, halved for the causal mask).
    """
    layers = dims["num_hidden_layers"]
    d_attn = dims["hidden_size"] // dims["num_attention_heads"] * dims["num_attention_heads"]
    tokens = sum(sample_lengths)
    pairs = sum(s * (s + 1) / 2 for s in sample_lengths)
    attention = 3 * 4 * layers * d_attn * pairs / tokens
    return 4 * linear_params(dims) + attention


# --------------------------------------------------------------------------------------- model files


def _bench_tokenizer():
    from tests.tiny import build_tokenizer

    return build_tokenizer()


def ensure_model(shape: str, models_dir: Path, log=print) -> Path:
    """A folder with the shape's config, random bf16 safetensors (one shard per layer) and a tokenizer.

    Reused when already complete. Weights are drawn per tensor on the GPU when there is one (normal,
    std 0.02; norm weights 1), so a 7B model takes seconds plus the disk write, and at most one layer
    is ever in host memory.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = models_dir / shape
    if (folder / COMPLETE_MARK).is_file():
        return folder
    started = time.perf_counter()
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".{shape}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = _bench_tokenizer()
    config = model_config(shape, tokenizer)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    del skeleton
    groups: dict[str, list[str]] = {}
    for name in shapes:
        match = re.search(r"\.layers\.(\d+)\.", name)
        key = f"layer{int(match.group(1)):03d}" if match else "other"
        groups.setdefault(key, []).append(name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    weight_map, total = {}, 0
    for i, (_group, names) in enumerate(sorted(groups.items())):
        filename = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            tensor = torch.empty(shapes[name], dtype=torch.bfloat16, device=device)
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, 0.02, generator=generator)
            tensors[name] = tensor.cpu()
            total += tensor.numel() * 2
            weight_map[name] = filename
        save_file(tensors, str(staging / filename), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARK).write_text(f"{shape} {total} bytes\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    if device == "cuda":
        torch.cuda.empty_cache()
    log(f"[bench] built {folder}: {total / GIB:.2f} GiB bf16 in {time.perf_counter() - started:.1f} s")
    return folder


# ------------------------------------------------------------------------------------------- device


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def slug(text: str) -> str:
    """A file-name form of a GPU name.

    >>> slug("NVIDIA H100 80GB HBM3")
    'h100-80gb-hbm3'
    """
    text = re.sub(r"^nvidia\s+", "", text.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_matmul_peak(models_dir: Path, log=print) -> dict:
    """The GPU's bf16 matrix rate, measured: median of 10 timed 8192^3 products on random data after
    3 warm-ups. Cached per GPU name in ``models_dir`` so every row of a run shares one denominator.
    On a CPU (smoke tests only) a 1024^3 fp32 product stands in."""
    import torch

    name = gpu_name()
    cache = models_dir / PEAK_CACHE
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if name in cached:
        return cached[name]
    cuda = torch.cuda.is_available()
    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda else (1024, torch.float32, "cpu")
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    times = []
    for i in range(13):
        _sync()
        start = time.perf_counter()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            a @ b
            end.record()
            end.synchronize()
            elapsed = begin.elapsed_time(end) / 1e3
        else:
            a @ b
            elapsed = time.perf_counter() - start
        if i >= 3:
            times.append(elapsed)
    del a, b
    result = {
        "tflops": round(2 * n**3 / statistics.median(times) / 1e12, 3),
        "how": f"{n}^3 {str(dtype).replace('torch.', '')} matmul, median of {len(times)}",
    }
    log(f"[bench] matmul peak on {name}: {result['tflops']} TFLOP/s ({result['how']})")
    cached[name] = result
    with contextlib.suppress(OSError):
        models_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        os.replace(tmp, cache)
    return result


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger_kernel"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    return out


class StepClock:
    """Host time at the end of every step (after a device sync), peak device use, losses."""

    def __init__(
        self,
        profile: tuple[int, int] | None = None,
        cuda_profile: bool | str = False,
        sync_steps=None,
        memory_steps=None,
    ):
        self.ends: list[float] = []
        # --clock window: the step numbers (1-based) whose ends sync; None: every step's
        self.sync_steps = sync_steps
        # the step ends that sample device-wide memory (cudaMemGetInfo, a driver call that some
        # drivers take milliseconds for); None: every step's
        self.memory_steps = memory_steps
        self.mem_get_info_s: list[float] = []  # how long each of those samples took
        self.losses: list[float] = []
        self.device_used = 0
        self.loaded_bytes = None
        self.started = None
        # --profile: cProfile of the main thread between these step ends (the timed steps)
        self.profiler = None
        self.profile = profile
        # --profile-cuda: torch.profiler (host ops + CUDA kernels) instead of cProfile
        self.cuda_profile = cuda_profile

    def begin(self) -> None:
        import torch

        _sync()
        if torch.cuda.is_available():
            self.loaded_bytes = torch.cuda.memory_allocated()  # weights (+ LoRA) before the first step
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def step_end(self) -> None:
        import torch

        step = len(self.ends) + 1
        if self.sync_steps is None or step in self.sync_steps:
            _sync()
        # Before the clock reads: a sample at the warm-up's end must not count in the first timed step.
        if torch.cuda.is_available() and (self.memory_steps is None or step in self.memory_steps):
            asked = time.perf_counter()
            free, total = torch.cuda.mem_get_info()
            self.mem_get_info_s.append(time.perf_counter() - asked)
            self.device_used = max(self.device_used, total - free)
        self.ends.append(time.perf_counter())
        if self.profile and len(self.ends) == self.profile[0]:
            self.profiler = _start_profiler(self.cuda_profile)
        elif self.profiler is not None and len(self.ends) == self.profile[1]:
            self.profiler.disable()

    def loss(self, value) -> None:
        if value is not None:
            self.losses.append(float(value))


# --------------------------------------------------------------------------------------------- data


def token_rows(spec: Spec, vocab_size: int, count: int) -> list[list[int]]:
    """``count`` rows of ``spec.seq`` random token ids, the same for both tools (seeded by seq)."""
    import torch

    generator = torch.Generator().manual_seed(1234 + spec.seq)
    return torch.randint(0, vocab_size, (count, spec.seq), generator=generator).tolist()


def sample_lengths(spec: Spec) -> list[int]:
    if not spec.sample_len:
        return [spec.seq]
    full, rest = divmod(spec.seq, spec.sample_len)
    return [spec.sample_len] * full + ([rest] if rest else [])


def tuner_rows(spec: Spec, rows: list[list[int]]) -> list[dict]:
    """tuner's packed rows (``pack_row``: position ids restart per sample, first label -100)."""
    from tuner.data.pack import pack_row

    out = []
    for ids in rows:
        samples, at = [], 0
        for length in sample_lengths(spec):
            piece = ids[at : at + length]
            samples.append({"input_ids": piece, "labels": piece})
            at += length
        out.append(pack_row(samples))
    return out


# ------------------------------------------------------------------------------------------- tools


def apply_liger(shape: str) -> bool:
    """Hook for the optimisation step: Liger's fused kernels (RMSNorm, RoPE, SwiGLU, fused linear
    cross-entropy), patched into the model classes before loading. True when applied."""
    try:
        from liger_kernel import transformers as liger
    except ImportError:
        print("[bench] --liger: liger_kernel is not importable; running without it", flush=True)
        return False
    family = SHAPE_CONFIGS[shape]["family"]
    getattr(liger, f"apply_liger_kernel_to_{family}")()
    return True


def checkpointing_mode(model) -> str | None:
    """How the model's layers are checkpointed: "reentrant", "non-reentrant", or None when off."""
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and func is not None:
            keywords = getattr(func, "keywords", {}) or {}
            return "reentrant" if keywords.get("use_reentrant", True) else "non-reentrant"
    return None


def checkpointed_layers(model) -> int:
    """Decoder layers that recompute their activations in the backward pass."""
    from tuner.models.layers import checkpointing_layers

    return len(checkpointing_layers(model))


def offloaded_layers(model) -> int:
    """Checkpointed layers whose saved inputs wait in host memory (tuner.fast.checkpoint_offload)."""
    try:
        from tuner.fast.checkpoint_offload import offloaded_checkpoint
    except ImportError:
        return 0
    return sum(
        1 for m in model.modules() if getattr(m, "_gradient_checkpointing_func", None) is offloaded_checkpoint
    )


def run_tuner(
    spec: Spec, model_dir: Path, rows: list[list[int]], clock: StepClock, work: Path, overrides=None
) -> dict:
    """tuner's path: build_model + training_arguments + tuner's Trainer class, collator and events.
    ``overrides`` (a parsed --variant): TrainConfig keys and TrainingArguments attributes to change."""
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    from tuner.config.files import config_from_dict
    from tuner.config.speed import SWITCHES, switch
    from tuner.models.load import count_parameters, load_tokenizer
    from tuner.runs.events import EventLog
    from tuner.train.args import training_arguments
    from tuner.train.callbacks import EventCallback, RunControl
    from tuner.train.data import training_collator
    from tuner.train.model import build_model
    from tuner.train.trainer import make_trainer_class

    overrides = overrides or {kind: {} for kind in VARIANT_KINDS}
    config = config_from_dict(
        dict(
            name="bench",
            model=str(model_dir),
            data_path="random-tokens",  # never read: the rows below are handed to the Trainer
            method=spec.method,
            max_length=spec.sample_len or spec.seq,
            tokens_per_step=spec.seq,
            pack_to_max_length=True,
            batch_size=1,
            accumulative_counts=1,
            max_steps=len(rows),
            save_steps=10**9,
            logging_steps=1,
            lora_r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            lora_targets=LORA["targets"],
            lr=LR,
            max_norm=MAX_NORM,
            gradient_checkpointing=True,
        )
        | overrides["set"]
    )
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    started = time.perf_counter()
    model, loaded = build_model(config)
    load_s = time.perf_counter() - started
    trainable, _ = count_parameters(model)
    args = training_arguments(config, work, loaded, has_eval=False)
    for key, value in overrides["arg"].items():
        if not hasattr(args, key):
            raise ValueError(f"--variant arg.{key}: TrainingArguments has no such attribute")
        setattr(args, key, value)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            clock.loss((logs or {}).get("loss"))

    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(tuner_rows(spec, rows)),
        data_collator=training_collator(tokenizer, config, loaded),
        processing_class=tokenizer,
        callbacks=[EventCallback(EventLog(work / "events.jsonl"), RunControl()), Clock()],
    )
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
        return dict(
            load_s=load_s,
            precision=str(loaded.dtype).replace("torch.", ""),
            optimizer=str(getattr(args.optim, "value", args.optim)),
            attention=loaded.attention,
            trainable_params=trainable,
            checkpointing=checkpointing_mode(model),
            checkpointed_layers=checkpointed_layers(model),
            offloaded_layers=offloaded_layers(model),
            switches={name: switch(name) for name in SWITCHES},
            tuner_liger=bool(getattr(loaded, "liger", False)),
            fused_lora=getattr(loaded, "fused_lora", 0),
            wide_loss_chunks=getattr(loaded, "wide_loss_chunks", False),
            cuda_graphs=_graphs_info(getattr(loaded, "layer_graphs", None)),
            embedding_on_cpu=bool(getattr(loaded, "embedding_on_cpu", "")),
            overrides={kind: values for kind, values in overrides.items() if values} or None,
        )
    finally:
        trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
        del trainer, model


def _graphs_info(graphs) -> dict | None:
    """What tuner.fast.layer_graphs did in a row: layers graphed, forward passes replayed, or why not."""
    if graphs is None:
        return None
    return dict(
        layers=len(graphs.layers), replays=graphs.replays, failed=graphs.failed, skipped=graphs.skipped
    )


def plain_dtype(spec: Spec, recipe: str):
    """XTuner 0.1.9's recipe: fp16 AMP for QLoRA on Llama-2, bf16 otherwise; fp32 on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if recipe == "fp16" or (recipe == "recipe" and spec.shape == "llama2-7b" and spec.method == "qlora"):
        return torch.float16
    return torch.bfloat16


def run_plain(
    spec: Spec, model_dir: Path, rows: list[list[int]], clock: StepClock, precision: str = "recipe"
) -> dict:
    """The baseline: a hand-written transformers + peft + bitsandbytes loop, library defaults."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = plain_dtype(spec, precision)
    torch.manual_seed(0)
    started = time.perf_counter()
    kwargs = {"dtype": dtype}
    if spec.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if spec.method != "qlora":
        model.to(device)
    model.config.use_cache = False
    # Reentrant checkpointing: the transformers default of the recipe's era, named explicitly because
    # recent torch warns (and may come to refuse) when use_reentrant is left unsaid.
    checkpointing = {"use_reentrant": PLAIN_REENTRANT}
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["targets"],
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    load_s = time.perf_counter() - started
    params = [p for p in model.parameters() if p.requires_grad]
    if cuda:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW32bit(params, lr=LR, weight_decay=0.0)
        optimizer_name = "paged_adamw_32bit"
    else:
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
        optimizer_name = "adamw_torch"
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    autocast = cuda and dtype != torch.float32
    skipped = 0
    clock.begin()
    for ids in rows:
        batch = torch.tensor([ids], dtype=torch.long).to(device, non_blocking=True)
        with torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            skipped += scaler.get_scale() < scale  # an overflow: the step was skipped
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.loss(loss.item())
        clock.step_end()
    result = dict(
        load_s=load_s,
        precision=str(dtype).replace("torch.", ""),
        optimizer=optimizer_name,
        attention=getattr(model.config, "_attn_implementation", None),
        trainable_params=sum(p.numel() for p in params),
        checkpointing=checkpointing_mode(model),
        checkpointed_layers=checkpointed_layers(model),
    )
    if scaler is not None:
        result["amp_skipped_steps"] = int(skipped)
    del model, optimizer, params
    return result


# -------------------------------------------------------------------------------------------- child


def measure(spec: Spec, opts) -> dict:
    """Run one configuration in this process and return its row (``error`` set when it failed)."""
    import torch

    models_dir = Path(opts.models_dir)
    row = {
        "model": spec.shape,
        "method": spec.method,
        "seq": spec.seq,
        "tool": spec.tool,
        "sample_len": spec.sample_len,
        "tag": " ".join(t for t in (opts.tag, spec.variant) if t) or None,
        "variant": spec.variant,
        "liger": False,
        "tok_s": None,
        "step_s": None,
        "peak_gib": None,
        "reserved_gib": None,
        "mfu": None,
        "gpu": gpu_name(),
        **{k: v for k, v in versions().items()},
        "steps": opts.steps,
        "warmup": opts.warmup,
        "batch_size": 1,
        "tokens_per_step": spec.seq,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "error": None,
    }
    if spec.method == "qlora" and not torch.cuda.is_available():
        row["error"] = "qlora needs a CUDA GPU (bitsandbytes); use --tiny / --method lora on a CPU"
        return row
    if spec.sample_len and spec.tool != "tuner":
        row["error"] = "--sample-len packs samples, which only the tuner tool does"
        return row
    if not torch.cuda.is_available():
        # CPU smoke runs only check the harness; one thread avoids oversubscribing a shared machine.
        torch.set_num_threads(1)
    clock = StepClock(
        profile=(opts.warmup, opts.warmup + opts.steps) if opts.profile else None,
        cuda_profile="syncs" if opts.profile_syncs else opts.profile_cuda,
        sync_steps={opts.warmup, opts.warmup + opts.steps} if opts.clock == "window" else None,
        # Device-wide memory at the warm-up's end and the window's: sampled inside the window, its
        # driver call would land in the next step's time (rows before 2026-12-01 session 6 did so).
        memory_steps={opts.warmup, opts.warmup + opts.steps},
    )
    row["clock"] = opts.clock
    started = time.perf_counter()
    try:
        model_dir = ensure_model(spec.shape, models_dir)
        peak = measure_matmul_peak(models_dir)
        if opts.liger:
            row["liger"] = apply_liger(spec.shape)
        dims = shape_dims(spec.shape, _vocab_of(model_dir))
        rows = token_rows(spec, dims["vocab_size"], opts.warmup + opts.steps)
        if spec.tool == "tuner":
            overrides = dict(opts.variants).get(spec.variant) if spec.variant else None
            env = (overrides or {}).get("env", {})
            with tempfile.TemporaryDirectory(prefix="bench-run-") as work, environment(env):
                info = run_tuner(spec, model_dir, rows, clock, Path(work), overrides)
            row["liger"] = row["liger"] or info.pop("tuner_liger")
        else:
            info = run_plain(spec, model_dir, rows, clock, opts.plain_precision)
        row.update(info)
        row["load_s"] = round(info["load_s"], 1)
        timed = clock.ends[opts.warmup - 1 :] if opts.warmup else [clock.started, *clock.ends]
        if len(clock.ends) != opts.warmup + opts.steps or len(timed) < 2:
            raise RuntimeError(f"expected {opts.warmup + opts.steps} steps, timed {len(clock.ends)}")
        per_step = [b - a for a, b in itertools.pairwise(timed)]
        step_s = (timed[-1] - timed[0]) / len(per_step)
        flops = flops_per_token(dims, sample_lengths(spec))
        achieved = spec.seq / step_s * flops
        row.update(
            tok_s=round(spec.seq / step_s, 1),
            step_s=round(step_s, 4),
            step_s_median=round(statistics.median(per_step), 4),
            step_s_min=round(min(per_step), 4),
            step_s_max=round(max(per_step), 4),
            first_step_s=round(clock.ends[0] - clock.started, 3),
            model_tflops=round(achieved / 1e12, 1),
            peak_tflops=peak["tflops"],
            peak_how=peak["how"],
            mfu=round(achieved / (peak["tflops"] * 1e12), 4),
            flops_per_token=round(flops),
            n_linear_params=linear_params(dims),
            loss_first=round(clock.losses[0], 4) if clock.losses else None,
            loss_last=round(clock.losses[-1], 4) if clock.losses else None,
        )
        if clock.losses and not all(math.isfinite(v) for v in clock.losses):
            row["error"] = "non-finite loss"
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0][:300]}"
    except Exception as exc:  # a failed configuration is a row too; the driver goes on
        traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    finally:
        if torch.cuda.is_available():
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            row["reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
            row["device_used_gib"] = round(clock.device_used / GIB, 3) if clock.device_used else None
            if clock.mem_get_info_s:
                row["mem_get_info_ms"] = round(1000 * max(clock.mem_get_info_s), 3)
            row["loaded_gib"] = round(clock.loaded_bytes / GIB, 3) if clock.loaded_bytes else None
        if clock.profiler is not None:
            clock.profiler.disable()
            row["profile"] = str(write_profile(clock.profiler, Path(opts.profile), spec, opts))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        row["total_s"] = round(time.perf_counter() - started, 1)
    return row


class _TorchProfiler:
    """torch.profiler over the timed steps, with cProfile's enable/disable interface."""

    def __init__(self):
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        # No with_stack: on the device it slowed the host by ~40% (0.428 s profiled against 0.311 s) and
        # left FunctionEvent.stack empty, so the idle gaps came out larger than in a real step.
        self.profile = torch.profiler.profile(activities=activities)
        self.started = time.perf_counter()
        self.wall_s = None
        self.profile.__enter__()

    def disable(self) -> None:
        if self.wall_s is None:
            self.wall_s = time.perf_counter() - self.started
            self.profile.__exit__(None, None, None)


def _start_profiler(kind):
    if kind == "syncs":
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (imported by the tests too)
        from sync_trace import SyncTracer

        return SyncTracer()
    if kind:
        return _TorchProfiler()
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def write_cuda_profile(profiler: _TorchProfiler, path: Path, spec: Spec, opts, top: int) -> None:
    """Kernels by GPU time, and how much of the wall clock the GPU was busy at all: what is left
    idle is host overhead (Python, launches, syncs) that no faster kernel can win back."""
    events = profiler.profile.key_averages()
    busy_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    steps = max(opts.steps, 1)
    head = (
        f"{spec.label}: {opts.steps} timed steps under torch.profiler\n"
        f"wall {profiler.wall_s / steps:.4f} s/step, GPU kernels {busy_us / 1e6 / steps:.4f} s/step "
        f"({100 * busy_us / 1e6 / profiler.wall_s:.1f}% busy; profiler overhead included)\n\n"
    )
    by_gpu = events.table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=90)
    by_host = events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=90)
    gaps = idle_gaps(profiler.profile.events(), steps)
    path.write_text(head + "By GPU time\n" + by_gpu + "\n\nBy host time\n" + by_host + "\n\n" + gaps + "\n")


def _caller(event) -> str:
    """The innermost frames of an op's Python stack outside torch itself (where tuner, transformers,
    peft, Liger or the Trainer asked for it), where the profiler recorded stacks ("" otherwise)."""
    frames = [f for f in (getattr(event, "stack", None) or []) if "torch/" not in f and "<built-in" not in f]
    return " < ".join(f.split("site-packages/")[-1] for f in frames[:3])


def idle_gaps(events, steps: int, min_us: float = 200.0, top: int = 12) -> str:
    """Where the GPU waits for the host: the stretches of at least ``min_us`` with no kernel, memcpy or
    memset running, the largest first, each with the kernels either side and the host ops that
    started inside it (longest first, with their Python callers)."""
    device = sorted(
        (e.time_range.start, e.time_range.end, e.name) for e in events if e.device_type.name == "CUDA"
    )
    if not device:
        return "GPU idle gaps: no device events"
    gaps, busy_until, last = [], device[0][1], device[0][2]
    for start, end, name in device[1:]:
        if start - busy_until >= min_us:
            gaps.append((start - busy_until, busy_until, start, last, name))
        if end >= busy_until:
            busy_until, last = end, name
    host = [e for e in events if e.device_type.name == "CPU"]
    total = sum(g[0] for g in gaps)
    lines = [
        f"GPU idle gaps >= {min_us:.0f} us: {len(gaps) / steps:.1f} per step, {total / 1e3 / steps:.1f} ms per step",
        "",
    ]
    for length, begin, end, before, after in sorted(gaps, reverse=True)[:top]:
        lines.append(f"{length / 1e3:.2f} ms idle, after {before[:60]!r}, before {after[:60]!r}")
        inside = [e for e in host if begin <= e.time_range.start < end]
        inside.sort(key=lambda e: min(e.time_range.end, end) - e.time_range.start, reverse=True)
        for e in inside[:4]:
            spent = (min(e.time_range.end, end) - e.time_range.start) / 1e3
            lines.append(f"    {spent:6.2f} ms {e.name[:50]:50s} {_caller(e)[:200]}")
    return "\n".join(lines)


def write_profile(profiler, folder: Path, spec: Spec, opts, top: int = 45) -> Path:
    """The timed steps' profile. cProfile (main thread): top functions by own and cumulative time.
    The autograd engine runs CUDA backward passes on its own thread, which cProfile does not follow:
    there the backward (checkpoint recomputation included) shows as ``run_backward`` as a whole.
    torch.profiler (--profile-cuda): see write_cuda_profile."""
    import io
    import pstats

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.label}.txt"
    if isinstance(profiler, _TorchProfiler):
        write_cuda_profile(profiler, path, spec, opts, top)
        return path
    if hasattr(profiler, "sites"):  # --profile-syncs
        path.write_text(profiler.report(spec.label, opts.steps))
        return path
    text = io.StringIO()
    text.write(f"{spec.label}: {opts.steps} timed steps, main thread (cProfile inflates Python-heavy code)\n")
    for key in ("tottime", "cumulative"):
        stats = pstats.Stats(profiler, stream=text)
        stats.strip_dirs().sort_stats(key).print_stats(top)
    path.write_text(text.getvalue())
    return path


def _vocab_of(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


# ----------------------------------------------------------------------------------------- results


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to the JSON list at ``path``: under an exclusive lock, written to a temporary file
    and renamed into place, so concurrent writers never lose rows and readers never see half a file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else []
        if not isinstance(existing, list):
            raise ValueError(f"{path} does not hold a JSON list")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(existing + rows, indent=1) + "\n")
        os.replace(tmp, path)


def _fmt(value, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def report(rows: list[dict]) -> str:
    """A markdown table of rows, with each tuner row's ratio to the plain row of the same config."""
    plain = {
        (r["model"], r["method"], r["seq"]): r
        for r in rows
        if r["tool"] == "plain" and r.get("tok_s") and not r.get("error")
    }
    lines = [
        "| model | method | seq | tool | tok/s | x plain | step s | peak GiB | reserved GiB | device GiB | MFU | notes |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        base = plain.get((r["model"], r["method"], r["seq"]))
        if r.get("sample_len") and r["tool"] == "tuner":  # packed short samples vs plain at that length
            base = plain.get((r["model"], r["method"], r["sample_len"]))
        ratio = r["tok_s"] / base["tok_s"] if base and r.get("tok_s") else None
        notes = [r.get("precision") or "", r.get("optimizer") or ""]
        if r.get("sample_len"):
            notes.append(f"packed {r['sample_len']}-token samples")
        if r.get("liger"):
            notes.append("liger")
        if r.get("fused_lora"):
            notes.append("fused lora")
        if r.get("checkpointed_layers") is not None and r.get("tool") == "tuner":
            offloaded = ", inputs offloaded" if r.get("offloaded_layers") else ""
            notes.append(f"ckpt {r['checkpointed_layers']} layers{offloaded}")
        if r.get("embedding_on_cpu"):
            notes.append("embedding in host memory")
        if r.get("clock") == "window":
            notes.append("window clock")
        graphs = r.get("cuda_graphs")
        if graphs:
            notes.append(
                f"graphs off: {graphs['failed'][:60]}"
                if graphs.get("failed")
                else f"cuda graphs x{graphs['replays']}"
            )
        if r.get("tag"):
            notes.append(r["tag"])
        if r.get("error"):
            notes.append(f"ERROR {r['error'][:80]}")
        if r.get("invalid"):  # set by hand after the run, with the reason, when a row is known wrong
            notes.append("INVALID (see the row's invalid key)")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['seq']} | {r['tool']} | {_fmt(r.get('tok_s'))} | "
            f"{_fmt(ratio, '.2f')} | {_fmt(r.get('step_s'), '.3f')} | {_fmt(r.get('peak_gib'), '.2f')} | "
            f"{_fmt(r.get('reserved_gib'), '.2f')} | {_fmt(r.get('device_used_gib'), '.2f')} | "
            f"{_fmt(r.get('mfu'), '.1%')} | {', '.join(n for n in notes if n)} |"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- driver


def _csv(text: str, allowed=None, cast=str) -> list:
    values = [cast(v.strip()) for v in str(text).split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))}: choose from {', '.join(allowed)}")
    return values


def specs_from(opts) -> list[Spec]:
    if opts.all:
        shapes, methods, seqs, tools = REAL_SHAPES, METHODS, DEFAULT_SEQS, TOOLS
    else:
        shapes, methods, seqs, tools = opts.shape, opts.method, opts.seq, opts.tool
    variants = [name for name, _ in opts.variants] or [None]
    specs = []
    for shape, method, seq, tool in itertools.product(shapes, methods, seqs, tools):
        if tool == "tuner":
            specs += [Spec(shape, method, seq, tool, opts.sample_len, variant) for variant in variants]
        else:
            specs.append(Spec(shape, method, seq, tool))
    return specs


def default_out(folder: Path) -> Path:
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        name = "cpu"
    return folder / f"{_dt.date.today().isoformat()}-{slug(name)}.json"


def child_argv(spec: Spec, opts, out: Path) -> list[str]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--shape", spec.shape,
        "--method", spec.method,
        "--seq", str(spec.seq),
        "--tool", spec.tool,
        "--steps", str(opts.steps),
        "--warmup", str(opts.warmup),
        "--out", str(out),
        "--models-dir", str(opts.models_dir),
        "--plain-precision", opts.plain_precision,
    ]  # fmt: skip
    if spec.sample_len:
        argv += ["--sample-len", str(spec.sample_len)]
    if opts.liger:
        argv.append("--liger")
    if opts.tag:
        argv += ["--tag", opts.tag]
    if spec.variant:
        argv += ["--variant", dict(opts.variant_texts)[spec.variant]]
    if opts.profile:
        argv += ["--profile", str(opts.profile)]
    if opts.profile_cuda:
        argv.append("--profile-cuda")
    if opts.profile_syncs:
        argv.append("--profile-syncs")
    argv += ["--clock", opts.clock]
    return argv


def drive(specs: list[Spec], opts, out: Path) -> list[dict]:
    """Run each configuration in a child process, one after another; log each child to a file."""
    log_dir = Path(opts.log_dir) if opts.log_dir else out.with_name(out.stem + ".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    # Build missing model folders first, each in a child of its own with no timeout, so that
    # --child-timeout bounds the measurements only.
    for shape in dict.fromkeys(spec.shape for spec in specs):
        if (Path(opts.models_dir) / shape / COMPLETE_MARK).is_file():
            continue
        log_path = log_dir / f"prepare-{shape}.log"
        print(f"[bench] building the {shape} model folder in {opts.models_dir} (log {log_path})", flush=True)
        started = time.perf_counter()
        argv = [sys.executable, str(Path(__file__).resolve()), "--prepare", "--shape", shape]
        with open(log_path, "w") as log:
            code = subprocess.run(
                [*argv, "--models-dir", str(opts.models_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            ).returncode
        print(f"    -> exit {code} ({time.perf_counter() - started:.0f} s)", flush=True)
    produced = []
    for i, spec in enumerate(specs, 1):
        before = len(json.loads(out.read_text())) if out.is_file() else 0
        log_path = log_dir / f"{spec.label}.log"
        print(f"[bench] {i}/{len(specs)} {spec.label} (log {log_path})", flush=True)
        started = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                code = subprocess.run(
                    child_argv(spec, opts, out),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=opts.child_timeout,
                    cwd=REPO,
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        rows = json.loads(out.read_text())[before:] if out.is_file() else []
        if not rows or any(r.get("error") for r in rows):
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"    | {line[:200]}" for line in tail), flush=True)
        if not rows:
            row = {**asdict(spec), "model": spec.shape, "error": f"child exited with {code} and wrote no row"}
            row.pop("shape")
            append_rows(out, [row])
            rows = [row]
        for row in rows:
            status = row.get("error") or (
                f"{row['tok_s']:,.0f} tok/s, {row['step_s']:.3f} s/step, peak {row['peak_gib']} GiB, "
                f"reserved {row['reserved_gib']} GiB, MFU {row['mfu']:.1%}"
                if row.get("peak_gib") is not None
                else f"{row['tok_s']:,.0f} tok/s"
            )
            print(f"    -> {status} ({time.perf_counter() - started:.0f} s)", flush=True)
        produced += rows
    return produced


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--shape", type=lambda s: _csv(s, SHAPES), default=["llama2-7b"], help=f"{', '.join(SHAPES)}"
    )
    p.add_argument("--method", type=lambda s: _csv(s, METHODS), default=["qlora"], help="qlora, lora")
    p.add_argument(
        "--seq", type=lambda s: _csv(s, cast=int), default=[512], help="tokens per step, e.g. 512,4096"
    )
    p.add_argument("--tool", type=lambda s: _csv(s, TOOLS), default=list(TOOLS), help="tuner, plain")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--all", action="store_true", help="every real shape x method x 512/2048/4096 x tool")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny shape, method lora")
    p.add_argument("--out", help="results JSON list to append to (default <out-dir>/<date>-<gpu>.json)")
    p.add_argument("--out-dir", default=str(REPO / "bench" / "results"), help="folder of the default --out")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), help="random-init model folders (reused)")
    p.add_argument("--log-dir", help="driver: one log per child (default <out stem>.logs/ beside --out)")
    p.add_argument("--in-process", action="store_true", help="run every configuration in this process")
    p.add_argument(
        "--child-timeout", type=float, default=None, help="driver: seconds before a child is killed"
    )
    p.add_argument(
        "--prepare", action="store_true", help="only build the model folders (and the matmul peak)"
    )
    p.add_argument(
        "--plain-precision",
        choices=("recipe", "bf16", "fp16"),
        default="recipe",
        help="plain loop: recipe = fp16 AMP for llama2-7b qlora, bf16 otherwise",
    )
    p.add_argument(
        "--sample-len", type=int, default=None, help="tuner rows: pack samples of this length (hook)"
    )
    p.add_argument("--liger", action="store_true", help="apply Liger kernels before loading (hook)")
    p.add_argument("--tag", default=None, help="a label stored in each row (e.g. baseline, liger)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[:KIND.KEY=VALUE,...]",
        help="tuner rows: a named set of overrides, repeatable (one tuner row per variant); KIND is\n"
        "env (e.g. env.TUNER_CHECKPOINTING=reentrant), set (a TrainConfig key, e.g. set.precision=fp16)\n"
        "or arg (a TrainingArguments attribute, e.g. arg.include_num_input_tokens_seen=no)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="write a cProfile of each row's timed steps (main thread) to DIR/<label>.txt",
    )
    p.add_argument(
        "--profile-cuda",
        action="store_true",
        help="with --profile: torch.profiler (CUDA kernels by GPU time, GPU busy share) instead of cProfile",
    )
    p.add_argument(
        "--profile-syncs",
        action="store_true",
        help="with --profile: count the timed steps' synchronizing CUDA operations by Python call site\n"
        "(PyTorch's sync debug mode; bench/sync_trace.py) instead of cProfile",
    )
    p.add_argument(
        "--clock",
        choices=("step", "window"),
        default="step",
        help="step: a device sync after every step (default); window: only around the timed steps",
    )
    p.add_argument("--report", metavar="JSON", help="print the markdown table of a results file and exit")
    opts = p.parse_args(argv)
    if opts.tiny:
        opts.shape, opts.method = ["tiny"], ["lora"]
    try:
        opts.variants = [parse_variant(text) for text in opts.variant]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    opts.variant_texts = [(name, text) for (name, _), text in zip(opts.variants, opts.variant, strict=True)]
    if len({name for name, _ in opts.variants}) != len(opts.variants):
        p.error("--variant names must differ")
    if opts.steps < 1 or opts.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if opts.warmup == 0 and opts.steps < 2:
        p.error("with --warmup 0, use --steps >= 2")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.report:
        print(report(json.loads(Path(opts.report).read_text())))
        return 0
    if opts.prepare:
        for shape in REAL_SHAPES if opts.all else opts.shape:
            ensure_model(shape, Path(opts.models_dir))
        measure_matmul_peak(Path(opts.models_dir))
        return 0
    out = Path(opts.out) if opts.out else default_out(Path(opts.out_dir))
    specs = specs_from(opts)
    if len(specs) == 1 or opts.in_process:
        rows = []
        for spec in specs:
            row = measure(spec, opts)
            append_rows(out, [row])
            print("RESULT " + json.dumps(row), flush=True)
            rows.append(row)
    else:
        rows = drive(specs, opts, out)
    print(f"\n{len(rows)} row(s) appended to {out}\n")
    print(report(rows))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
