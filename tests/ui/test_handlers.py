"""UI handlers called directly: no server, no browser."""

from __future__ import annotations

import re

import pytest

from tuner.config.files import config_from_dict
from tuner.config.schema import KEYS, TrainConfig
from tuner.core import system
from tuner.core.errors import TunerError
from tuner.models import shape as model_shapes

gr = pytest.importorskip("gradio")


# ------------------------------------------------------------------------------------- i18n


def test_every_language_has_the_same_keys():
    from tuner.ui.text_en import STRINGS as EN
    from tuner.ui.text_zh import STRINGS as ZH

    assert set(EN) == set(ZH)
    for key, text in EN.items():  # the same {placeholders} in both languages
        assert sorted(_fields(text)) == sorted(_fields(ZH[key])), key


def _fields(text: str) -> list[str]:
    import string

    return [f for _, f, _, _ in string.Formatter().parse(text) if f]


def test_tr_falls_back_and_formats():
    from tuner.ui.i18n import norm_lang, tr

    assert tr("zh", "train.started", run="x") == "已开始：x"
    assert tr("fr", "train.started", run="x") == "Started: x"
    assert tr("en", "cfg.lr") == "lr"  # config keys keep their YAML names
    assert norm_lang("zh-CN") == "zh"


def test_relabel_updates_only_for_another_language():
    from tuner.ui.i18n import Texts

    T = Texts("en")
    with gr.Blocks():
        T.value(gr.Button, "train.start")
        T.make(gr.Textbox, "data.system")
    assert T.relabel("en") == [gr.skip(), gr.skip()]
    zh = T.relabel("zh")
    assert zh[0]["value"] == "开始训练"
    assert zh[1]["label"] == "所有行共用的系统提示" and "placeholder" in zh[1]


# ------------------------------------------------------------------------------------- common


