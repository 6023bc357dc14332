"""tuner.fast.seeded_dropout's kernels on the CPU through Triton's interpreter (where Triton is installed;
CPU builds of torch come without it): the kernels apply exactly the mask their seed draws, at the asked
rate, the same every time. The CUDA runs of the same checks are in tests/gpu/test_gpu_seeded_dropout.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tuner.fast import seeded_dropout

CHECKS = textwrap.dedent(
    """
    import torch
    from tuner.fast import dropout_products as dp
    from tuner.fast import seeded_dropout as sd

    seed = torch.tensor([1234], dtype=torch.int64)
    p = 0.1
    x, out = torch.randn(100, 301), torch.randn(100, 301)  # ragged: not a multiple of a block or of 8
    keep = sd.keep_mask(x.shape, seed, p)
    assert torch.equal(keep, sd.keep_mask(x.shape, seed, p))
    assert (keep != sd.keep_mask(x.shape, seed + 1, p)).any()
    scale = sd.keep_scale(p)
    assert torch.equal(sd.dropped(x, seed, p), torch.where(keep, x * scale, 0.0))
    scale32 = torch.tensor(scale, dtype=torch.float32).double()
    fused = torch.where(keep, (out.double() + x.double() * scale32).float(), out)
    assert torch.equal(sd.add_dropped_(out.clone(), x, seed, p), fused)
    flags = sd.keep_mask((1000, 1000), seed, p)
    rate = 1 - flags.float().mean().item()
    assert abs(rate - sd.threshold(p) / sd.UNIFORM_LEVELS) < 2e-3, rate
    per_position = 1 - flags.float().view(-1, 8).mean(0)  # the eight uniforms of one Philox call
    assert (per_position - p).abs().max().item() < 5e-3, per_position
    # the dropped-out input made inside the LoRA product: the same mask (ragged rows and widths)
    for rows, width, rank in [(100, 304, 16), (33, 1024, 64)]:
        x, lora_A = torch.randn(rows, width), torch.randn(rank, width)
        assert dp.product_applies(x, lora_A) and not dp.product_applies(x, lora_A[:8])
        product = dp.dropped_product(x, lora_A, seed, p)
        torch.testing.assert_close(product, sd.dropped(x, seed, p) @ lora_A.t(), rtol=1e-5, atol=1e-4)
        grad, out = torch.randn(rows, rank), torch.randn(rows, width)
        added = dp.add_dropped_product_(out.clone(), grad, lora_A, seed, p)
        torch.testing.assert_close(added, sd.add_dropped_(out.clone(), grad @ lora_A, seed, p), rtol=1e-5, atol=1e-4)
        lora_grad = dp.dropped_product_grad(grad, x, seed, p)
        torch.testing.assert_close(lora_grad, grad.t() @ sd.dropped(x, seed, p), rtol=1e-5, atol=1e-4)
    # a seed drawn on the host (eager steps): the kernels take it by value and draw the same mask for it
    # every time; a device seed is the host seed of the same key on stream 0; another stream, another mask
    host = sd.HostSeed(1234, 0)
    assert torch.equal(sd.keep_mask(x.shape, host, p, device="cpu"), sd.keep_mask(x.shape, seed, p))
    later = sd.HostSeed(1234, sd.HOST_STREAM_STRIDE)
    keep = sd.keep_mask((100, 304), later, p, device="cpu")
    assert (keep != sd.keep_mask((100, 304), host, p, device="cpu")).any()
    x, lora_A, grad = torch.randn(100, 304), torch.randn(16, 304), torch.randn(100, 16)
    assert torch.equal(sd.dropped(x, later, p), torch.where(keep, x * scale, 0.0))
    torch.testing.assert_close(dp.dropped_product(x, lora_A, later, p), sd.dropped(x, later, p) @ lora_A.t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dp.dropped_product_grad(grad, x, later, p), grad.t() @ sd.dropped(x, later, p), rtol=1e-5, atol=1e-4)
    out = torch.randn(100, 304)
    torch.testing.assert_close(dp.add_dropped_product_(out.clone(), grad, lora_A, later, p), sd.add_dropped_(out.clone(), grad @ lora_A, later, p), rtol=1e-5, atol=1e-4)
    # more rows than one split: the splits' sums add up to the whole
    grad, x = torch.randn(1100, 16), torch.randn(1100, 64)
    torch.testing.assert_close(dp.dropped_product_grad(grad, x, seed, p), grad.t() @ sd.dropped(x, seed, p), rtol=1e-5, atol=1e-3)
    print("ok")
    """
)


# The fused LoRA linear's seeded path (CUDA only in training) run through the interpreter on the CPU, with
# and without the fused product: output and gradients are the hand-computed ones for the mask its seed draws.
LORA_CHECKS = textwrap.dedent(
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from tuner.fast import seeded_dropout as sd
    from tuner.fast.lora_fused import fuse_lora

    sd.applies = lambda x: x.is_contiguous()  # the interpreter runs the kernels on CPU tensors
    p = 0.1
    for product in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(nn.Sequential(nn.Linear(64, 48)), LoraConfig(r=16, lora_alpha=32,
            lora_dropout=p, target_modules=["0"], init_lora_weights=False)).train()
        fuse_lora(model, seeded_dropout=True, dropout_product=product)
        layer = model.base_model.model[0]
        x = torch.randn(3, 40, 64, requires_grad=True)
        torch.manual_seed(7)
        out = layer(x)
        seed = out.grad_fn.next_functions[0][0].saved_tensors[6]
        gy = torch.randn_like(out)
        out.backward(gy)
        W, b = layer.base_layer.weight, layer.base_layer.bias
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        x2, keep = x.detach().reshape(-1, 64).requires_grad_(), sd.keep_mask((120, 64), seed, p)
        A2, B2 = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
        dropped = torch.where(keep, x2 * sd.keep_scale(p), 0.0)
        want = x2 @ W.t() + b + layer.scaling["default"] * (dropped @ A2.t()) @ B2.t()
        want.backward(gy.reshape(-1, 48))
        close = dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.reshape(-1, 48), want, **close)
        torch.testing.assert_close(x.grad.reshape(-1, 64), x2.grad, **close)
        torch.testing.assert_close(A.grad, A2.grad, **close)
        torch.testing.assert_close(B.grad, B2.grad, **close)
    print("ok")
    """
)


def _interpreted(code: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.skipif(not seeded_dropout.available(), reason="Triton is not installed (CPU builds of torch)")
def test_the_kernels_apply_the_mask_their_seed_draws_in_the_interpreter():
    _interpreted(CHECKS)


@pytest.mark.skipif(not seeded_dropout.available(), reason="Triton is not installed (CPU builds of torch)")
def test_the_fused_lora_linear_follows_its_seeded_mask_in_the_interpreter():
    _interpreted(LORA_CHECKS)


def test_the_drop_rate_and_scale_keep_the_expectation():
    assert seeded_dropout.threshold(0.1) == 6554  # drops 0.100006
    keep_rate = 1 - seeded_dropout.threshold(0.1) / seeded_dropout.UNIFORM_LEVELS
    assert seeded_dropout.keep_scale(0.1) * keep_rate == pytest.approx(1.0, abs=1e-12)
    assert seeded_dropout.threshold(0.0) == 0 and seeded_dropout.keep_scale(0.0) == 1.0
