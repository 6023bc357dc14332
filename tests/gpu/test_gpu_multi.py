"""Several GPUs (run on a 2-GPU device kind): `torchrun --nproc-per-node 2 -m tuner train ... --deepspeed zero3`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_llama_dir(tmp_path_factory):
    import torch

    from tests.tiny import SMALL_GPU_SIZES, save_tiny_model

    return save_tiny_model("llama", tmp_path_factory.mktemp("small-llama"), torch.bfloat16, **SMALL_GPU_SIZES)


@pytest.mark.parametrize("deepspeed", ["zero3", None])
def test_torchrun_two_gpus_one_run_folder_and_loss_down(workspace, small_llama_dir, deepspeed):
    import torch

    from tuner.config import config_from_dict, save_config
    from tuner.events import read_events

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (device kind nvidia-h100-x2)")
    pytest.importorskip("deepspeed")
    data = workspace / "d.jsonl"
    pairs = [
        ("Who are you?", "I am Tuna, the assistant of the tuner team."),
        ("Capital of France?", "Paris."),
    ]
    data.write_text(
        "".join(json.dumps({"conversation": [{"input": q, "output": a}]}) + "\n" for q, a in pairs * 16)
    )
    config = config_from_dict(
        dict(
            name="multi",
            model=str(small_llama_dir),
            data_path=str(data),
            max_length=128,
            batch_size=2,
            accumulative_counts=1,
            max_steps=20,
            lr=2e-3,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            save_steps=10,
            logging_steps=1,
            evaluation_inputs=["Who are you?"],
            evaluation_freq=10,
            evaluation_max_new_tokens=8,
        )
    )
    save_config(config, workspace / "multi.yaml", force=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "tuner",
        "train",
        str(workspace / "multi.yaml"),
    ] + (["--deepspeed", deepspeed] if deepspeed else [])
    env = dict(
        os.environ, TUNER_WORKSPACE=str(workspace), PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}"
    )
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=500)
    print(proc.stdout[-1500:], proc.stderr[-3000:])
    assert proc.returncode == 0
    runs = [p for p in (workspace / "work_dirs" / "multi").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # both ranks used the folder rank 0 made
    run = runs[0]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    losses = [e["loss"] for e in read_events(run) if e["type"] == "log" and "loss" in e]
    print(deepspeed, "losses", [round(x, 3) for x in losses])
    assert len(losses) == 20 and sum(losses[-3:]) < sum(losses[:3]) * 0.5
    assert [e["step"] for e in read_events(run) if e["type"] == "sample"] == [0, 10, 20]
