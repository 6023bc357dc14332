"""TrainConfig: the key contract, safe YAML loading, --set overrides, and validation that lists every problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuner.config.files import apply_overrides, config_from_dict, load_config, save_config
from tuner.config.schema import KEYS, TrainConfig
from tuner.config.validate import validate
from tuner.core.errors import ConfigError, OutputExistsError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def contract_keys() -> list[str]:
    """The keys of the "Training config" table in docs/ARCHITECTURE.md, in order."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Training config", 1)[1].split("\n## ", 1)[0]
    keys = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("key", "---"):
            keys += [k.strip() for k in cells[0].split("/")]
    return keys


def test_fields_are_exactly_the_documented_keys():
    assert contract_keys() == KEYS


def test_defaults_follow_the_contract():
    config = TrainConfig()
    assert (config.model, config.template, config.method, config.quantization) == (
        "default",
        None,
        "lora",
        "none",
    )
    assert (config.max_length, config.accumulative_counts, config.lr, config.lora_targets) == (
        2048,
        16,
        2e-4,
        "all-linear",
    )
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (64, 16, 0.1)
    assert TrainConfig(method="qlora").quantization == "4bit"


def test_name_defaults_to_file_stem_and_yaml_floats_without_dot_work(workspace):
    path = write(workspace / "my_run.yaml", "data_path: a.jsonl\nlr: 2e-4\nmax_epochs: 2\n")
    config = load_config(path)
    assert config.name == "my_run"
    assert config.lr == 2e-4 and isinstance(config.lr, float)  # YAML 1.1 reads 2e-4 as a string
    assert config.max_epochs == 2.0


def test_all_problems_are_reported_at_once(workspace):
    path = write(
        workspace / "bad.yaml",
        "\n".join(
            [
                "data_path: a.jsonl",
                "max_lenght: 512",
                "lr: -1",
                "batch_size: four",
                "lora_dropout: 1.5",
                "test_split: 0.7",
                "method: full",
                "quantization: 4bit",
                "deepspeed: deepspeed_zero2",
                "precision: bf32",
                "max_length: 8",
            ]
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    joined = "\n".join(problems)
    assert len(problems) >= 9, joined
    assert "max_lenght: unknown key; did you mean 'max_length'?" in problems
    assert "batch_size: expected int, got str 'four'" in problems
    assert re.search(r"^lr: must be > 0.*got -1\.0$", joined, re.M)
    assert re.search(r"^lora_dropout: must be in \[0, 1\).*got 1\.5$", joined, re.M)
    assert re.search(r"^test_split: must be in \[0, 0\.5\]", joined, re.M)
    assert re.search(r"^quantization: '4bit' with method full is refused", joined, re.M)
    assert re.search(r"^deepspeed: .*did you mean 'zero2'\?", joined, re.M)
    assert re.search(r"^precision: 'bf32' is not one of auto, bf16, fp16, fp32; did you mean", joined, re.M)
    assert re.search(r"^max_length: must be >= 16", joined, re.M)
    assert str(path) in str(info.value) and f"{len(problems)} problems" in str(info.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"method": "qlora", "quantization": "8bit"}, "quantization: method qlora needs quantization 4bit"),
        ({"method": "qlora", "quantization": "none"}, "quantization: method qlora needs quantization 4bit"),
        ({"tokens_per_step": 256, "max_length": 512}, "tokens_per_step: 256 is less than max_length 512"),
        ({"keep_best": True}, "keep_best: needs eval data"),
        ({"early_stopping_patience": 2}, "early_stopping_patience: needs eval data"),
        (
            {"eval_data_path": "e.jsonl", "test_split": 0.1},
            "test_split: set either eval_data_path or test_split",
        ),
        ({"task": "pretrain", "data_format": "alpaca"}, "data_format: task pretrain reads plain text"),
        ({"data_format": "pretrain"}, "data_format: pretrain data has no conversations"),
        ({"data_path": ""}, "data_path: required"),
        ({"lora_targets": []}, "lora_targets: module names must not be empty"),
        ({"max_steps": 0}, "max_steps: must be > 0, or -1"),
        (
            {"optimizer": "adamw_torh"},
            "optimizer: unknown optimizer 'adamw_torh'; did you mean 'adamw_torch'?",
        ),
        ({"name": "a/b"}, "name: must not contain /"),
        ({"eval_freq": 0}, "eval_freq: must be >= 1"),
    ],
)
def test_inconsistent_settings_are_refused(settings, expected):
    data = {"data_path": "a.jsonl", **settings}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_consistent_settings_pass():
    ok = [
        {"tokens_per_step": 256, "max_length": 512, "pack_to_max_length": False},
        {"tokens_per_step": 4096, "max_length": 2048},
        {"keep_best": True, "test_split": 0.1, "early_stopping_patience": 3},
        {"method": "lora", "quantization": "8bit"},
        {"task": "pretrain", "data_format": "pretrain", "template": None},
        {"data_format": "oasst1"},  # an alias the data readers accept
        {"deepspeed": "zero3_offload"},
        {"deepspeed": "my_ds.json"},
        {"max_steps": 50, "max_epochs": 0},  # max_steps wins, so max_epochs is not checked
        {"lora_targets": "q_proj, v_proj"},  # a comma list becomes a list
    ]
    for settings in ok:
        assert validate(config_from_dict({"data_path": "a.jsonl", **settings}), check_files=False) == []
    assert config_from_dict({"data_path": "a", "lora_targets": "q_proj, v_proj"}).lora_targets == [
        "q_proj",
        "v_proj",
    ]


