"""GPU-test fixtures: a 4-layer Llama of hidden 1024 (big enough for bitsandbytes' kernels)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def small_llama_dir(tmp_path_factory):
    import torch

    from tests.tiny import SMALL_GPU_SIZES, save_tiny_model

    return save_tiny_model("llama", tmp_path_factory.mktemp("small-llama"), torch.bfloat16, **SMALL_GPU_SIZES)
