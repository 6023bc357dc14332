"""Shipped presets load and validate; list / find / copy / save presets; the preset verbs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuner.__main__ import main
from tuner.config.files import load_config
from tuner.config.presets import (
    BUILTIN_DIR,
    NAME_PATTERN,
    copy_preset,
    find_preset,
    list_presets,
    read_header,
    save_preset,
)
from tuner.config.schema import TrainConfig
from tuner.config.validate import validate
from tuner.core.errors import OutputExistsError, TunerError

SHIPPED = sorted(BUILTIN_DIR.glob("*.yaml"))
EMBEDDED = [p for p in SHIPPED if p.stem.startswith("smollm2_135m_instruct_")]
REQUIRED = [
    "internlm_chat_7b_qlora_oasst1_512_e3",
    "internlm2_chat_7b_qlora_oasst1_512_e3",
    "internlm2_chat_1_8b_qlora_oasst1_512_e3",
    "internlm2_chat_7b_qlora_identity_512_e3",
    "internlm2_chat_7b_qlora_msagent_react_2048_e3",
    "internlm2_7b_qlora_pretrain_text_2048_e1",
    "qwen2_5_7b_instruct_qlora_oasst1_2048_e3",
    "smollm2_135m_instruct_lora_identity_256_e3",
    "smollm2_135m_instruct_lora_medqa_512_e1",
]


def model_slug(model: str) -> str:
    """Hub id -> the model part of a preset name, without underscores (Llama-3.1 -> llama31)."""
    if model == "default":
        return "smollm2135minstruct"
    return re.sub(r"[^a-z0-9]", "", model.split("/")[-1].lower())


def test_the_required_presets_ship():
    assert {p.stem for p in SHIPPED} >= set(REQUIRED)
    assert len(EMBEDDED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_preset_loads_validates_and_is_named_by_its_settings(path):
    config = load_config(path)
    assert config.name == path.stem  # presets carry no name key: the file name is the name
    assert validate(config, check_files=False) == []
    parts = NAME_PATTERN.match(path.stem)
    assert parts, f"{path.stem} does not read {{model}}_{{method}}_{{dataset}}_{{max_length}}_e{{epochs}}"
    assert parts["model"].replace("_", "") == model_slug(config.model)
    assert parts["method"] == config.method
    assert int(parts["max_length"]) == config.max_length
    assert float(parts["epochs"]) == config.max_epochs
    assert not Path(config.data_path).is_absolute()  # resolved against the user's workspace
    if config.model.startswith("internlm/"):
        assert config.trust_remote_code


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_preset_header_says_purpose_memory_data_and_command(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    header = read_header(text)
    assert len(header.split("\n\n")[0]) > 40  # a description, not just a title
    assert re.search(r"^GPU memory: \S.*\d", header, re.M)
    assert re.search(r"^Data: \S", header, re.M)
    assert f"\nRun: python -m tuner train {path.stem}" in header
    config = load_config(path)
    assert config.data_path in header or config.data_path.split("/")[0] in header
    if config.trust_remote_code:
        assert "trust_remote_code" in header and "accept" in header


@pytest.mark.parametrize("path", EMBEDDED, ids=[p.stem for p in EMBEDDED])
def test_embedded_presets_are_cpu_sized(path):
    config = load_config(path)
    assert (config.model, config.method, config.quantization, config.precision) == (
        "default",
        "lora",
        "none",
        "auto",
    )
    assert not config.gradient_checkpointing and config.lora_r <= 16 and config.max_length <= 512
    assert config.evaluation_inputs and config.evaluation_freq <= 20
    if "identity" in path.stem:
        assert 40 <= config.max_steps <= 60
        assert "Who are you?" in config.evaluation_inputs


def test_check_files_reports_the_missing_data_file(workspace):
    config = load_config(find_preset("smollm2_135m_instruct_lora_identity_256_e3"))
    assert validate(config, check_files=True) == [
        f"data_path: file not found: {workspace / 'data/identity.jsonl'}"
    ]


def test_list_presets_reads_headers_and_filters():
    everything = list_presets()
    assert [p.name for p in everything] == sorted(p.stem for p in SHIPPED)
    info = {p.name: p for p in everything}["internlm2_chat_7b_qlora_oasst1_512_e3"]
    assert (info.model, info.method, info.dataset, info.max_length, info.epochs) == (
        "internlm/internlm2-chat-7b",
        "qlora",
        "oasst1",
        512,
        3,
    )
    assert "GiB" in info.gpu_memory and info.command.endswith("train internlm2_chat_7b_qlora_oasst1_512_e3")
    assert info.description.startswith("InternLM2-Chat-7B") and info.source == "builtin" and not info.error
    assert {p.name for p in list_presets("INTERNLM2_CHAT_7B")} == {
        p.stem for p in SHIPPED if p.stem.startswith("internlm2_chat_7b")
    }
    assert [p.name for p in list_presets("smollm2*identity*")] == [
        "smollm2_135m_instruct_lora_identity_256_e3"
    ]
    assert list_presets("no-such-thing") == []


def test_find_preset_by_name_or_path_and_suggests_close_names(workspace):
    assert find_preset("qwen2_5_7b_instruct_qlora_oasst1_2048_e3") == BUILTIN_DIR / (
        "qwen2_5_7b_instruct_qlora_oasst1_2048_e3.yaml"
    )
    own = workspace / "mine.yaml"
    own.write_text("data_path: a.jsonl\n")
    assert find_preset("mine.yaml").resolve() == own.resolve()
    with pytest.raises(TunerError) as info:
        find_preset("internlm2_chat_7b_qlora_oasst1_512_e4")
    assert "did you mean: internlm2_chat_7b_qlora_oasst1_512_e3" in str(info.value)
    assert "list-presets" in str(info.value)
    with pytest.raises(TunerError, match="no such config file"):
        find_preset("nothing/here.yaml")


def test_workspace_presets_are_listed_and_win(workspace):
    (workspace / "presets").mkdir()
    shadow = workspace / "presets" / "smollm2_135m_instruct_lora_identity_256_e3.yaml"
    shadow.write_text("# Mine.\n\nmodel: default\ndata_path: a.jsonl\n")
    (workspace / "presets" / "broken.yaml").write_text("data_path: [\n")
    assert find_preset(shadow.stem) == shadow
    listed = {p.name: p for p in list_presets()}
    assert listed[shadow.stem].source == "workspace" and listed[shadow.stem].description == "Mine."
    assert "invalid YAML" in listed["broken"].error  # listed, not fatal


def test_copy_preset_writes_an_editable_copy_and_never_overwrites(workspace):
    name = "smollm2_135m_instruct_lora_identity_256_e3"
    dest = copy_preset(name, workspace)
    assert dest == workspace / f"{name}_copy.yaml"
    original = find_preset(name).read_text(encoding="utf-8")
    copied = dest.read_text(encoding="utf-8")
    assert copied == original.replace(f"python -m tuner train {name}", f"python -m tuner train {dest}")
    config = load_config(dest)
    assert config.name == f"{name}_copy"
    assert config.to_dict() | {"name": name} == load_config(find_preset(name)).to_dict()

    dest.write_text(copied + "# my edits\n", encoding="utf-8")
    with pytest.raises(OutputExistsError, match="never overwrites"):
        copy_preset(name, workspace)
    assert dest.read_text(encoding="utf-8") == copied + "# my edits\n"


def test_save_preset_keeps_a_header_and_is_found_by_name(workspace):
    config = TrainConfig(name="ignored", data_path="data/a.jsonl", lr=1e-4, max_length=512)
    path = save_preset(config, "my_preset")
    assert path == workspace / "presets" / "my_preset.yaml"
    text = path.read_text(encoding="utf-8")
    assert (
        text.startswith("# default, lora, sft, 512 tokens.")
        and "Run: python -m tuner train my_preset" in text
    )
    assert not re.search(r"^name:", text, re.M)
    loaded = load_config(find_preset("my_preset"))
    assert loaded.name == "my_preset" and loaded.lr == 1e-4
    assert [p.name for p in list_presets("my_preset")] == ["my_preset"]

    with pytest.raises(OutputExistsError):
        save_preset(config, "my_preset")
    assert path.read_text(encoding="utf-8") == text
    path.write_text("# My own words.\n# Run: python -m tuner train my_preset\n" + text.split("\n\n", 1)[1])
    save_preset(TrainConfig(data_path="data/b.jsonl"), path, force=True)
    assert read_header(path.read_text()) == "My own words.\nRun: python -m tuner train my_preset"
    assert load_config(path).data_path == "data/b.jsonl"


def test_cli_list_copy_and_validate(workspace, capsys):
    assert main(["list-presets", "-p", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "METHOD", "MODEL", "GPU", "MEMORY"]
    assert "smollm2_135m_instruct_lora_identity_256_e3  lora" in out and "internlm" not in out
    assert main(["list-presets", "-p", "zzz"]) == 1

    name = "smollm2_135m_instruct_lora_identity_256_e3"
    assert main(["copy-preset", name, "."]) == 0
    copy = Path(f"{name}_copy.yaml")
    assert copy.is_file() and f"wrote {copy}" in capsys.readouterr().out
    before = copy.read_bytes()
    assert main(["copy-preset", name, "."]) == 2
    assert "already exists" in capsys.readouterr().err
    assert copy.read_bytes() == before

    assert main(["validate-config", str(copy), "--no-check-files"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {copy}")
    assert main(["validate-config", str(copy), "--set", "max_lenght=64", "--set", "lr=-1"]) == 1
    err = capsys.readouterr().err
    assert "3 problems:" in err
    assert (
        "did you mean 'max_length'" in err and "lr: must be > 0" in err and "data_path: file not found" in err
    )


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_header_memory_is_what_tuner_estimate_says(path, monkeypatch):
    # The header's figures come from `tuner estimate NAME --gpu-gib N` (the presets' models' sizes are
    # known offline: tuner.models.published). After a change to the estimate, rewrite them with
    # `python -m tests.config.preset_memory --write`.
    from tests.config.preset_memory import LINE, memory_phrase

    for key in [k for k in __import__("os").environ if k.startswith("TUNER_") and k != "TUNER_DEFAULT_MODEL_DIR"]:
        monkeypatch.delenv(key)  # the shipped figures are for the default speed settings
    found = LINE.search(path.read_text(encoding="utf-8"))
    assert found, f"{path.name}: its '# GPU memory:' line must state the estimate's figures"
    assert found["phrase"] == memory_phrase(path.stem), "run: python -m tests.config.preset_memory --write"


def test_a_reader_that_goes_away_gets_no_traceback():
    # `tuner list-presets | head -1`: the pipe closes before tuner writes; it exits quietly
    import subprocess
    import sys

    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "tuner", "list-presets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    reader_gone.stdout.close()  # the only read end, closed before the child has imported anything
    err = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=120) == 141 and "Traceback" not in err, err
