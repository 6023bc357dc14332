"""The resume contract: a run resumes with its own config.yaml.

A checkpoint is the state of one training: its data, model, method, learning-rate schedule and step
count. Continuing it with another data file or another ``max_steps`` would train something that its
config.yaml no longer describes. So resuming reads the run's config.yaml; only the keys below, which
decide what is logged, saved and shown (and how memory is used), never what is learned, may be changed,
and every other change is refused with the names of both. A finished run says it is finished: it is
never trained one step further.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

from tuner.config.files import apply_overrides, config_from_dict, load_config, save_config
from tuner.config.schema import KEYS, TrainConfig
from tuner.core.errors import TunerError
from tuner.runs.folders import ADAPTER_DIR, CONFIG_FILE, last_checkpoint
from tuner.runs.lock import claim, release
from tuner.runs.status import read_status

# Safe to change when resuming: what is logged, saved and shown, and how memory is used. Not the data,
# the model, the method, the schedule (max_steps, max_epochs, lr...) or eval_freq (keep_best picks by it).
RESUME_SAFE_KEYS = (
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "evaluation_inputs",
    "evaluation_freq",
    "evaluation_max_new_tokens",
    "gradient_checkpointing",
    "checkpoint_layers",
    "embedding_on_cpu",
    "report_to",  # where the logged values also go (TensorBoard): not what the run learns
)
IGNORED_KEYS = ("output_dir",)  # a run's config.yaml leaves it empty: the run folder is the output


class RunFinished(TunerError):
    """Resume was asked of a run that has nothing left to train."""


def saved_config(run_dir: Path) -> TrainConfig:
    """The run's own config.yaml (a ConfigError if it is missing or broken)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TunerError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); pick a folder under work_dirs/")
    return load_config(path)


def _safe_list() -> str:
    return ", ".join(k for k in RESUME_SAFE_KEYS if k in KEYS)


def resume_overrides(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The run's config.yaml with ``--set`` overrides, which may only name keys safe to change."""
    config = saved_config(run_dir)
    if not overrides:
        return config
    unsafe = [item.partition("=")[0].strip() for item in overrides]
    # unknown keys are left to apply_overrides, whose message has the did-you-mean
    unsafe = [
        key for key in unsafe if key in KEYS and key not in RESUME_SAFE_KEYS and key not in IGNORED_KEYS
    ]
    if unsafe:
        raise TunerError(
            f"{run_dir}: a run resumes with its own {CONFIG_FILE}; --set {', '.join(unsafe)} would change "
            f"what it learns. On resume only these may change: {_safe_list()}. To train with other "
            f"settings, start a new run: python -m tuner train {Path(run_dir) / CONFIG_FILE} --set ..."
        )
    return apply_overrides(config, overrides)


def check_resumable(run_dir: Path, wanted: TrainConfig) -> list[str]:
    """Refuse to resume ``run_dir`` with a config that differs from its own in a key that is not safe
    to change, or when the run is finished; returns the safe keys ``wanted`` changes (maybe none).

    Raises:
        RunFinished: the run has nothing left to train (its message says where the result is).
        TunerError: ``wanted`` changes keys that are not safe to change; the message names them.
    """
    finished = finished_message(run_dir)
    if finished:
        raise RunFinished(finished)
    saved = saved_config(run_dir)
    changed = [k for k in KEYS if k not in IGNORED_KEYS and getattr(saved, k) != getattr(wanted, k)]
    unsafe = [k for k in changed if k not in RESUME_SAFE_KEYS]
    if unsafe:
        details = "; ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(wanted, k)!r}" for k in unsafe)
        raise TunerError(
            f"{run_dir}: a run resumes with its own {CONFIG_FILE}, and these settings differ from it: "
            f"{details}. On resume only these may change: {_safe_list()}. Resume with the run's own "
            f"settings (python -m tuner train {Path(run_dir) / CONFIG_FILE} --resume, or pick the run in the "
            "app's run history), or start a new run to train with the new ones."
        )
    return changed


def finished_message(run_dir: Path) -> str | None:
    """Why ``run_dir`` has nothing left to train, or None when it can be resumed."""
    run_dir = Path(run_dir)
    adapter = run_dir / ADAPTER_DIR
    status = read_status(run_dir)
    if status.get("status") == "completed" and adapter.is_dir():
        steps = status.get("steps")
        return (
            f"{run_dir}: this run is finished (completed"
            + (f" after {steps} steps" if steps is not None else "")
            + f"); its result is {adapter}. Nothing to resume: to train more, start a new run "
            f"(python -m tuner train {run_dir / CONFIG_FILE} --set max_steps=...)."
        )
    checkpoint = last_checkpoint(run_dir)
    state = {}
    if checkpoint is not None:
        with suppress(OSError, ValueError):
            state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    step, total = state.get("global_step"), state.get("max_steps")
    if isinstance(step, int) and isinstance(total, int) and total > 0 and step >= total:
        where = (
            f"its result is {adapter}"
            if adapter.is_dir() and status.get("status") in ("completed", "stopped")
            else f"the final save did not finish, so take the result from {checkpoint} "
            f"(python -m tuner export {checkpoint} OUT_DIR)"
        )
        return (
            f"{run_dir}: this run is finished: all {total} steps are trained ({checkpoint.name}); {where}. "
            f"Nothing to resume: to train more, start a new run (python -m tuner train "
            f"{run_dir / CONFIG_FILE} --set max_steps=...)."
        )
    return None


def hold_for_resume(run_dir: Path, wanted: TrainConfig) -> None:
    """Claim ``run_dir`` for resuming it with ``wanted`` (:func:`check_resumable`); the safe changes
    ``wanted`` makes are written into its config.yaml, which keeps describing the adapter."""

    claim(run_dir)
    try:
        if check_resumable(run_dir, wanted):
            resolved = {**wanted.to_dict(), "output_dir": None}
            save_config(config_from_dict(resolved), Path(run_dir) / CONFIG_FILE, force=True)
    except BaseException:
        release(run_dir)
        raise
