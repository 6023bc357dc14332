"""Device diagnosis for tuner.fast.layer_graphs: on the small GPU-test Llama (QLoRA, fused LoRA, varlen
attention), capture the layers' CUDA graphs for a one-sample row and for a packed row of three
samples, each with a fresh LayerGraphs, and print what happened: replays, or the full traceback of
a failed capture, plus every synchronizing call PyTorch saw during capture (sync debug mode), and
whether an eager step with dropout still runs afterwards.

    python3 bench/probes/graph_capture_probe.py [dropout]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tuner, tests

from tests.gpu.common import gpu_config, packed_cuda_batch, write_gpu_data  # noqa: E402
from tests.tiny import SMALL_GPU_SIZES, save_tiny_model  # noqa: E402


def main() -> None:
    import os

    logging.basicConfig(level=logging.INFO)
    os.environ["TUNER_CUDA_GRAPHS"] = "on"
    dropout = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    from tuner.fast.layer_graphs import LayerGraphs
    from tuner.train.model import build_model

    work = Path(tempfile.mkdtemp())
    model_dir = save_tiny_model("llama", work / "m", torch.bfloat16, **SMALL_GPU_SIZES)
    config = gpu_config(
        model_dir,
        write_gpu_data(work),
        method="qlora",
        quantization="4bit",
        gradient_checkpointing=False,
        lora_dropout=dropout,
    )
    model, loaded = build_model(config)
    model.train()
    layers = loaded.layer_graphs.layers
    loaded.layer_graphs.remove()
    vocab = model.config.vocab_size

    def shown(message, category, filename, lineno, file=None, line=None):
        print(f"WARNING {category.__name__}: {str(message)[:200]}")
        print("".join(traceback.format_stack(limit=14)[:-1]))

    warnings.showwarning = shown
    for lengths in ([1024], [300, 500, 224]):
        graphs = LayerGraphs(layers)
        graphs.install()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(3):
                model.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(**packed_cuda_batch(lengths, vocab), use_cache=False).loss
                loss.backward()
            print(
                f"== {lengths} dropout {dropout}: replays {graphs.replays} failed {graphs.failed} skipped {graphs.skipped}"
            )
        except Exception:
            print(f"== {lengths} dropout {dropout}: step raised")
            traceback.print_exc()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            graphs.remove()
        try:  # after a capture, failed or not, an eager step (dropout included) must still run
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(**packed_cuda_batch(lengths, vocab), use_cache=False).loss.backward()
            print(f"== {lengths}: eager step afterwards ok")
        except Exception as exc:
            print(f"== {lengths}: eager step afterwards raised {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