def test_unknown_template_is_reported_with_a_suggestion():
    templates = pytest.importorskip("tuner.data.templates")
    assert "internlm2_chat" in templates.list_templates()
    problems = validate(TrainConfig(data_path="a.jsonl", template="internlm2_caht"), check_files=False)
    assert len(problems) == 1
    assert problems[0].startswith(
        "template: unknown template 'internlm2_caht'; did you mean 'internlm2_chat'?"
    )


def test_missing_files_are_reported_and_relative_paths_use_the_workspace(workspace, monkeypatch):
    from tuner.config import validate as validate_module

    monkeypatch.setattr(validate_module, "deepspeed_installed", lambda: True)  # files only, installed or not
    config = TrainConfig(data_path="data/train.jsonl", eval_data_path="data/test.jsonl", deepspeed="ds.json")
    assert validate(config, check_files=False) == []
    problems = validate(config, check_files=True)
    assert problems == [
        f"data_path: file not found: {workspace / 'data/train.jsonl'}",
        f"eval_data_path: file not found: {workspace / 'data/test.jsonl'}",
        f"deepspeed: file not found: {workspace / 'ds.json'}",
    ]
    (workspace / "data").mkdir()
    for name in ("data/train.jsonl", "data/test.jsonl", "ds.json"):
        (workspace / name).write_text("{}\n")
    assert validate(config, check_files=True) == []


def test_wrong_types_built_directly_are_reported_not_raised():
    config = TrainConfig(
        data_path="a.jsonl", max_length="512", gradient_checkpointing="yes", lora_targets=[1]
    )
    problems = validate(config, check_files=False)
    assert "max_length: expected int, got str '512'" in problems
    assert "gradient_checkpointing: expected bool (true/false), got str 'yes'" in problems
    assert any(p.startswith("lora_targets: expected list of str or str") for p in problems)


def test_overrides_parse_types():
    data = apply_overrides(
        {"data_path": "a.jsonl"},
        [
            "lr=1e-4",
            "keep_best=true",
            "max_steps=50",
            "max_epochs=1",
            "evaluation_inputs=[Who are you?, 你好]",
            "template=null",
            "name=2024",
            "system=yes",
            "lora_targets=q_proj,v_proj",
            "test_split=0.1",
        ],
    )
    assert data["lr"] == 1e-4 and isinstance(data["lr"], float)
    assert data["keep_best"] is True
    assert data["max_steps"] == 50 and data["max_epochs"] == 1.0
    assert data["evaluation_inputs"] == ["Who are you?", "你好"]
    assert data["template"] is None
    assert data["name"] == "2024" and data["system"] == "yes"  # str keys keep what was typed
    assert data["lora_targets"] == ["q_proj", "v_proj"]
    config = config_from_dict(data)
    assert config.keep_best and config.test_split == 0.1


