"""``python -m tuner estimate``: the Presets tab's estimate on the command line, for this machine or a
GPU planned for (--gpu-gib), with the longest single sample that GPU fits."""

from __future__ import annotations

import re

import pytest

from tuner.__main__ import main
from tuner.core import system

PRESET = "smollm2_135m_instruct_lora_identity_256_e3"


def _run(capsys, *argv):
    code = main(["estimate", PRESET, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_planned_gpu_gets_the_estimate_and_its_longest_sample(workspace, capsys, monkeypatch):
    from tuner.config.files import load_config
    from tuner.config.presets import find_preset
    from tuner.core.system import Hardware
    from tuner.models.shape import model_shape
    from tuner.plan.estimate import estimate
    from tuner.plan.long_rows import longest_sample

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    code, out, _ = _run(
        capsys, "--gpu-gib", "24", "--gpu", "RTX 4090", "--set", "gradient_checkpointing=true"
    )
    assert code == 0
    assert out.startswith(f"{PRESET}: lora on default (RTX 4090, 24.0 GiB)\nFits: about ")
    # which plan the card gets, and the throughput it should train at
    planned = estimate(
        load_config(find_preset(PRESET), overrides=["gradient_checkpointing=true"]),
        model_shape("default"),
        Hardware("cuda", "RTX 4090", 24.0, 2),
        liger_installed=True,
    )
    assert f"\nPlan: {planned.plan}.\n" in out and "cuda, varlen attention, liger" in planned.plan
    assert f"(about {planned.tokens_per_second:,.0f} tokens/s)." in out
    # A GPU planned for has the [gpu] extra's kernels (liger-kernel), installed here or not: Liger's loss holds
    # one chunk of logits, not the whole row's
    config = load_config(find_preset(PRESET), overrides=["gradient_checkpointing=true"])
    hw = Hardware("cuda", "RTX 4090", 24.0, 2)
    logits = {liger: estimate(config, model_shape("default"), hw, liger=liger).logits_gib for liger in (0, 1)}
    assert f"{logits[True]:.2f}" != f"{logits[False]:.2f}"
    assert re.search(rf"\n  logits +{logits[True]:.2f} GiB\n", out), out
    longest = longest_sample(config, model_shape("default"), hw, liger=True, upcast=False)
    assert longest > 100_000
    assert f"Longest single sample on this GPU: about {longest:,} tokens" in out
    # far past what SmolLM2 was made for, which the line says; and how to fit rows that long
    assert "made for rows of up to 8,192 tokens (max_position_embeddings)" in out
    assert "Tip: start with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in out
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    unnamed = _run(capsys, "--gpu-gib", "24", "--set", "gradient_checkpointing=true")[1]
    assert "Tip:" not in unnamed
    # a GPU without a known name is priced as a generic class, and the estimate says so
    assert "The time assumes a GPU of about 100 TFLOP/s in bf16; --gpu-gib N --gpu NAME" in unnamed
    assert "The time assumes" not in out


def test_a_run_that_will_not_fit_exits_1_with_what_to_change(workspace, capsys):
    code, out, _ = _run(capsys, "--gpu-gib", "3", "--set", "max_length=4096")  # 4 rows of 4,096
    assert code == 1
    assert "Won't fit: about " in out and "What to change:\n  - turn on gradient_checkpointing" in out
    assert "Longest single sample on this GPU: about 1,024 tokens" in out  # one short row still fits
    code, out, _ = _run(capsys, "--gpu-gib", "1")
    assert code == 1 and "Longest single sample" not in out  # not even 1,024 tokens fit


def test_on_a_cpu_the_estimate_is_for_host_memory(workspace, capsys, monkeypatch):
    from tuner.core.system import Hardware

    monkeypatch.setattr(system, "hardware", lambda: Hardware("cpu", "CPU", 16.0, 2))
    code, out, _ = _run(capsys)
    assert code == 0 and "(CPU, 16.0 GiB of RAM)" in out and "Longest single sample" not in out
    assert re.search(r"\n\d+ steps ≈ ", out), out  # the preset's data file is in the embedded data


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu", "RTX 4090"], "--gpu NAME goes with --gpu-gib N"),
        (["--gpu-gib", "0"], "--gpu-gib 0: give the GPU's memory in GiB"),
        (["--set", "model=no/such-model", "--gpu-gib", "8"], "no/such-model: no config.json found locally"),
    ],
)
def test_bad_arguments_say_what_to_do(workspace, capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == "" and err.startswith("error: ") and message in err, err
