"""``python -m tuner train PRESET_OR_YAML [--set key=value ...] [--deepspeed ...] [--resume]``."""

from __future__ import annotations

import os
import sys

from tuner.cli.options import add_set_option
from tuner.config.schema import DEEPSPEED_PRESETS
from tuner.runs.resume import RESUME_SAFE_KEYS


def register(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="train a preset or a YAML config",
        description=(
            "Train a preset (name from list-presets) or a YAML config. Each run writes "
            "work_dirs/<name>/<timestamp>/. Several GPUs: torchrun --nproc-per-node N -m tuner train ..."
        ),
    )
    parser.add_argument("config", help="preset name or path to a .yaml config (e.g. a run's config.yaml)")
    add_set_option(parser, "--set max_steps=20 --set lr=1e-4")
    parser.add_argument(
        "--deepspeed",
        metavar="STAGE_OR_JSON",
        help=f"DeepSpeed ZeRO: {', '.join(DEEPSPEED_PRESETS)} or a config .json",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue a run from its last complete checkpoint: the latest run of this config, the run whose "
            "config.yaml is given, or --run-dir. A run resumes with its own config.yaml; --set may change "
            f"only what is logged, saved and shown and how memory is used ({', '.join(RESUME_SAFE_KEYS)}). "
            "A finished run says so and trains no further step"
        ),
    )
    parser.add_argument("--run-dir", help="with --resume: the run folder to continue (default: the latest)")
    parser.set_defaults(func=run)


def load_train_config(name_or_path: str, overrides: list[str], deepspeed: str | None = None):
    """Find, load, override and validate a config; all problems are reported at once."""
    from tuner.config.files import load_config
    from tuner.config.presets import find_preset
    from tuner.config.validate import validate
    from tuner.core.errors import ConfigError

    path = find_preset(name_or_path)
    # Overrides are applied before validation, so `--set` can repair a preset and every remaining
    # problem is reported in one go.
    overrides = list(overrides) + ([f"deepspeed={deepspeed}"] if deepspeed else [])
    config = load_config(path, overrides=overrides or None)
    problems = validate(config, check_files=True)
    if problems:
        raise ConfigError(problems, source=str(path))
    return config


class ProgressPrinter:
    """Renders training events for a terminal: a line for each phase before training (tokenizer, data,
    model), then a tqdm bar that starts at step 0 and moves on every step, with the latest loss, lr and
    tokens/s beside it; evaluation answers and checkpoints as lines above it.

    The bar exists from the first step on, so tqdm's clock measures the steps themselves: its rate is
    steps over the time they took (the first step includes the "before" evaluation answers).
    """

    def __init__(self, quiet: bool, file=None):
        self.quiet = quiet
        self.file = file or sys.stderr
        self.bar = None

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event["type"]
        if kind == "status" and event.get("status") == "running" and event.get("total_steps"):
            self._open(event)
        elif kind in ("step", "log", "eval") and event.get("total_steps"):
            if self.bar is None:
                self._open(event)
            if kind != "step":
                post = {}
                for key in ("loss", "eval_loss", "lr", "tokens_per_s", "gpu_mem_gib"):
                    if event.get(key) is not None:
                        post[key] = f"{event[key]:.4g}" if isinstance(event[key], float) else event[key]
                self.bar.set_postfix(post, refresh=False)
            moved = event.get("step", 0) - self.bar.n
            if moved > 0:
                self.bar.update(moved)  # update(), not n=: tqdm's rate follows the steps as they come
            else:
                self.bar.refresh()
        elif kind == "sample":
            self._write(f"[step {event.get('step')}] evaluation answers:")
            for item in event.get("samples", []):
                self._write(f"  Q: {item['prompt']}\n  A: {item['answer']}")
        elif (
            kind in ("status", "checkpoint", "error", "warning")
            and event.get("message")
            or kind == "checkpoint"
        ):
            self._write(f"{kind}: {event.get('message') or event.get('path')}")

    def _open(self, event: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            start = event.get("step") or 0  # a resumed run starts at its checkpoint's step
            self.bar = tqdm(
                total=event["total_steps"], initial=start, unit="step", dynamic_ncols=True, file=self.file
            )

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def resume_target(name_or_path: str, run_dir: str | None):
    """The run folder ``--resume`` continues: ``--run-dir``, the folder of a run's config.yaml, or the
    latest run of the preset's name."""
    from pathlib import Path

    from tuner.config.files import read_yaml
    from tuner.config.presets import find_preset
    from tuner.core.errors import TunerError
    from tuner.runs.folders import CONFIG_FILE, STATUS_FILE, latest_run
    from tuner.runs.lock import LOCK_FILE

    if run_dir:
        return Path(run_dir)
    path = find_preset(name_or_path)
    run = path.parent  # a run's own config.yaml names its run, even one killed before its first event
    if path.name == CONFIG_FILE and any((run / n).exists() for n in ("events.jsonl", STATUS_FILE, LOCK_FILE)):
        return run
    name = read_yaml(path).get("name") or path.stem
    found = latest_run(str(name))
    if found is None:
        raise TunerError(f"nothing to resume: no run of {name} in work_dirs/{name}; train without --resume")
    return found


def session_start(run_dir) -> int:
    """The step the latest session of a run started from (0 for a run never resumed)."""
    from tuner.runs.events import read_events

    starts = [e.get("step") or 0 for e in read_events(run_dir) if e.get("status") == "running"]
    return starts[-1] if starts else 0


def _leave_process_group() -> None:
    """Under torchrun, close the process group the Trainer opened (NCCL warns of leaked resources at
    exit otherwise, seen on 2 x H200)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(args) -> int:
    import signal

    from tuner.runs.resume import RunFinished, resume_overrides
    from tuner.train.run import train

    run_dir = None
    if args.resume:
        # The run's own config.yaml, not today's preset: the checkpoint belongs to it (tuner.runs.resume).
        run_dir = resume_target(args.config, args.run_dir)
        extra = [f"deepspeed={args.deepspeed}"] if args.deepspeed else []
        config = resume_overrides(run_dir, list(args.overrides) + extra)
    else:
        config = load_train_config(args.config, args.overrides, args.deepspeed)
    is_main = int(os.environ.get("RANK", "0")) == 0
    printer = ProgressPrinter(quiet=not is_main)
    # SIGTERM (a scheduler, systemd, torchrun) ends the run like Ctrl-C: its status says "interrupted".
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = train(config, resume=args.resume, run_dir=run_dir, listener=printer)
    except RunFinished as done:
        print(done)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        printer.close()
        _leave_process_group()
    if is_main:
        loss = ""
        if result.train_loss is not None:
            # Trainer averages the loss over the steps it ran: after a resume, only this session's.
            start = session_start(result.run_dir) if args.resume else 0
            steps = f"steps {start + 1}-{result.steps}, resumed at {start}" if start else "all steps"
            loss = f", mean train loss {result.train_loss:.4f} ({steps})"
        print(f"{result.status} after {result.steps} steps{loss}; adapter: {result.output_dir}")
        print(f"run folder: {result.run_dir}")
    return 0
