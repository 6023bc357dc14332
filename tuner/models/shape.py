"""A model's sizes as the memory and time estimate needs them: read from its config.json, counted for
LoRA."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuner.core.errors import ModelError
from tuner.core.workspace import DEFAULT_MODEL_NAME, default_model_dir


@dataclass
class ModelShape:
    """The sizes the estimate needs, read from a model's config.json."""

    params: int
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = False  # one matrix for the embedding and the LM head
    context: int | None = None  # max_position_embeddings: the longest rows the model was made for
    family: str = ""  # the config's model_type ("llama", "qwen2", ...)

    @property
    def embedding_params(self) -> int:
        """Embedding + LM head: the weights bitsandbytes leaves unquantized."""
        return self.vocab * self.hidden * (1 if self.tied else 2)


# Model types whose config class ties the embedding and the LM head when config.json leaves
# tie_word_embeddings out (Gemma's published config.json files do); the others' classes default to untied.
TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}


def shape_from_config(cfg: dict) -> ModelShape:
    """A ModelShape from a Hugging Face config dict (Llama/Qwen/Mistral-style keys).

    >>> s = shape_from_config({"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152,
    ...     "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
    ...     "tie_word_embeddings": True})
    >>> round(s.params / 1e6)
    135
    """
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    vocab = int(cfg["vocab_size"])
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    heads = int(cfg.get("num_attention_heads") or max(1, hidden // 64))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    tied = bool(cfg.get("tie_word_embeddings", cfg.get("model_type") in TIED_BY_DEFAULT))
    embed = vocab * hidden * (1 if tied else 2)
    params = layers * (attn + mlp + 2 * hidden) + embed + hidden
    context = cfg.get("max_position_embeddings")
    return ModelShape(
        params,
        hidden,
        layers,
        vocab,
        inter,
        heads,
        kv_heads,
        head_dim,
        tied,
        int(context) if context else None,
        str(cfg.get("model_type") or ""),
    )


def model_shape(model: str) -> ModelShape:
    """Read the shape of ``model`` (a folder, ``default`` or a cached hub id) from its config.json."""

    if not model or model == DEFAULT_MODEL_NAME:
        path = default_model_dir() / "config.json"
        if not path.is_file():  # not converted yet: the embedded SmolLM2-135M's published sizes
            return shape_from_config(
                {
                    "hidden_size": 576,
                    "num_hidden_layers": 30,
                    "vocab_size": 49152,
                    "intermediate_size": 1536,
                    "num_attention_heads": 9,
                    "num_key_value_heads": 3,
                    "tie_word_embeddings": True,
                    "max_position_embeddings": 8192,
                }
            )
    else:
        path = Path(model) / "config.json"
        if not path.is_file():
            path = _hub_config(model)
            if path is None:
                from tuner.models.published import PUBLISHED

                return shape_from_config(PUBLISHED[model])
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    return shape_from_config(cfg)


def _hub_config(model: str) -> Path | None:
    """A hub id's config.json: the cached copy; else None for the presets' models, whose published sizes
    (tuner.models.published, the same numbers) need no network, where an unreachable hub made every
    estimate wait out its timeouts (24 s each); else downloaded, or ModelError."""
    from huggingface_hub import hf_hub_download

    from tuner.models.published import PUBLISHED

    try:
        return Path(hf_hub_download(model, "config.json", local_files_only=True))
    except Exception:  # not in the cache (or not a hub id)
        if model in PUBLISHED:
            return None
    try:
        return Path(hf_hub_download(model, "config.json"))
    except Exception as exc:  # offline, unknown id
        raise ModelError(
            f"{model}: no config.json found locally (offline, or not a model id); cannot estimate "
            "its size. Download the model once (training does on first use) or set model to a "
            "local folder"
        ) from exc


def lora_params(shape: ModelShape, r: int, targets="all-linear") -> int:
    """Trainable parameters of LoRA rank ``r``: r x (in + out) for each adapted linear layer."""
    h, hd = shape.hidden, shape.head_dim
    linears = {
        "q_proj": (h, shape.heads * hd),
        "k_proj": (h, shape.kv_heads * hd),
        "v_proj": (h, shape.kv_heads * hd),
        "o_proj": (shape.heads * hd, h),
        "gate_proj": (h, shape.intermediate),
        "up_proj": (h, shape.intermediate),
        "down_proj": (shape.intermediate, h),
    }
    if targets != "all-linear" and targets:
        linears = {k: v for k, v in linears.items() if k in set(targets)} or linears
    return shape.layers * sum(r * (i + o) for i, o in linears.values())
