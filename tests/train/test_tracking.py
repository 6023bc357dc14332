"""What a run reports beyond events.jsonl: TensorBoard event files in the run folder (report_to) and
loss.svg, the loss chart, written at each checkpoint and at the end."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.tiny import make_config, write_data
from tuner.config.files import config_from_dict
from tuner.config.schema import TrainConfig
from tuner.config.validate import validate
from tuner.runs.events import read_events
from tuner.runs.plot import PLOT_FILE, loss_series, write_loss_plot
from tuner.train.tracking import LossPlotCallback, tracking_arguments

SVG = "{http://www.w3.org/2000/svg}"


def dots(svg_path) -> list[str]:
    """The tooltip of every point drawn in a loss.svg: 'train step 2: 2.5000'."""
    root = ET.parse(svg_path).getroot()
    return [circle.find(f"{SVG}title").text for circle in root.iter(f"{SVG}circle")]


def test_report_to_takes_one_tracker_several_or_none_and_names_unknown_ones():
    def problems(value):
        return validate(TrainConfig(data_path="a.jsonl", report_to=value), check_files=False)

    assert problems("tensorboard") == problems(["tensorboard", "wandb"]) == problems("none") == []
    assert problems("tensorbord, wandb") == [
        "report_to: unknown tracker 'tensorbord'; did you mean 'tensorboard'? "
        "(one of none, tensorboard, wandb, mlflow, trackio)"
    ]


def test_a_tracker_that_is_not_installed_is_refused_before_training(workspace, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    write_data(workspace / "train.jsonl")
    config = config_from_dict({"data_path": "train.jsonl", "report_to": "tensorboard, wandb"})
    assert validate(config, check_files=True) == ["report_to: wandb is not installed: pip install wandb"]


def test_the_trainer_gets_the_trackers_but_tensorboard_comes_from_our_callback(tmp_path):
    config = config_from_dict({"name": "medqa", "data_path": "a.jsonl", "report_to": "tensorboard, mlflow"})
    run = tmp_path / "20260101-120000"
    assert tracking_arguments(config, run) == {
        "report_to": ["mlflow"],
        "run_name": "medqa/20260101-120000",
        "project": "medqa",
    }
    assert tracking_arguments(config_from_dict({"data_path": "a.jsonl"}), run)["report_to"] == "none"


def test_the_loss_plot_draws_every_logged_train_and_eval_loss(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(
        "\n".join(
            [
                '{"type": "status", "status": "preparing"}',
                '{"type": "log", "step": 1, "loss": 3.25}',
                '{"type": "log", "step": 2, "loss": 2.5}',
                '{"type": "eval", "step": 2, "eval_loss": 2.75}',
                '{"type": "log", "step": 3, "loss": NaN}',
            ]
        )
        + "\n"
    )
    LossPlotCallback(run).on_save(None, None, None)
    assert dots(run / PLOT_FILE) == ["train step 1: 3.2500", "train step 2: 2.5000", "eval step 2: 2.7500"]


def test_no_plot_before_the_first_loss(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"type": "status", "status": "preparing"}\n')
    assert write_loss_plot(tmp_path) is None
    assert not (tmp_path / PLOT_FILE).exists()


def test_a_run_from_parquet_writes_tensorboard_events_and_its_loss_plot_into_its_folder(
    workspace, tiny_llama_dir
):
    pytest.importorskip("tensorboard")
    from datasets import Dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuner.train.run import train

    jsonl = write_data(workspace / "train.jsonl", repeat=2)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(str(workspace / "train.parquet"))
    config = make_config(tiny_llama_dir, "train.parquet", max_steps=4, save_steps=2, report_to="tensorboard")
    result = train(config)
    assert '"cached": false' in (result.run_dir / "train.log").read_text()  # encoded, then cached
    events = read_events(result.run_dir)
    train_losses = loss_series(events)["train"]
    assert [step for step, _ in train_losses] == [1, 2, 3, 4]

    logs = list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(logs) == 1
    board = EventAccumulator(str(logs[0].parent))
    board.Reload()
    scalars = [(s.step, s.value) for s in board.Scalars("train/loss")]
    assert [step for step, _ in scalars] == [1, 2, 3, 4]
    assert [v for _, v in scalars] == pytest.approx([loss for _, loss in train_losses], rel=1e-4)

    assert dots(result.run_dir / PLOT_FILE) == [f"train step {s}: {loss:.4f}" for s, loss in train_losses]

    # The same data again: tokens and labels come from the encode cache.
    again = train(config)
    assert '"cached": true' in (again.run_dir / "train.log").read_text()
    assert [loss for _, loss in loss_series(read_events(again.run_dir))["train"]] == pytest.approx(
        [loss for _, loss in train_losses]
    )
