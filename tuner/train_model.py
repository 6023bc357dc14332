"""The model a training run trains: base load (4/8-bit), attention and fused kernels, LoRA, and the
DeepSpeed config that decides some of it."""

from __future__ import annotations

import json
from pathlib import Path

from tuner.config import DEEPSPEED_PRESETS, resolve_path
from tuner.errors import TunerError
from tuner.speed import checkpoint_reentrant, switch


def method_bits(config) -> int | None:
    return {"4bit": 4, "8bit": 8}.get(config.quantization) or (4 if config.method == "qlora" else None)


def build_model(config):
    """Base model (+ LoRA unless full fine-tuning), with gradient checkpointing as asked."""
    from tuner.model import add_lora, load_model

    bits = method_bits(config)
    loaded = load_model(
        config.model, bits=bits, precision=config.precision, trust_remote_code=config.trust_remote_code
    )
    model = loaded.model
    model.config.use_cache = False  # caches are useless in training and break position-id packing
    if switch("TUNER_VARLEN") == "on":
        from tuner.attention import NAME as VARLEN
        from tuner.attention import use_for_training

        switched, why = use_for_training(model)
        if switched:
            loaded.attention, loaded.attention_reason = VARLEN, why
    if switch("TUNER_LIGER") == "on" and not partitions_weights(config):
        from tuner.model import apply_liger

        loaded.liger = apply_liger(model)
    reentrant = checkpoint_reentrant()
    if config.method == "full":
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            if reentrant:
                model.enable_input_require_grads()
        return model, loaded
    model = add_lora(
        model,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=config.lora_targets,
        quantized=bits is not None,
        gradient_checkpointing=config.gradient_checkpointing,
        reentrant=reentrant,
        upcast=switch("TUNER_KBIT_UPCAST") == "on",
    )
    return model, loaded


def partitions_weights(config) -> bool:
    """True under DeepSpeed ZeRO-3, whose weights exist only inside their module's forward: Liger's
    fused cross-entropy reads the LM head's weight directly, so it stays off there."""
    path = deepspeed_config_path(config.deepspeed)
    if not path:
        return False
    try:
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError):
        return False
    return stage == 3


def deepspeed_config_path(value: str | None) -> str | None:
    """A preset name (zero2, ...) -> the JSON shipped in tuner/deepspeed; a path stays a path."""
    if not value:
        return None
    if value in DEEPSPEED_PRESETS:
        return str(Path(__file__).parent / "deepspeed" / f"{value}.json")
    path = resolve_path(value)
    if not path.is_file():
        raise TunerError(
            f"deepspeed config {value} not found; use one of {', '.join(DEEPSPEED_PRESETS)} or a .json file"
        )
    return str(path)
