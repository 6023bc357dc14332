"""What a run reports beyond its events: the experiment trackers of ``report_to`` and the loss plot.

transformers' Trainer talks to the trackers itself; tuner passes it the names, except TensorBoard,
whose callback is built here so that its event files land in ``<run>/tensorboard/`` (one folder per
run, resumed sessions appending to it) instead of a dated ``runs/`` folder: ``tensorboard --logdir
work_dirs`` then shows every run by its name and time. Every run also draws ``loss.svg`` (train and
eval loss, tuner.runs.plot) at each checkpoint and when training ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from tuner.config.schema import tracker_names
from tuner.runs.plot import write_loss_plot

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


def tracking_arguments(config, run_dir: Path) -> dict:
    """TrainingArguments' keys for the trackers: ``report_to`` (TensorBoard is a callback of ours,
    see tensorboard_callback) and the run's name (the preset name and its folder's time stamp)."""
    names = [name for name in tracker_names(config.report_to) if name != "tensorboard"]
    return {
        "report_to": names or "none",
        "run_name": f"{config.name}/{Path(run_dir).name}",
        "project": config.name,  # trackio groups runs by project: one per preset
    }


class LossPlotCallback(TrainerCallback):
    """Redraws ``<run>/loss.svg`` at each checkpoint and when training ends (stopped runs too). The
    events it reads are written by EventCallback, which runs before it (it is added first)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def _draw(self) -> None:
        try:
            write_loss_plot(self.run_dir)
        except OSError as exc:  # a full disk must not end a run over its picture
            log.warning("could not write %s: %s", self.run_dir / "loss.svg", exc)

    def on_save(self, args, state, control, **kwargs):
        self._draw()

    def on_train_end(self, args, state, control, **kwargs):
        self._draw()


def tensorboard_callback(run_dir: Path):
    """transformers' TensorBoard callback writing into ``<run>/tensorboard/``."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(Path(run_dir) / TENSORBOARD_DIR)  # read at train begin, on rank 0 only
    return callback


def tracking_callbacks(config, run_dir: Path, main_process: bool) -> list:
    """The callbacks of this module a run adds after its EventCallback."""
    callbacks = [LossPlotCallback(run_dir)] if main_process else []
    if "tensorboard" in tracker_names(config.report_to):
        callbacks.append(tensorboard_callback(run_dir))
    return callbacks
