"""After training: a clean adapter folder to share (export), and a standalone merged model (merge,
in ``tuner.export.merge``, re-exported here).

Both write into a hidden staging folder beside the output and rename it into place at the end, so
an interrupted export never leaves a folder that looks finished; an existing non-empty output is
replaced only with ``force``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuner.chat.load import TOKENIZER_FILES, chat_tokenizer
from tuner.chat.text import resolve_chat_template
from tuner.core.errors import ModelError
from tuner.core.io import check_output, staging_folder

# re-exported so `from tuner.export import merge_adapter` keeps working (merge.py imports us lazily: no cycle)
from tuner.runs.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LEGACY_WEIGHTS,
    AdapterSource,
    final_metrics,
    locate_adapter,
)
from tuner.runs.folders import CONFIG_FILE

log = logging.getLogger(__name__)

DTYPES = ("auto", "fp16", "bf16", "fp32")


# ------------------------------------------------------------------------------- finding adapters


# -------------------------------------------------------------------------------- atomic folders


# ----------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    out_dir: Path
    source: AdapterSource
    template: str
    metrics: dict


def _copy_weights(adapter_dir: Path, dest: Path) -> None:
    if (adapter_dir / ADAPTER_WEIGHTS).is_file():
        shutil.copy2(adapter_dir / ADAPTER_WEIGHTS, dest / ADAPTER_WEIGHTS)
        return
    # Old peft versions saved pickles; convert to safetensors (weights_only refuses code in the pickle).
    import torch
    from safetensors.torch import save_file

    state = torch.load(adapter_dir / LEGACY_WEIGHTS, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest / ADAPTER_WEIGHTS))


def _export_tokenizer(source: AdapterSource, trust_remote_code: bool):
    """The tokenizer saved with the adapter, else the base model's; with the training template set."""

    base = source.base_model
    has_own = any((source.adapter_dir / f).is_file() for f in TOKENIZER_FILES)
    if not base and not has_own:
        raise ModelError(
            f"{source.adapter_dir}: cannot tell the base model (no run config.yaml, no base in the adapter config)"
        )
    tokenizer = chat_tokenizer(base or "", source.adapter_dir, trust_remote_code)
    template = resolve_chat_template(tokenizer, source.config.get("template"))
    tokenizer.chat_template = template.chat_template
    return tokenizer, template


def model_card(source: AdapterSource, template_name: str, metrics: dict) -> str:
    """A README.md for the adapter: what it was trained from and how, final metrics, how to load it."""
    cfg = source.config
    base = source.base_model or "unknown"
    title = cfg.get("name") or source.adapter_dir.name

    def row(label, value):
        return f"| {label} | {value} |" if value not in (None, "", []) else None

    targets = cfg.get("lora_targets")
    training = [
        row(
            "base model",
            f"`{base}`" + (" (tuner's embedded SmolLM2-135M-Instruct)" if base == "default" else ""),
        ),
        row(
            "data",
            f"`{cfg['data_path']}` ({cfg.get('data_format', 'auto')})" if cfg.get("data_path") else None,
        ),
        row("preset", cfg.get("name")),
        row("task / method", f"{cfg.get('task', 'sft')} / {cfg.get('method', 'lora')}" if cfg else None),
        row(
            "LoRA r / alpha / dropout",
            f"{cfg.get('lora_r')} / {cfg.get('lora_alpha')} / {cfg.get('lora_dropout')}"
            if "lora_r" in cfg
            else None,
        ),
        row("LoRA targets", ", ".join(targets) if isinstance(targets, list) else targets),
        row("chat template", template_name),
        row("system prompt", cfg.get("system")),
        row("max length", cfg.get("max_length")),
        row(
            "epochs / max steps",
            f"{cfg.get('max_epochs')} / {cfg.get('max_steps')}" if "max_epochs" in cfg else None,
        ),
        row("learning rate", cfg.get("lr")),
        row("source", f"`{source.adapter_dir.name}`"),
    ]
    names = {
        "status": "status",
        "step": "steps",
        "epoch": "epochs",
        "train_loss": "final train loss",
        "eval_loss": "final eval loss",
        "elapsed_s": "training time (s)",
    }
    metric_rows = [row(names[k], _round(metrics[k])) for k in names if k in metrics]
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: peft",
        "tags: [lora, tuner]",
        "---",
        "",
        f"# {title} (LoRA adapter)",
        "",
        "Fine-tuned with tuner. The tokenizer files carry the chat template used in training.",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        *[r for r in training if r],
        "",
        "## Final metrics",
        "",
    ]
    if any(metric_rows):
        lines += ["| | |", "| --- | --- |", *[r for r in metric_rows if r]]
    else:
        lines.append("No training events were found.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
        "```",
        "",
        f"or `python -m tuner chat {base} --adapter THIS_FOLDER`, and "
        f"`python -m tuner merge {base} THIS_FOLDER OUT_DIR` for a standalone model.",
        "",
    ]
    return "\n".join(lines)


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def export_adapter(
    source: str | Path, out_dir: str | Path, *, force: bool = False, trust_remote_code: bool = False
) -> ExportResult:
    """Write a clean, shareable adapter folder from a run, a checkpoint or an adapter.

    The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (no optimizer or
    trainer state), the tokenizer with the training chat template, ``README.md`` and the run's
    ``config.yaml``. ``PeftModel.from_pretrained(base, out_dir)`` loads it.
    """
    found = locate_adapter(source)
    out_dir = Path(out_dir)
    check_output(out_dir, force, found.adapter_dir, found.run_dir)
    tokenizer, template = _export_tokenizer(found, trust_remote_code)
    metrics = final_metrics(found.run_dir if found.run_dir != found.adapter_dir else None)
    with staging_folder(out_dir, force) as staging:
        shutil.copy2(found.adapter_dir / ADAPTER_CONFIG, staging / ADAPTER_CONFIG)
        _copy_weights(found.adapter_dir, staging)
        tokenizer.save_pretrained(str(staging))
        if found.run_dir is not None and (found.run_dir / CONFIG_FILE).is_file():
            shutil.copy2(found.run_dir / CONFIG_FILE, staging / CONFIG_FILE)
        (staging / "README.md").write_text(model_card(found, template.name, metrics), encoding="utf-8")
    log.info("exported %s -> %s", found.adapter_dir, out_dir)
    return ExportResult(out_dir, found, template.name, metrics)
