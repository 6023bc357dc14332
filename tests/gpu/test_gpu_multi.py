"""Several GPUs (run on a 2-GPU device kind): `torchrun --nproc-per-node 2 -m tuner train ... --deepspeed zero3`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "deepspeed, method",
    [("zero3", "lora"), (None, "lora"), ("zero3", "qlora"), (None, "qlora")],
)
def test_torchrun_two_gpus_one_run_folder_and_loss_down(workspace, small_llama_dir, deepspeed, method):
    """Each rank trains on its own GPU (a 4-bit base goes to the GPU of its LOCAL_RANK; under ZeRO-3 its
    packed weights are stored as bf16 so that DeepSpeed can split them), one run folder, loss falling."""
    import torch

    from tests.gpu.common import gpu_config, write_gpu_data
    from tuner.config.files import save_config
    from tuner.runs.events import read_events

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (device kind nvidia-h200-x2)")
    pytest.importorskip("deepspeed")
    data = write_gpu_data(workspace, repeat=16)
    config = gpu_config(
        small_llama_dir,
        data,
        name="multi",
        batch_size=2,
        max_steps=20,
        save_steps=10,
        evaluation_inputs=["Who are you?"],
        evaluation_freq=10,
        evaluation_max_new_tokens=8,
        **({"method": "qlora", "quantization": "4bit"} if method == "qlora" else {}),
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
    print(deepspeed, method, "losses", [round(x, 3) for x in losses])
    assert len(losses) == 20 and sum(losses[-3:]) < sum(losses[:3]) * 0.5
    assert [e["step"] for e in read_events(run) if e["type"] == "sample"] == [0, 10, 20]
