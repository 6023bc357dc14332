"""QLoRA for each model family a preset names, on a GPU: a 4-layer random model of the family's
architecture (hidden 1024, big enough for bitsandbytes' kernels), the preset's template, 30 steps whose
loss falls, the QLoRA adapter merged into the 16-bit base, and chat that stops at the family's
end-of-turn token. The CPU half (labels, LoRA, merge == unmerged, GGUF) is tests/train/test_families.py."""

from __future__ import annotations

import pytest

from tests.gpu.common import gpu_config, write_gpu_data
from tests.tiny import SMALL_GPU_SIZES
from tests.train.test_families import FAMILIES, build_family

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_qlora_on_gpu(workspace, tmp_path, name):
    import torch

    from tuner.chat.generate import GenerationSettings
    from tuner.chat.session import ChatSession
    from tuner.config.files import load_config
    from tuner.config.presets import find_preset
    from tuner.data.templates import get_template
    from tuner.export.merge import merge_adapter
    from tuner.runs.events import read_events
    from tuner.train.run import train

    family = FAMILIES[name]
    preset = load_config(find_preset(family.preset))
    sizes = dict(SMALL_GPU_SIZES, head_dim=128 if name == "qwen3" else 64)
    tokenizer = build_family(
        family, get_template(preset.template), tmp_path / "model", torch.bfloat16, **sizes
    )
    config = gpu_config(
        tmp_path / "model",
        write_gpu_data(tmp_path),
        method="qlora",
        template=preset.template,
        max_steps=30,
        output_dir=str(tmp_path / "run"),
    )
    result = train(config)
    assert result.status == "completed"
    losses = [e["loss"] for e in read_events(result.run_dir) if e["type"] == "log" and "loss" in e]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    merged = merge_adapter(
        str(tmp_path / "model"), result.output_dir, tmp_path / "merged", verify=False
    ).out_dir
    session = ChatSession(str(merged), bits=4, settings=GenerationSettings(max_new_tokens=64, temperature=0))
    template = get_template(preset.template, tokenizer)
    eot = tokenizer.convert_tokens_to_ids(template.end_of_turn)
    assert eot in session.eos_ids and session.chat_template.end_of_turn == template.end_of_turn
    answer = session.answer_single("Who are you?")  # trained 30 steps on this question
    assert template.end_of_turn not in answer
    assert session.last_finish == "stop", f"{name}: no end of turn in 64 tokens: {answer!r}"
