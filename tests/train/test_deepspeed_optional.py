"""DeepSpeed is optional: a config that asks for it without it installed says what to install, and a run
without it never loads it (accelerate used to import it on every save: ~1.7 s and a warning)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.tiny import write_data
from tuner.config import validate as validate_module
from tuner.config.schema import TrainConfig


def test_a_deepspeed_config_without_deepspeed_names_the_install_line(workspace, monkeypatch):
    monkeypatch.setattr(validate_module, "deepspeed_installed", lambda: False)
    write_data(workspace / "d.jsonl")
    config = TrainConfig(data_path="d.jsonl", deepspeed="zero2")
    assert validate_module.validate(config, check_files=True) == [
        "deepspeed: zero2 needs DeepSpeed, which is not installed: pip install deepspeed "
        "(or: bash scripts/install.sh --deepspeed); or train without it (deepspeed: null, no --deepspeed)"
    ]
    assert validate_module.validate(TrainConfig(data_path="d.jsonl"), check_files=True) == []


def test_train_with_deepspeed_missing_stops_before_loading_anything(workspace, monkeypatch, capsys):
    from tuner.__main__ import main

    monkeypatch.setattr(validate_module, "deepspeed_installed", lambda: False)
    (workspace / "data").mkdir()
    write_data(workspace / "data" / "identity.jsonl")
    code = main(["train", "smollm2_135m_instruct_lora_identity_256_e3", "--deepspeed", "zero3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "deepspeed: zero3 needs DeepSpeed, which is not installed: pip install deepspeed" in err
    assert not (workspace / "work_dirs").exists()  # refused before a run folder was made


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed here")
def test_loading_and_saving_a_model_without_deepspeed_does_not_import_it(tiny_llama_dir, tmp_path):
    # A fresh process: this one may have imported deepspeed for another test already.
    code = (
        "import sys; from tuner.models.load import load_model; "
        f"loaded = load_model({str(tiny_llama_dir)!r}, device='cpu'); "
        f"loaded.model.save_pretrained({str(tmp_path / 'saved')!r}); "
        "import accelerate.utils.other as other; "
        "print('deepspeed' in sys.modules, other.is_deepspeed_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
    assert (tmp_path / "saved" / "config.json").is_file()


def test_once_deepspeed_is_loaded_accelerate_unwraps_its_engines_again():
    pytest.importorskip("accelerate")
    import accelerate.utils.other as other

    from tuner.models.lazy_deepspeed import load_deepspeed_only_when_used

    load_deepspeed_only_when_used()
    sys.modules.setdefault("deepspeed", None)  # as if a --deepspeed run had imported it
    try:
        assert other.is_deepspeed_available() is True
    finally:
        if sys.modules.get("deepspeed", 0) is None:
            del sys.modules["deepspeed"]
