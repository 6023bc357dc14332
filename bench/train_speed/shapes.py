"""The models the benchmark trains: real shapes with random weights, written once as folders every
tool loads the same way, and the model FLOPs per token that MFU divides by.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

GIB = 2**30
REAL_SHAPES = ("llama2-7b", "llama3-8b", "qwen2.5-7b")
SHAPES = (*REAL_SHAPES, "tiny")
DEFAULT_MODELS_DIR = Path(tempfile.gettempdir()) / "bench-models"
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
    folder = models_dir / shape
    if (folder / COMPLETE_MARK).is_file():
        return folder  # before importing transformers: a peer tool may need to patch it first
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

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


def vocab_of(model_dir: Path) -> int:
    """The vocabulary of a built folder (the tiny shape takes its tokenizer's)."""
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]
