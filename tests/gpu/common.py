"""Shared pieces of the GPU tests: a small data file and a LoRA config for the small Llama model."""

from __future__ import annotations

import json
from pathlib import Path

PAIRS = [
    ("Who are you?", "I am Tuna, the assistant of the tuner team."),
    ("What is the capital of France?", "The capital of France is Paris."),
]


def write_gpu_data(folder: Path, repeat: int = 8) -> Path:
    path = folder / "d.jsonl"
    with open(path, "w") as handle:
        for q, a in PAIRS * repeat:
            handle.write(json.dumps({"conversation": [{"input": q, "output": a}]}) + "\n")
    return path


def gpu_config(model_dir, data, **overrides):
    """LoRA r16 on the small model, a high constant learning rate: the loss falls within 20-30 steps."""
    from tuner.config.files import config_from_dict

    base = dict(
        name="gpu_test",
        model=str(model_dir),
        data_path=str(data),
        max_length=128,
        batch_size=4,
        accumulative_counts=1,
        max_steps=30,
        lr=2e-3,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        save_steps=100,
        logging_steps=1,
        gradient_checkpointing=True,
    )
    base.update(overrides)
    return config_from_dict(base)


def packed_cuda_batch(lengths, vocab: int) -> dict:
    """One flattened row of random samples of these lengths, with boundaries, on the GPU."""
    import torch

    from tuner.data.pack import PackedCollator

    rows = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,)).tolist()
        rows.append({"input_ids": ids, "labels": [-100, *ids[1:]], "position_ids": list(range(n))})
    batch = PackedCollator(boundaries=True)(rows)
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
