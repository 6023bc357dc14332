"""After training: a clean adapter folder to share (export), and a standalone merged model (merge,
in ``tuner.merge``, re-exported here).

Both write into a hidden staging folder beside the output and rename it into place at the end, so
an interrupted export never leaves a folder that looks finished; an existing non-empty output is
replaced only with ``force``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import ModelError, OutputExistsError, TunerError

# re-exported so `from tuner.export import merge_adapter` keeps working (merge.py imports us lazily: no cycle)
from tuner.merge import (  # noqa: F401
    MODELFILE,
    VERIFY_PROMPT,
    MergeResult,
    _refuse_quantized_base,
    check_shard_size,
    merge_adapter,
    merge_dtype,
    nonfinite_parameters,
    verify_merged,
)
from tuner.run_dirs import ADAPTER_DIR, CHECKPOINT_RE, CONFIG_FILE

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LEGACY_WEIGHTS = "adapter_model.bin"
DTYPES = ("auto", "fp16", "bf16", "fp32")


# ------------------------------------------------------------------------------- finding adapters


@dataclass
class AdapterSource:
    """Where an adapter lives and what we know about the run that made it."""

    adapter_dir: Path
    run_dir: Path | None = None  # the run folder (or exported folder) holding config.yaml
    config: dict = field(default_factory=dict)  # the run's resolved training config, {} if unknown

    @property
    def base_model(self) -> str | None:
        """The base model the adapter was trained on: the run's ``model``, else the adapter's own note."""
        if self.config.get("model"):
            return str(self.config["model"])
        return adapter_config(self.adapter_dir).get("base_model_name_or_path")


def adapter_config(folder: Path) -> dict:
    path = Path(folder) / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the adapter config ({exc})") from None


def _has_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and (
        (folder / ADAPTER_WEIGHTS).is_file() or (folder / LEGACY_WEIGHTS).is_file()
    )


def _read_config(folder: Path | None) -> dict:
    if folder is None or not (folder / CONFIG_FILE).is_file():
        return {}
    from tuner.config import read_yaml

    return read_yaml(folder / CONFIG_FILE)


def _last_adapter_checkpoint(run_dir: Path) -> Path | None:
    found = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and _has_adapter(child):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def locate_adapter(path: str | Path) -> AdapterSource:
    """Resolve a run folder, a checkpoint folder or an adapter folder to the adapter to use.

    A run folder gives its final ``adapter/``, else its last checkpoint that holds adapter weights.

    Example:
        >>> locate_adapter("work_dirs/identity/20250101-120000").adapter_dir  # doctest: +SKIP
        PosixPath('work_dirs/identity/20250101-120000/adapter')
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise TunerError(
            f"{path}: no such folder; give a run folder (work_dirs/<name>/<time>), a checkpoint or an adapter"
        )
    if _has_adapter(path):
        # A run's adapter/ or checkpoint-N/ has the run's config.yaml one level up; an exported
        # adapter carries its own copy.
        for holder in (path, path.parent):
            if (holder / CONFIG_FILE).is_file():
                return AdapterSource(path, holder, _read_config(holder))
        return AdapterSource(path)
    if (path / CONFIG_FILE).is_file():
        final = path / ADAPTER_DIR
        if final.is_dir() and not _has_adapter(final) and (final / "config.json").is_file():
            raise TunerError(
                f"{path} is a full fine-tune: {final} is a whole model, not an adapter; "
                "use that folder directly as the model (chat) or copy it"
            )
        chosen = final if _has_adapter(final) else _last_adapter_checkpoint(path)
        if chosen is None:
            raise TunerError(
                f"{path}: this run has no adapter yet (no adapter/ and no complete checkpoint-N/)"
            )
        return AdapterSource(chosen, path, _read_config(path))
    if (path / ADAPTER_CONFIG).is_file():
        raise TunerError(
            f"{path}: adapter_config.json but no {ADAPTER_WEIGHTS}; the checkpoint is incomplete"
        )
    raise TunerError(
        f"{path}: not a run folder, checkpoint or adapter (no {ADAPTER_CONFIG} and no {CONFIG_FILE})"
    )


# -------------------------------------------------------------------------------- atomic folders


def _check_output(out_dir: Path, force: bool, *protected: Path) -> None:
    out = out_dir.resolve()
    for path in protected:
        if path is None:
            continue
        src = Path(path).resolve()
        if out == src or out in src.parents or src in out.parents:
            raise TunerError(
                f"{out_dir}: the output must not be (or be inside) the input {path}; choose another folder"
            )
    if out_dir.exists() and not force and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputExistsError(out_dir, "folder")


@contextmanager
def staging_folder(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``out_dir``; renamed to ``out_dir`` when the block succeeds, else removed."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputExistsError(out_dir, "folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield staging
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``; an existing ``out_dir`` is moved aside first, deleted last."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    out_dir: Path
    source: AdapterSource
    template: str
    metrics: dict


def final_metrics(run_dir: Path | None) -> dict:
    """Last train loss / eval loss / step / epoch / time of a run, from its events.jsonl.

    Example:
        >>> final_metrics(None)
        {}
    """
    if run_dir is None:
        return {}
    from tuner.events import read_events

    metrics: dict = {}
    for event in read_events(run_dir):
        for key in ("step", "total_steps", "epoch", "elapsed_s"):
            if event.get(key) is not None:
                metrics[key] = event[key]
        if event.get("type") == "log" and event.get("loss") is not None:
            metrics["train_loss"] = event["loss"]
        if event.get("eval_loss") is not None:
            metrics["eval_loss"] = event["eval_loss"]
        if event.get("type") == "status" and event.get("status"):
            metrics["status"] = event["status"]
    return metrics


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
    from tuner.chat import TOKENIZER_FILES, _load_tokenizer, resolve_chat_template

    base = source.base_model
    has_own = any((source.adapter_dir / f).is_file() for f in TOKENIZER_FILES)
    if not base and not has_own:
        raise ModelError(
            f"{source.adapter_dir}: cannot tell the base model (no run config.yaml, no base in the adapter config)"
        )
    tokenizer = _load_tokenizer(base or "", source.adapter_dir, trust_remote_code)
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
    _check_output(out_dir, force, found.adapter_dir, found.run_dir)
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
