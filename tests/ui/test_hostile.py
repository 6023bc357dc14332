"""The app as a remote user behind --listen --auth sees it: every path it is given stays in the
workspace, the Data tab writes only data files, Overwrite is off by default, uploads are bounded."""

from __future__ import annotations

import json

import pytest

from tests.tiny import write_data
from tuner.config.files import config_from_dict
from tuner.core.errors import TunerError
from tuner.ui.form import to_form


def _form(**settings):
    base = {"name": "x", "model": "default", "data_path": "d.jsonl", "max_steps": 2}
    return to_form(config_from_dict({**base, **settings}))


@pytest.mark.parametrize(
    "key, value",
    [
        ("data_path", "OUTSIDE/d.jsonl"),
        ("eval_data_path", "OUTSIDE/d.jsonl"),
        ("output_dir", "OUTSIDE/run"),
        ("model", "OUTSIDE"),
        ("deepspeed", "OUTSIDE/ds.json"),
    ],
)
def test_every_train_form_path_stays_in_the_workspace(workspace, tmp_path_factory, key, value):
    from tuner.ui import train_tab

    outside = tmp_path_factory.mktemp("outside")
    write_data(outside / "d.jsonl")
    (outside / "ds.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto"}))
    (outside / "config.json").write_text("{}")
    write_data(workspace / "d.jsonl")
    values = _form(**{key: value.replace("OUTSIDE", str(outside))})
    with pytest.raises(TunerError, match="outside the workspace"):
        train_tab.start(*values, "en")
    with pytest.raises(TunerError, match="outside the workspace"):
        train_tab.resume(None, *values, "en")
    assert not (outside / "run").exists() and not (workspace / "work_dirs").exists()


def test_resuming_a_run_whose_config_points_outside_is_refused(workspace, tmp_path_factory):
    from tuner.ui import train_tab

    outside = tmp_path_factory.mktemp("outside")
    write_data(outside / "d.jsonl")
    run = workspace / "work_dirs" / "x" / "1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: x\ndata_path: {outside / 'd.jsonl'}\n")
    with pytest.raises(TunerError, match="outside the workspace"):
        train_tab.resume("work_dirs/x/1", *_form(), "en")


@pytest.mark.parametrize(
    "target, why",
    [
        ("tuner_app.py", "must be a .jsonl"),
        ("models/m/tokenizer.json", "holds runs, models or logs"),
        ("work_dirs/x/1/eval.jsonl", "holds runs, models or logs"),
        ("mymodel/extra.jsonl", "holds runs, models or logs"),  # a folder with config.json
        ("settings.json", "never replaced"),  # an existing .json
    ],
)
def test_the_data_tab_never_overwrites_files_that_are_not_data(workspace, target, why):
    from tuner.ui import data_tab

    (workspace / "qa.csv").write_text("Question,Answer\nHi?,Hello\n")
    (workspace / "mymodel").mkdir()
    (workspace / "mymodel" / "config.json").write_text("{}")
    (workspace / "settings.json").write_text('{"keep": true}')
    before = {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()}
    with pytest.raises(TunerError, match=why):
        data_tab.convert_file("qa.csv", None, "Question", "Answer", "(none)", "", target, True)
    with pytest.raises(TunerError, match=why):
        data_tab.build_identity("Tutu", None, ["en"], 0, target, True)
    assert {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()} == before


def test_split_refuses_to_write_its_parts_into_a_run_folder(workspace):
    from tuner.ui import data_tab

    run = workspace / "work_dirs" / "x" / "1"
    run.mkdir(parents=True)
    write_data(run / "eval_samples.jsonl")
    with pytest.raises(TunerError, match="holds runs, models or logs"):
        data_tab.split("work_dirs/x/1/eval_samples.jsonl", 0.5, 0, True)
    assert sorted(p.name for p in run.iterdir()) == ["eval_samples.jsonl"]


def test_overwrite_checkboxes_start_off(workspace):
    from tuner.ui.app import build_app
    from tuner.ui.i18n import tr

    demo = build_app("en")
    boxes = [b for b in demo.blocks.values() if getattr(b, "label", None) == tr("en", "data.overwrite")]
    assert len(boxes) >= 2 and all(b.value is False for b in boxes)


def test_uploads_are_bounded_and_hashed_in_blocks(workspace, tmp_path_factory, monkeypatch):
    from tuner.ui import common
    from tuner.ui.launch import build_parser, launch_options

    big = tmp_path_factory.mktemp("gradio-tmp") / "big.jsonl"
    big.write_bytes(b"{}\n" * 1000)
    monkeypatch.setattr(common, "MAX_UPLOAD_BYTES", 2000)
    with pytest.raises(TunerError, match="more than the .* an upload may be"):
        common.save_upload(big)
    assert not (workspace / "uploads" / "big.jsonl").exists()
    assert launch_options(build_parser().parse_args([]))["max_file_size"] > 0  # gradio refuses first


def test_an_upload_on_a_full_disk_leaves_no_partial_copy(workspace, tmp_path_factory, monkeypatch):
    import errno
    import os

    from tuner.ui.common import error_text, save_upload

    source = tmp_path_factory.mktemp("gradio-tmp") / "qa.csv"
    source.write_text("Question,Answer\nHi?,Hello\n" * 100)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as failed:
        save_upload(source)
    assert "the disk is full" in error_text(failed.value, "upload")  # the status box's words
    assert list((workspace / "uploads").iterdir()) == []