def test_paths_stay_inside_the_workspace(workspace):
    from tuner.ui.common import model_ref, ws_path

    (workspace / "a.jsonl").write_text("{}\n")
    assert ws_path("a.jsonl") == workspace / "a.jsonl"
    with pytest.raises(TunerError, match="outside the workspace"):
        ws_path("../../etc/passwd")
    with pytest.raises(TunerError, match="outside the workspace"):
        model_ref("/etc")
    assert model_ref("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert model_ref("") == "default"


def test_uploads_are_copied_into_the_workspace(workspace, tmp_path_factory):
    from tuner.ui.common import save_upload

    outside = tmp_path_factory.mktemp("gradio-tmp") / "qa.csv"
    outside.write_text("Question,Answer\nHi?,Hello\n")
    first = save_upload(outside)
    assert first == workspace / "uploads" / "qa.csv"
    assert save_upload(outside) == first  # same content: reused
    outside.write_text("Question,Answer\nHi?,Bye\n")
    assert save_upload(outside).name == "qa-2.csv"
    with pytest.raises(TunerError, match="unsupported"):
        save_upload(outside.with_suffix(".exe"))


def test_guard_turns_errors_into_status_text_and_a_toast(workspace):
    from tuner.ui.common import guard

    def bad_input(x):
        raise TunerError("row 3: empty answer")

    def bug(x):
        raise ZeroDivisionError("boom")

    run = guard(bad_input, 2, 1)("x")
    outputs = next(run)
    assert outputs[1] == "❌ row 3: empty answer"
    with pytest.raises(gr.Error, match="row 3"):
        next(run)

    run = guard(bug, 1, 0)("x")
    text = next(run)
    assert "ZeroDivisionError: boom" in text and "app.log" in text
    with pytest.raises(gr.Error):
        next(run)
    log = (workspace / "logs" / "app.log").read_text()
    assert "Traceback" in log and "ZeroDivisionError" in log

    ok = guard(lambda x: ("fine", "ok"), 2, 1)("x")
    assert next(ok) == ("fine", "ok")


# ------------------------------------------------------------------------------------- form


def test_form_round_trips_a_config():
    from tuner.ui import form

    config = TrainConfig(
        data_path="d.jsonl", evaluation_inputs=["Who are you?", "Hi"], lora_targets=["q_proj", "v_proj"]
    )
    values = form.to_form(config)
    assert len(values) == len(KEYS)
    again = config_from_dict(form.from_form(values))
    assert again == config
    defaults = form.from_form(form.to_form(TrainConfig()))
    assert (
        defaults["template"] is None and defaults["tokens_per_step"] is None and defaults["deepspeed"] is None
    )


# ------------------------------------------------------------------------------------- data tab


def test_inspect_convert_split(workspace):
    from tuner.ui import data_tab

    (workspace / "qa.csv").write_text("Question,Focus,Answer\nHi?,x,Hello\nBye?,y,\nHow?,z,Like this\n")
    sheet, q, a, sys_col, preview, out, status = data_tab.inspect_file("qa.csv")
    assert q["value"] == "Question" and a["value"] == "Answer"
    assert list(preview.columns) == ["Question", "Focus", "Answer"] and len(preview) == 3
    assert out == "qa.jsonl"
    status, path = data_tab.convert_file(
        "qa.csv", None, "Question", "Answer", "(none)", "Be brief.", out, False
    )
    assert path == "qa.jsonl" and "wrote 2" in status and "row 3" in status
    status, train, test = data_tab.split(path, 0.5, 0, False)
    assert (workspace / train).is_file() and (workspace / test).is_file()
    with pytest.raises(TunerError, match="already exists"):
        data_tab.split(path, 0.5, 0, False)


def test_validate_reports_problems_with_line_numbers(workspace):
    from tuner.ui import data_tab

    good = '{"conversation": [{"input": "Hi", "output": "Hello"}]}'
    (workspace / "d.jsonl").write_text(f"{good}\n{{broken\n{good}\n")
    report, hist, status = data_tab.validate("d.jsonl", "auto", "default", "", 256)
    assert "d.jsonl:2" in report and "2 usable" in report
    assert hist["samples"].sum() == 2
    assert status.startswith("⚠️")


def test_identity_builder(workspace):
    from tuner.ui import data_tab

    status, path, preview = data_tab.build_identity(
        "Tutu", "Ada's assistant", ["en"], 0, "data/id.jsonl", False
    )
    assert path == "data/id.jsonl" and (workspace / path).is_file()
    assert "Tutu" in " ".join(preview["answer"])


# ------------------------------------------------------------------------------------- presets tab


IDENTITY = "smollm2_135m_instruct_lora_identity_256_e3"


def test_presets_list_load_validate_save(workspace):
    from tuner.ui import presets_tab

    choices, table = presets_tab.list_presets("smollm2")
    assert IDENTITY in [c for c in choices["choices"]] and choices["value"].startswith("smollm2")
    assert set(table["model"]) == {"default"}
    out = presets_tab.load_preset(IDENTITY)
    values = out[: len(KEYS)]
    assert dict(zip(KEYS, values, strict=True))["max_length"] == 256
    assert out[-2].startswith("python -m tuner train " + IDENTITY)
    # Every problem at once (bad lr, bad ratio, missing data file).
    bad = list(values)
    bad[KEYS.index("lr")] = 0
    bad[KEYS.index("warmup_ratio")] = 2
    with pytest.raises(TunerError) as info:
        presets_tab.validate_form(*bad, "en")
    text = str(info.value)
    assert "lr:" in text and "warmup_ratio:" in text and "data_path" in text
    # Save as a new preset in the workspace, then it is listed.
    status, dropdown = presets_tab.save_preset("my_identity", False, *values, "en")
    assert (workspace / "presets" / "my_identity.yaml").is_file()
    assert "my_identity" in dropdown["choices"]
    with pytest.raises(TunerError, match="exists"):
        presets_tab.save_preset("my_identity", False, *values, "en")


def test_cli_command_lists_only_changes():
    from tuner.ui import presets_tab

    values = presets_tab.load_preset(IDENTITY)[: len(KEYS)]
    values[KEYS.index("max_steps")] = 5
    values[KEYS.index("system")] = "You are Tutu."
    cmd = presets_tab.cli_command(IDENTITY, *values)
    assert cmd == f"python -m tuner train {IDENTITY} --set 'system=You are Tutu.' --set max_steps=5"


def test_estimate_verdict_and_advice():
    from tuner.core.system import Hardware
    from tuner.models.shape import shape_from_config
    from tuner.plan.estimate import estimate
    from tuner.ui import presets_tab

    shape = shape_from_config(
        {
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "vocab_size": 128256,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        }
    )
    assert 7.5e9 < shape.params < 8.5e9  # Llama-3-8B
    gpu12 = Hardware("cuda", "RTX 3060", 12.0, 8)
    qlora_config = {"method": "qlora", "max_length": 1024, "gradient_checkpointing": True}
    loaded = estimate(qlora_config, shape, gpu12, embedding_on_cpu=False)
    # 4-bit layers + 16-bit embedding and LM head + fp32 LoRA: 5.94 GiB measured after loading (H100 bench)
    assert loaded.fits and loaded.weights_gib + loaded.trainable_params * 4 / 2**30 == pytest.approx(
        5.94, abs=0.05
    )
    # By default a 12 GB card checkpoints every layer of 1024-token rows, so the input embedding's table
    # (128256 x 4096 x 2 bytes) waits in host memory during training (TUNER_EMBEDDING_ON_CPU=auto)
    qlora = estimate(qlora_config, shape, gpu12)
    assert qlora.fits and qlora.checkpointed_layers == 32
    assert loaded.weights_gib - qlora.weights_gib == pytest.approx(128256 * 4096 * 2 / 2**30)
    full = estimate({"method": "full", "max_length": 2048, "gradient_checkpointing": False}, shape, gpu12)
    assert not full.fits
    assert any("gradient_checkpointing" in tip for tip in full.advice)
    assert any("lora" in tip for tip in full.advice)
    # The tab renders the default (embedded) model's estimate with a verdict.
    values = presets_tab.load_preset(IDENTITY)[: len(KEYS)]
    text = presets_tab.estimate_form(*values, "en")
    assert "Fits" in text and "GiB" in text


def test_estimate_says_when_the_input_embedding_waits_in_cpu_memory(monkeypatch):
    # An 8 GB card checkpoints every layer of an 8B QLoRA run, so its untied input embedding's table
    # stays in host memory (TUNER_EMBEDDING_ON_CPU=auto): the weights row says so
    from tuner.core.system import Hardware
    from tuner.models.shape import shape_from_config
    from tuner.ui import presets_tab

    monkeypatch.delenv("TUNER_EMBEDDING_ON_CPU", raising=False)
    llama3 = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336}
    llama3 |= {"num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
    monkeypatch.setattr(model_shapes, "model_shape", lambda model: shape_from_config(llama3))
    values = presets_tab.load_preset(IDENTITY)[: len(KEYS)]
    values[KEYS.index("method")] = "qlora"
    values[KEYS.index("gradient_checkpointing")] = True
    # the identity preset's KL term runs the model a second time, which keeps the embedding on the card
    values[KEYS.index("anchor_kl_weight")] = 0.0
    for device, expected in (("cuda", True), ("cpu", False)):
        hardware = Hardware(device, "RTX 3070" if device == "cuda" else "cpu", 8.0, 8)
        monkeypatch.setattr(system, "hardware", lambda hardware=hardware: hardware)
        text = presets_tab.estimate_form(*values, "en")
        assert ("the input embedding waits in CPU memory" in text) is expected, text
        # the plan the card gets and the throughput to expect, in both languages
        assert ("Plan: cuda, " if device == "cuda" else "Plan: cpu, ") in text, text
        assert re.search(r"\(about [\d,]+ tokens/s\)", text), text
        assert re.search(r"运行计划：.+约每秒 [\d,]+ 个 token", presets_tab.estimate_form(*values, "zh"), re.S)


def test_estimate_gives_the_longest_sample_a_gpu_fits(monkeypatch):
    # On a GPU the estimate says how long one sample may get with the form's settings and, as rows that
    # long offload their inputs, how to keep PyTorch's allocator from fragmenting. Not on a CPU.
    from tuner.core.system import Hardware
    from tuner.models.shape import shape_from_config
    from tuner.plan import decide
    from tuner.plan.long_rows import longest_sample
    from tuner.ui import presets_tab

    llama3 = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336}
    llama3 |= {"num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
    monkeypatch.setattr(model_shapes, "model_shape", lambda model: shape_from_config(llama3))
    monkeypatch.setattr(decide, "liger_applies", lambda *args, **kwargs: True)  # Liger's loss
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    values = presets_tab.load_preset(IDENTITY)[: len(KEYS)]
    values[KEYS.index("method")] = "qlora"
    values[KEYS.index("gradient_checkpointing")] = True
    texts = {}
    for memory in (24.0, 80.0):
        hardware = Hardware("cuda", "NVIDIA H100", memory, 16)
        monkeypatch.setattr(system, "hardware", lambda hardware=hardware: hardware)
        longest = longest_sample(presets_tab.form.from_form(values))
        text = presets_tab.estimate_form(*values, "en")
        assert f"about **{longest:,} tokens**" in text, text
        texts[memory] = (longest, text)
    (short, at_24), (long, at_80) = texts[24.0], texts[80.0]
    assert 4096 < short < 131072 <= long  # 131,072 measured to fit an H200 held to 80 GiB
    # the longest row of a card is one that offloads its layers' inputs, on either card
    assert "expandable_segments:True" in at_80 and "expandable_segments:True" in at_24
    zh = presets_tab.estimate_form(*values, "zh")
    assert f"约 **{long:,} 个 token**" in zh and "expandable_segments:True" in zh
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert "expandable_segments:True" not in presets_tab.estimate_form(*values, "en")  # already set
    cpu = Hardware("cpu", "CPU", 64.0, 2)
    monkeypatch.setattr(system, "hardware", lambda: cpu)
    assert "Longest single sample" not in presets_tab.estimate_form(*values, "en")


def test_environment_panel(monkeypatch):
    from types import SimpleNamespace

    import torch

    from tuner.ui.presets_tab import environment_markdown

    text = environment_markdown("zh")
    assert "torch" in text and "bitsandbytes" in text and "flash_attn" in text
    # A GPU held to part of its memory says so where it gives the memory.
    props = SimpleNamespace(name="NVIDIA H200", total_memory=140 * 1024**3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("TUNER_GPU_MEMORY_GIB", "24")
    assert "| VRAM | 24.0 GiB (held to this by TUNER_GPU_MEMORY_GIB) |" in environment_markdown("en")
    monkeypatch.delenv("TUNER_GPU_MEMORY_GIB")
    assert "| VRAM | 140.0 GiB |" in environment_markdown("en")


# ------------------------------------------------------------------------------------- train tab


EVENTS = [
    {"type": "status", "status": "preparing", "message": "run folder x"},
    {"type": "status", "status": "running", "step": 0, "total_steps": 10},
    {"type": "sample", "step": 0, "samples": [{"prompt": "Who are you?", "answer": "I am SmolLM"}]},
    {
        "type": "log",
        "step": 1,
        "total_steps": 10,
        "loss": 2.5,
        "lr": 1e-4,
        "tokens_per_s": 150.0,
        "elapsed_s": 2.0,
        "eta_s": 18.0,
    },
]


def test_the_loss_chart_shows_the_first_step():
    from tuner.ui.train_tab import render

    view = render(EVENTS, "running", None, "en")
    assert view["chart"].count("<circle") == 1  # one logged step is already visible
    assert "step 1 / 10 (10%)" in view["progress"] and "ETA 0:18" in view["progress"]
    assert "tokens/s: **150**" in view["metrics"]
    assert "I am SmolLM" in view["answers"]
    more = EVENTS + [{"type": "eval", "step": 2, "total_steps": 10, "eval_loss": 2.0}]
    assert "eval 2.0000" in render(more, "running", None, "en")["chart"]


def test_poll_when_idle_then_nothing_new(workspace):
    from tuner.ui import train_tab

    first = train_tab.poll("", "en")
    if first[0] == "":  # pragma: no cover - another test left a job behind
        return
    again = train_tab.poll(first[0], "en")
    assert again[0] == first[0] and all(not isinstance(v, str) for v in again[1:])


def test_stop_without_a_run_is_a_readable_error():
    from tuner.ui import train_tab

    with pytest.raises(TunerError, match="no training run is active"):
        train_tab.stop("en")


# ------------------------------------------------------------------------------------- launch (app.py, tuner app)


def test_app_binds_localhost_by_default_and_refuses_open_listen():
    from tuner.ui.launch import build_parser, launch_options

    parse = build_parser().parse_args
    assert launch_options(parse([]))["server_name"] == "127.0.0.1"
    with pytest.raises(SystemExit, match="--auth"):
        launch_options(parse(["--listen"]))
    with pytest.raises(SystemExit, match="--auth"):
        launch_options(parse(["--share"]))
    opened = launch_options(parse(["--listen", "--auth", "me:secret"]))
    assert opened["server_name"] == "0.0.0.0" and opened["auth"] == ("me", "secret")
    assert launch_options(parse(["--listen", "--no-auth"]))["auth"] is None
    with pytest.raises(SystemExit, match="USER:PASS"):
        launch_options(parse(["--listen", "--auth", "nopassword"]))


@pytest.mark.parametrize("command", [["app.py"], ["-m", "tuner", "app"]], ids=["app.py", "tuner app"])
def test_listen_without_auth_exits_before_building_anything(command):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, *command, "--listen", "--port", "7999"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "--auth USER:PASS" in proc.stderr
    assert "Running on" not in proc.stdout  # refused before gradio started a server


def test_the_cli_offers_the_app_verb_without_importing_gradio():
    import subprocess
    import sys

    code = (
        "import sys; from tuner.__main__ import build_parser; "
        "args = build_parser().parse_args(['app', '--port', '8001']); "
        "print(args.port, args.host, 'gradio' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["8001", "127.0.0.1", "False"]


def test_chat_takes_the_system_prompt_the_adapter_was_trained_with(workspace):
    from tuner.ui import chat_tab

    adapter = workspace / "work_dirs" / "x" / "1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter.parent / "config.yaml").write_text("system: You are Tutu.\n")
    assert chat_tab.adapter_system("work_dirs/x/1/adapter") == "You are Tutu."
    assert chat_tab.adapter_system(chat_tab.NO_ADAPTER) == gr.skip()


def test_agent_mode_streams_tool_steps_and_answer():
    from tuner.ui import chat_tab

    class ScriptedSession:
        """Stands in for a ChatSession: first asks the calculator, then answers with its result."""

        def __init__(self):
            self.turns = iter(
                [
                    'Thought: I should compute this.\nAction: calculator\nAction Input: {"expression": "17*23"}',
                    "Thought: I now know the final answer.\nFinal Answer: 17 x 23 = 391",
                ]
            )

        def complete(self, messages, stop_words=()):
            return next(self.turns)

    steps = list(chat_tab._agent_steps(ScriptedSession(), "What is 17 times 23?"))
    assert any("calculator" in s for s in steps)
    assert any(s.startswith("> ") and "391" in s for s in steps)  # the tool's observation
    assert steps[-1] == "17 x 23 = 391"


def test_estimate_says_how_many_layers_are_checkpointed(monkeypatch):
    import tuner.plan.estimate
    from tuner.ui import presets_tab

    real = tuner.plan.estimate.estimate
    plans = iter([(0, False), (12, False), (30, True)])

    def planned(cfg, *args, **kwargs):
        count, offload = next(plans)
        return real(cfg, *args, checkpointed_layers=count, offload=offload, **kwargs)

    monkeypatch.setattr(tuner.plan.estimate, "estimate", planned)
    values = presets_tab.load_preset(IDENTITY)[: len(KEYS)]
    texts = [presets_tab.estimate_form(*values, lang) for lang in ("en", "en", "zh")]
    assert "| activations |" in texts[0]
    assert "activations (gradient checkpointing on 12 of 30 layers)" in texts[1]
    assert "30 层中 30 层做梯度检查点，其输入放在内存中" in texts[2]
