"""tuner.fast.dropout_grad on the CPU: the addcmul fallback (the Triton kernel is tested bit-exact against
it on a GPU, tests/gpu/test_gpu_lora_fused.py)."""

import torch

from tuner.fast.dropout_grad import add_masked_, kernel_applies


def test_adds_the_kept_elements_scaled_in_place():
    out = torch.tensor([[1.0, 2.0, 3.0]])
    src = torch.tensor([[10.0, 20.0, 30.0]])
    keep = torch.tensor([[True, False, True]])
    assert not kernel_applies(out, src, keep)  # no CUDA here
    result = add_masked_(out, src, keep, 2.0)
    assert result is out and torch.equal(out, torch.tensor([[21.0, 2.0, 63.0]]))
