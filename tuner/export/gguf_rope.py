"""RoPE as GGUF metadata: the rotary parameters of a transformers config (transformers 5's
rope_parameters or the older rope_theta + rope_scaling, Gemma 3's per-layer-type sets) and the
per-frequency factors llama.cpp reads as tensors (Llama 3.1+'s rope_freqs, Phi-3's long/short
factors), computed as llama.cpp's converter computes them. Scalings it cannot express are refused."""

from __future__ import annotations

from tuner.core.errors import ModelError
from tuner.export.gguf_tokenizer import CONVERTER


def rope_parameters(config) -> dict:
    # transformers 5 keeps them in rope_parameters; older configs as rope_theta + rope_scaling
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "full_attention" not in params:
        params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return params


def sliding_rope_theta(config) -> float:
    """The rope theta of Gemma 3's sliding-window layers (10000 where the config names none)."""
    return float((rope_parameters(config).get("sliding_attention") or {}).get("rope_theta", 10000.0))


def global_rope(config) -> dict:
    """The rope parameters of the full-attention layers (Gemma 3 keeps one set per layer type)."""
    params = rope_parameters(config)
    return dict(params.get("full_attention") or params)


def rope_theta(config) -> float:
    return global_rope(config).get("rope_theta", 10000.0)


def rope_kind(params: dict) -> str:
    return params.get("rope_type") or params.get("type") or "default"


def rope_factors(config, head_dim: int):
    """Per-frequency rope factors of Llama 3.1+'s rope scaling (rope_type llama3), as llama.cpp's
    ``rope_freqs`` tensor holds them; None for plain rope. Other scalings are refused."""
    import math

    import numpy as np

    params = global_rope(config)
    kind = rope_kind(params)
    if kind == "default":
        return None
    if kind != "llama3":
        raise ModelError(
            f"GGUF export: rope scaling {kind!r} is not supported for {config.model_type}; use {CONVERTER}"
        )
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    freqs = 1.0 / (params["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def phi3_rope(config, rope_dims: int):
    """(attention factor, long factors, short factors) of Phi-3's long-context rope (longrope, also
    spelled su), as llama.cpp's converter writes them; None for plain rope."""
    import math

    import numpy as np

    params = global_rope(config)
    kind = rope_kind(params).lower()
    if kind == "default" or not params.get("long_factor"):
        if kind not in ("default", "longrope", "su"):
            raise ModelError(f"GGUF export: Phi-3 rope scaling {kind!r} is not supported; use {CONVERTER}")
        return None
    if kind not in ("longrope", "su"):
        raise ModelError(f"GGUF export: Phi-3 rope scaling {kind!r} is not supported; use {CONVERTER}")
    long, short = params.get("long_factor"), params.get("short_factor")
    if not short or len(long) != len(short) or len(long) != rope_dims // 2:
        raise ModelError(
            f"GGUF export: Phi-3's rope long/short factors must both have {rope_dims // 2} values "
            f"(got {len(long)} and {len(short or [])})"
        )
    original = phi3_original_context(config)
    scale = config.max_position_embeddings / original
    attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
    return attn_factor, np.array(long, dtype=np.float32), np.array(short, dtype=np.float32)


def phi3_original_context(config) -> int:
    return int(
        getattr(config, "original_max_position_embeddings", None)
        or global_rope(config).get("original_max_position_embeddings")
        or config.max_position_embeddings
    )
