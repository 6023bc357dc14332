"""What the CLI shows while training: each slow phase as it starts, then a bar from step 0 whose rate is
the steps' own (a bar born at the first log line once read '1/6 [00:00, 6141 step/s]')."""

import io
import re

from tests.tiny import make_config, write_data
from tuner.cli.train import ProgressPrinter
from tuner.runs.events import EventLog, read_events


def test_a_real_run_prints_each_phase_then_a_bar_from_step_0_with_the_steps_rate(workspace, tiny_llama_dir):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    out = io.StringIO()
    printer = ProgressPrinter(quiet=False, file=out)
    result = train(
        make_config(tiny_llama_dir, data, name="progress", max_steps=4, logging_steps=2), listener=printer
    )
    printer.close()
    text = out.getvalue()

    phases = ["loading the tokenizer of", "encoding 12 training samples", "loading the model", "0/4 ["]
    where = [text.find(phase) for phase in phases]
    assert -1 not in where and where == sorted(where), text
    assert "4/4 [" in text[where[-1] :]
    # The rate shown is the steps' own: at most what the steps alone allow (from the 'running' status to
    # the last step's log line; a bar born at the first log line showed thousands of steps/s), and at
    # least what the bar's whole time allows (it also holds the final save).
    events = read_events(result.run_dir)
    began = next(e["time"] for e in events if e.get("status") == "running")
    ended = max(e["time"] for e in events if e["type"] == "log")
    final = text.rstrip().splitlines()[-1].split("\r")[-1]
    shown = re.search(r"\[(\d+):(\d+)<[^,]*, *([\d.]+)(step/s|s/step)", final)
    assert shown, final
    minutes, seconds, value, unit = shown.groups()
    rate = float(value) if unit == "step/s" else 1 / float(value)
    bar_seconds = 60 * int(minutes) + int(seconds) + 1  # shown rounded down to the second
    assert 4 / bar_seconds / 2 < rate < 4 / (ended - began) * 2, (final, ended - began)


def test_step_ticks_reach_the_listener_but_not_the_run_files(tmp_path):
    seen = []
    events = EventLog(tmp_path / "events.jsonl", seen.append)
    events.notify("step", step=1, total_steps=3)
    events.emit("log", step=1, total_steps=3, loss=2.0)
    assert [e["type"] for e in seen] == ["step", "log"]
    assert [e["type"] for e in events.since()] == ["log"]
    assert [e["type"] for e in read_events(tmp_path)] == ["log"]


def test_a_resumed_run_starts_its_bar_at_its_checkpoint():
    out = io.StringIO()
    printer = ProgressPrinter(quiet=False, file=out)
    printer({"type": "status", "status": "running", "step": 20, "total_steps": 40})
    assert printer.bar.n == 20 and "20/40 [" in out.getvalue()
    printer({"type": "step", "step": 21, "total_steps": 40})
    printer({"type": "log", "step": 22, "total_steps": 40, "loss": 1.25})
    assert printer.bar.n == 22 and printer.bar.postfix == "loss=1.25"
    printer.close()