def test_overrides_on_a_config_revalidate_and_report_everything():
    config = TrainConfig(data_path="a.jsonl")
    assert apply_overrides(config, ["lr=3e-4"]).lr == 3e-4
    assert config.lr == 2e-4  # a new object; the original is unchanged
    with pytest.raises(ConfigError) as info:
        apply_overrides(config, ["max_lenght=512", "lr=0", "batch_size=x"])
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0] == "max_lenght: unknown key; did you mean 'max_length'?"
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(config, ["lr"])


def test_changing_method_moves_quantization_to_the_new_default():
    qlora = TrainConfig(data_path="a.jsonl", method="qlora")
    assert apply_overrides(qlora, ["method=lora"]).quantization == "none"
    assert apply_overrides(qlora, ["method=full"]).quantization == "none"
    assert apply_overrides(TrainConfig(data_path="a.jsonl"), ["method=qlora"]).quantization == "4bit"
    eight = TrainConfig(data_path="a.jsonl", quantization="8bit")
    assert apply_overrides(eight, ["method=lora", "quantization=8bit"]).quantization == "8bit"


def test_load_config_applies_overrides_before_validating(workspace):
    path = write(workspace / "c.yaml", "data_path: a.jsonl\nlr: 5\n")
    assert load_config(path, overrides=["lr=1e-4"]).lr == 1e-4


def test_save_load_round_trip_is_identical(workspace):
    config = TrainConfig(
        name="round",
        model="Qwen/Qwen2.5-0.5B-Instruct",
        template="qwen_chat",
        method="qlora",
        data_path="data/train.jsonl",
        eval_data_path="data/test.jsonl",
        system='你是一个医生。 Say "hello": yes # not a comment\nsecond line',
        max_length=1024,
        tokens_per_step=4096,
        lr=1e-5,
        max_epochs=1.5,
        lora_targets=["q_proj", "v_proj"],
        evaluation_inputs=["Who are you?", "- a dash", "null", "1e-4", "yes"],
        keep_best=True,
        deepspeed="zero2",
    )
    header = "A header.\nRun: python -m tuner train x"
    path = save_config(config, workspace / "out" / "config.yaml", header=header)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# A header.\n# Run: python -m tuner train x\n")
    assert text.index("model:") < text.index("data_path:") < text.index("lr:") < text.index("save_steps:")
    again = load_config(path)
    assert again == config
    assert again.to_dict() == config.to_dict()
    # Saving the loaded copy gives the same bytes: the file is a fixed point.
    assert save_config(again, workspace / "again.yaml", header=header).read_text(encoding="utf-8") == text


def test_save_never_overwrites_without_force(workspace):
    path = write(workspace / "config.yaml", "precious: true\n")
    with pytest.raises(OutputExistsError):
        save_config(TrainConfig(data_path="a"), path)
    assert path.read_text() == "precious: true\n"
    save_config(TrainConfig(data_path="a"), path, force=True)
    assert load_config(path).data_path == "a"


def test_python_tags_are_refused_and_never_run(workspace):
    marker = workspace / "pwned"
    path = write(
        workspace / "evil.yaml",
        f'data_path: a.jsonl\nname: !!python/object/apply:os.system ["touch {marker}"]\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert not marker.exists()
    assert "refused" in str(info.value) and "python/object/apply:os.system" in str(info.value)
    assert "line 2" in str(info.value)


def test_unreadable_files_give_config_errors(workspace):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(workspace / "missing.yaml")
    with pytest.raises(ConfigError, match=r"line 2, column \d+: invalid YAML"):
        load_config(write(workspace / "broken.yaml", "data_path: a\n  lr: 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(workspace / "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match="data_path: required"):
        load_config(write(workspace / "empty.yaml", ""))
