"""Loading tokenizers and models: where from, which dtype, 4/8-bit, which attention, LoRA.

Every entry point takes a model *name*: a local folder, a hub id, or ``default`` (the embedded
SmolLM2-135M-Instruct, converted once into the workspace).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from tuner.core.errors import ModelError
from tuner.core.system import limit_gpu_memory
from tuner.core.workspace import DEFAULT_MODEL_NAME
from tuner.models.lazy_deepspeed import load_deepspeed_only_when_used

log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """``default`` -> the embedded model's folder; an existing folder -> its path; else a hub id.

    >>> resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct")  # not a local folder: kept as a hub id
    'Qwen/Qwen2.5-0.5B-Instruct'
    """
    if not name or name == DEFAULT_MODEL_NAME:
        from tuner.models.embedded import ensure_default_model

        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"{name}: is a file, not a model folder; give the folder that holds config.json and the "
                "weights (e.g. models/Qwen2.5-0.5B-Instruct), or a hub id"
            )
        if not (path / "config.json").is_file():
            raise ModelError(f"{name}: no config.json in this folder; point at a Hugging Face model folder")
        return str(path.resolve())
    return name


def _wrap_load_error(name: str, exc: Exception) -> ModelError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "/" in name and not Path(name).exists():
        return ModelError(
            f"could not load '{name}': not a local folder, and the model hub could not provide it "
            f"({text}). Download it (e.g. `hf download {name} --local-dir models/...`) and give the folder"
        )
    return ModelError(f"could not load '{name}': {text}")


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """The tokenizer of a model, with a pad token (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(name, exc) from exc
    return with_pad_token(tokenizer)


def with_pad_token(tokenizer):
    """The one pad-token rule: a tokenizer without a pad token pads with its eos token, else its
    unk token, else the token of id 0.

    Harmless for training (padding is masked out of the loss by label -100) and for generation
    (padding is masked out by the attention mask). Every tokenizer tuner loads goes through here.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(precision: str = "auto"):
    """auto: bf16 on GPUs that support it, else fp16; fp32 on a CPU (CPU half precision is slow).

    >>> resolve_dtype("fp32")
    torch.float32
    """
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision in table:
        if precision != "fp32" and not cuda_available() and precision == "fp16":
            raise ModelError("fp16 needs a GPU; use precision fp32 (or auto) on a CPU")
        return table[precision]
    if precision != "auto":
        raise ModelError(f"unknown precision '{precision}'; use auto, bf16, fp16 or fp32")
    if not cuda_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def pick_attention(requested: str = "auto") -> tuple[str, str]:
    """Return (implementation, why). flash_attention_2 when importable on an Ampere+ GPU, else sdpa."""
    if requested != "auto":
        return requested, "asked for"
    if not cuda_available():
        return "sdpa", "no GPU"
    import torch

    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return (
            "sdpa",
            f"GPU compute capability {major}.x is below 8.0 (flash-attention needs Ampere or newer)",
        )
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "flash-attn is not installed (optional: pip install flash-attn --no-build-isolation)"
    return "flash_attention_2", "flash-attn is installed and the GPU supports it"


def quantization_config(bits: int | None, compute_dtype, *, partitioned: bool = False):
    """A BitsAndBytesConfig for 4-bit NF4 with double quantization, or 8-bit; None for full precision.
    ``partitioned``: DeepSpeed ZeRO-3 will split the weights across GPUs. It flattens every weight into
    one buffer of the compute dtype, so the packed 4-bit values are stored as that dtype instead of
    uint8 (the same bytes; peft's QLoRA + ZeRO-3 recipe)."""
    if not bits:
        return None
    if bits not in (4, 8):
        raise ModelError(f"bits must be 4 or 8, not {bits}")
    if not cuda_available():
        raise ModelError(
            f"{bits}-bit loading needs a CUDA GPU (bitsandbytes); on a CPU use full precision "
            "(method lora, quantization none)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"{bits}-bit loading needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = {"bnb_4bit_quant_storage": compute_dtype} if partitioned else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        **storage,
    )


@dataclass
class LoadedModel:
    model: object
    dtype: object
    attention: str
    attention_reason: str
    bits: int | None
    device: str

    def describe(self) -> str:
        quant = f", {self.bits}-bit" if self.bits else ""
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.device}, {dtype}{quant}, attention {self.attention} ({self.attention_reason})"


def load_model(
    name: str,
    *,
    bits: int | None = None,
    precision: str = "auto",
    attention: str = "auto",
    trust_remote_code: bool = False,
    device: str | None = None,
    partitioned: bool = False,
) -> LoadedModel:
    """Load a causal LM for training or chat.

    Quantized models go where bitsandbytes puts them (the current GPU: under torchrun the rank's own, which
    tuner.train.model makes current before it plans and loads); others are moved to ``device`` (default: cuda when available, else cpu).
    ``partitioned``: DeepSpeed ZeRO-3 will split the weights (see quantization_config).
    """
    import torch
    from transformers import AutoModelForCausalLM

    limit_gpu_memory()  # before the weights: they count against TUNER_GPU_MEMORY_GIB too
    load_deepspeed_only_when_used()  # not on every save of a run without DeepSpeed
    dtype = resolve_dtype(precision)
    quant = quantization_config(bits, dtype, partitioned=partitioned)
    attn, why = pick_attention(attention)
    path = resolve_model_path(name)
    device = device or ("cuda" if cuda_available() else "cpu")
    kwargs = dict(dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        if attn == "flash_attention_2" and "flash" in str(exc).lower():
            log.warning("flash_attention_2 failed (%s); falling back to sdpa", exc)
            kwargs["attn_implementation"], attn, why = "sdpa", "sdpa", f"flash-attention failed: {exc}"
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        elif attn == "sdpa" and "does not support an attention implementation" in str(exc):
            # Gemma 2 (logit soft-capping) has no SDPA path in transformers: its own eager attention
            kwargs["attn_implementation"], attn, why = "eager", "eager", "the architecture has no SDPA attention"
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            raise _wrap_load_error(name, exc) from exc
    if quant is None:
        model.to(device)
    loaded = LoadedModel(model, dtype, attn, why, bits, device)
    log.info("loaded %s: %s", name, loaded.describe())
    return loaded


def add_lora(
    model,
    *,
    r: int = 64,
    alpha: int = 16,
    dropout: float = 0.1,
    targets: str | list[str] = "all-linear",
    quantized: bool = False,
    gradient_checkpointing: bool = False,
    upcast: bool = True,
    dora: bool = False,
    rslora: bool = False,
    init: str = "default",
):
    """Wrap ``model`` with fresh LoRA adapters (peft); ``dora``, ``rslora`` and ``init="pissa"`` pick
    peft's variants (tuner.models.pissa keeps what a PiSSA adapter needs to be saved as plain LoRA). For k-bit bases with ``upcast`` peft's
    preparation casts every unquantized weight (norms, embedding, LM head) to fp32; without it they
    keep the model's dtype (bf16/fp16, as torchtune and Unsloth train), which saves 2 bytes per such
    weight and keeps the residual stream in half precision. Either way input gradients are enabled,
    which gradient checkpointing needs (with a frozen embedding only these input gradients give the
    checkpointed layers an input that requires grad). LoRA's own weights are fp32 (peft). Gradient
    checkpointing is the non-reentrant kind (its reentrant kind measured no faster)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = {"use_reentrant": False}
    if quantized and upcast:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=dora,
        use_rslora=rslora,
        init_lora_weights="pissa" if init == "pissa" else True,
    )
    model = get_peft_model(model, config)
    if dora:
        log.info(
            "DoRA: every LoRA layer runs peft's own forward (tuner's fused LoRA path is for plain LoRA, "
            "rsLoRA and PiSSA), and recomputes its weight's norm each step: slower than LoRA"
        )
    if init == "pissa":
        from tuner.models.pissa import remember_initial_adapter

        remember_initial_adapter(model)
    return model


def apply_liger(model) -> bool:
    """Swap in Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, and a fused linear cross-entropy that
    never materialises the logits) on a loaded model, before LoRA wraps it. True when applied; False
    when Liger is not installed, there is no GPU, or Liger has no patch for this architecture.

    Liger also replaces module-level functions and classes of that architecture (RoPE, the norm and
    MLP classes), so models of the same type loaded later in this process get the kernels too."""
    if not cuda_available() or importlib.util.find_spec("liger_kernel") is None:
        return False
    from liger_kernel import transformers as liger

    model_type = getattr(model.config, "model_type", "")
    patch = getattr(liger, f"apply_liger_kernel_to_{model_type}", None)
    if patch is None:
        log.info("liger kernels: no patch for model type %r; training without them", model_type)
        return False
    patch(model=model)
    log.info("liger kernels applied to %s (rms_norm, rope, swiglu, fused linear cross-entropy)", model_type)
    return True


def load_adapter(model, adapter_dir: str | Path, *, trainable: bool = False):
    """Attach a saved LoRA adapter (not merged) to ``model``."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"{adapter_dir}: no adapter_config.json; give an adapter folder (e.g. a run's adapter/)"
        )
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def release(*objects) -> None:
    """Drop references and give cached GPU memory back to the driver."""
    del objects
    gc.collect()
    if cuda_available():
        import torch

        torch.cuda.empty_cache()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
