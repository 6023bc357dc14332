"""PiSSA adapters saved as plain LoRA, so that they apply to the original base model.

PiSSA (peft's ``init_lora_weights="pissa"``) starts LoRA from each weight's principal components:
``B0 A0`` = the top-r part of the SVD of ``W``, and the base weight becomes the residual
``W - s B0 A0``. A trained PiSSA adapter (``B, A``) is therefore only right on that residual base.
Every later consumer of tuner's adapter (chat, merge, GGUF, other programs such as vLLM or llama.cpp)
applies it to the original ``W``; peft alone would redo the SVD at every load, and nobody else does.
Saved as plain LoRA it is right everywhere:

    W - s B0 A0 + s B A  =  W + s [B, -B0] [A; A0]

a LoRA adapter of rank 2r with the same scale (alpha doubles with r; under rsLoRA, where the scale
is alpha / sqrt(r), alpha grows by sqrt(2)). This is the conversion peft's
``save_pretrained(path_initial_model_for_weight_conversion=...)`` does, applied here to the folder
the trainer wrote, so it also works after ``Trainer.save_model``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# Attribute of the PeftModel holding its LoRA weights as initialised (CPU copies: rank-r matrices,
# small next to the model).
INITIAL_ATTR = "tuner_pissa_initial"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def remember_initial_adapter(model) -> None:
    """Keep ``model``'s freshly initialised LoRA weights, which :func:`save_as_lora` subtracts."""
    from peft import get_peft_model_state_dict

    initial = {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
    model.__dict__[INITIAL_ATTR] = initial  # past nn.Module's registry: a plain attribute, not state


def initial_adapter(model) -> dict | None:
    """The weights :func:`remember_initial_adapter` kept, through any wrapper (DDP's ``module``)."""
    while model is not None:
        found = model.__dict__.get(INITIAL_ATTR)
        if found is not None:
            return found
        model = getattr(model, "module", None)
    return None


def save_as_lora(folder: str | Path, initial: dict) -> None:
    """Rewrite the PiSSA adapter in ``folder`` (adapter_model.safetensors + adapter_config.json) as
    the equivalent plain LoRA adapter for the original base (see the module docstring)."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    trained = load_file(str(folder / WEIGHTS_FILE))
    missing = sorted(k for k in trained if ".lora_" in k and k not in initial)
    if missing:
        raise ValueError(
            f"PiSSA conversion: {len(missing)} adapter weights have no initial value, e.g. {missing[0]}"
        )
    out = dict(trained)
    for key, value in trained.items():
        if ".lora_A." in key:
            out[key] = torch.cat([value.float(), initial[key]], dim=0).to(value.dtype)
        elif ".lora_B." in key:
            out[key] = torch.cat([value.float(), -initial[key]], dim=1).to(value.dtype)
    save_file(
        {k: v.contiguous() for k, v in out.items()}, str(folder / WEIGHTS_FILE), metadata={"format": "pt"}
    )
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("PiSSA conversion: per-module ranks (rank_pattern/alpha_pattern) are not supported")
    config["r"] = 2 * config["r"]
    config["lora_alpha"] = config["lora_alpha"] * (math.sqrt(2) if config.get("use_rslora") else 2)
    config["init_lora_weights"] = True  # loading must not redo the SVD on the original base
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
