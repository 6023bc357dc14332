from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tuner.config.files import read_yaml
from tuner.core.errors import ModelError, TunerError
from tuner.runs.events import read_events
from tuner.runs.folders import ADAPTER_DIR, CHECKPOINT_RE, CONFIG_FILE

ADAPTER_CONFIG = "adapter_config.json"


ADAPTER_WEIGHTS = "adapter_model.safetensors"


LEGACY_WEIGHTS = "adapter_model.bin"


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


def final_metrics(run_dir: Path | None) -> dict:
    """Last train loss / eval loss / step / epoch / time of a run, from its events.jsonl.

    Example:
        >>> final_metrics(None)
        {}
    """
    if run_dir is None:
        return {}

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
