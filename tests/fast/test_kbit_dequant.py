"""tuner.fast.kbit_dequant off CUDA: bitsandbytes' own function runs (the direct kernel calls need a CUDA
weight on the current device); the CUDA path is checked bit for bit in tests/gpu/test_gpu_kbit_dequant.py."""

from __future__ import annotations

import pytest
import torch

bnb_functional = pytest.importorskip("bitsandbytes.functional")


def test_a_cpu_weight_dequantizes_through_bitsandbytes():
    from tuner.fast import kbit_dequant

    weight = torch.randn(64, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    assert kbit_dequant._direct_kernels(packed, state) is None
    got = kbit_dequant.dequantize_4bit(packed, state)
    assert torch.equal(got, bnb_functional.dequantize_4bit(packed, state))
    assert (got.float() - weight.float()).abs().mean() < 0.1  # it is the weight, to NF4's precision
