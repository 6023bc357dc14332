"""LoRA dropout drawn from a seed (tuner.fast.seeded_dropout) on CUDA: the kernels apply exactly the mask
their seed draws, at the asked rate, the same mask every time for one seed; the fused LoRA linear's
outputs and gradients are those of that mask; and a checkpointed recomputation draws what the forward
drew."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def _seed(value: int):
    import torch

    return torch.tensor([value], dtype=torch.int64, device="cuda")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_the_kernels_apply_exactly_the_mask_their_seed_draws(dtype):
    import torch

    from tuner.fast import seeded_dropout

    dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cuda").manual_seed(0)
    p = 0.1
    scale = seeded_dropout.keep_scale(p)
    for shape in [(4096, 4096), (1000, 4097), (3, 5)]:  # a step's size, ragged tail blocks
        x = torch.randn(shape, device="cuda", dtype=dtype, generator=generator)
        keep = seeded_dropout.keep_mask(shape, _seed(1234), p)
        expected = torch.where(keep, x.float() * scale, 0.0).to(dtype)
        assert torch.equal(seeded_dropout.dropped(x, _seed(1234), p), expected)
        out = torch.randn(shape, device="cuda", dtype=dtype, generator=generator)
        # the kernel's fp32 fused multiply-add with the fp32 scale, one rounding (float64 holds the
        # product exactly), then the cast to the tensors' dtype
        scale32 = torch.tensor(scale, dtype=torch.float32).double()
        fused = torch.where(keep, (out.double() + x.double() * scale32).float(), out.float()).to(dtype)
        assert torch.equal(seeded_dropout.add_dropped_(out.clone(), x, _seed(1234), p), fused)


def test_the_mask_is_drawn_at_the_rate_and_differs_between_seeds():
    import torch

    from tuner.fast import seeded_dropout

    shape = (4096, 4096)
    for p in (0.05, 0.1, 0.5):
        keep = seeded_dropout.keep_mask(shape, _seed(7), p)
        rate = 1 - keep.float().mean().item()
        print(f"p {p}: dropped {rate:.5f}")
        assert abs(rate - p) < 1e-3
        assert torch.equal(keep, seeded_dropout.keep_mask(shape, _seed(7), p))  # a pure function of the seed
        other = seeded_dropout.keep_mask(shape, _seed(8), p)
        # independent masks disagree on 2 p (1 - p) of the elements
        assert abs((keep != other).float().mean().item() - 2 * p * (1 - p)) < 2e-3
    # neighbours (one Philox call gives eight of them) are not correlated, nor are rows
    flags = seeded_dropout.keep_mask(shape, _seed(9), 0.5).float()
    for a, b in [(flags[:, :-1], flags[:, 1:]), (flags[:, :-4], flags[:, 4:]), (flags[:-1], flags[1:])]:
        correlation = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(correlation) < 3e-3, correlation


@pytest.mark.parametrize("product", [False, True], ids=["dropped-copy", "fused-product"])
def test_the_fused_lora_linear_follows_the_seeded_mask(product):
    """The fused 4-bit LoRA linear with dropout: output and gradients are those of the mask its saved seed
    draws, computed by hand through peft's own base layer; with the dropped-out input made inside the
    first LoRA product too."""
    import torch

    from tests.gpu.test_gpu_lora_fused import _lora_4bit, assert_follows_mask
    from tuner.fast import seeded_dropout
    from tuner.fast.lora_fused import fuse_lora

    p = 0.1
    model, layer = _lora_4bit(dropout=p)
    fuse_lora(model, seeded_dropout=True, dropout_product=product)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.02)
    x = torch.randn(4, 1024, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(4, 1024, 2816, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    node = out.grad_fn.next_functions[0][0]
    saved = node.saved_tensors
    # no mask kept: the seed draws it, and an eager step draws it on the host (no seed tensor, no launch)
    assert saved[2] is None and saved[6] is None and isinstance(node.host_seed, seeded_dropout.HostSeed)
    assert saved[0].data_ptr() == x.data_ptr()  # the input itself is kept, not a dropped-out copy
    out.backward(gy)
    keep = seeded_dropout.keep_mask(x.shape, node.host_seed, p, device="cuda")
    assert abs(keep.float().mean().item() - (1 - p)) < 0.005

    assert_follows_mask(
        layer, x, gy, out, keep, seeded_dropout.keep_scale(p), f"seeded dropout {p}, {product=}"
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_the_fused_product_is_the_product_of_the_dropped_out_input(dtype):
    """dropped_product(x, A) against dropped(x) @ A^T, add_dropped_product_ and dropped_product_grad against
    exact sums: the same mask, one rounding, the same A gradient every time."""
    import torch

    from tuner.fast import dropout_products, seeded_dropout

    dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for rows, width, rank in [(4096, 4096, 64), (4096, 11008, 64), (1000, 1032, 16), (77, 4096, 128)]:
        x = torch.randn(rows, width, device="cuda", dtype=dtype, generator=generator)
        lora_A = torch.randn(rank, width, device="cuda", dtype=dtype, generator=generator) / width**0.5
        assert dropout_products.product_applies(x, lora_A)
        fused = dropout_products.dropped_product(x, lora_A, _seed(99), 0.1).float()
        reference = (seeded_dropout.dropped(x, _seed(99), 0.1).double() @ lora_A.double().t()).float()
        error = ((fused - reference).norm() / reference.norm()).item()
        # backward's half: the input gradient plus the dropped-out product of grad_h and A
        grad = torch.randn(rows, rank, device="cuda", dtype=dtype, generator=generator)
        out = torch.randn(rows, width, device="cuda", dtype=dtype, generator=generator)
        added = dropout_products.add_dropped_product_(out.clone(), grad, lora_A, _seed(99), 0.1).float()
        keep = seeded_dropout.keep_mask(out.shape, _seed(99), 0.1)
        exact = grad.double() @ lora_A.double() * seeded_dropout.keep_scale(0.1)
        expected = (out.double() + torch.where(keep, exact, 0.0)).float()
        added_error = ((added - expected).norm() / expected.norm()).item()
        # and the LoRA A gradient through the same mask, summed over the rows in splits
        lora_grad = dropout_products.dropped_product_grad(grad, x, _seed(99), 0.1)
        exact = grad.double().t() @ seeded_dropout.dropped(x, _seed(99), 0.1).double()
        grad_error = ((lora_grad.double() - exact).norm() / exact.norm()).item()
        print(
            f"{dtype} {rows}x{width} rank {rank}: relative errors {error:.2e} (forward), "
            f"{added_error:.2e} (input gradient), {grad_error:.2e} (A gradient)"
        )
        bound = 1e-5 if dtype == torch.float32 else 5e-3
        assert error < bound and added_error < bound and grad_error < bound
        assert torch.equal(lora_grad, dropout_products.dropped_product_grad(grad, x, _seed(99), 0.1))


def test_eager_steps_draw_seeds_on_the_host_and_graph_captures_on_the_device():
    """Outside a capture a seed is the generator's offset, reserved on the host (the next draw gets the
    next one; putting the generator back, as checkpointing does, draws the same again); inside a CUDA graph
    capture it is a device tensor that each replay draws anew."""
    import torch

    from tuner.fast import seeded_dropout

    device = torch.device("cuda")
    torch.cuda.manual_seed(11)
    state = torch.cuda.get_rng_state()
    first, second = seeded_dropout.draw_seed(device), seeded_dropout.draw_seed(device)
    assert isinstance(first, seeded_dropout.HostSeed) and first.key == second.key
    assert second.stream == first.stream + seeded_dropout.HOST_STREAM_STRIDE
    torch.cuda.set_rng_state(state)
    assert seeded_dropout.draw_seed(device) == first
    x = torch.randn(512, 1024, device="cuda")
    assert not torch.equal(seeded_dropout.dropped(x, first, 0.1), seeded_dropout.dropped(x, second, 0.1))
    graph, out = torch.cuda.CUDAGraph(), torch.empty_like(x)
    seeded_dropout.dropped(x, _seed(1), 0.1)  # compiled before the capture
    with torch.cuda.graph(graph):
        seed = seeded_dropout.draw_seed(device)
        out.copy_(seeded_dropout.dropped(x, seed, 0.1))
    assert isinstance(seed, torch.Tensor)
    masks = []
    for _ in range(2):
        graph.replay()
        masks.append((out != 0).clone())
    assert not torch.equal(*masks)  # a fresh seed every replay


def test_a_checkpointed_recomputation_draws_the_forward_mask():
    """Reentrant checkpointing restores the generator before recomputing: the recomputed layer draws the
    seeds, so the masks, of its first forward, and the gradients equal those of the layer without
    checkpointing on the same generator state."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from tests.gpu.test_gpu_lora_fused import _lora_4bit
    from tuner.fast.lora_fused import fuse_lora

    model, layer = _lora_4bit(dropout=0.1)
    fuse_lora(model, seeded_dropout=True)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.02)
    x = torch.randn(2, 1024, 1024, device="cuda", dtype=torch.bfloat16)
    gy = torch.randn(2, 1024, 2816, device="cuda", dtype=torch.bfloat16)

    def grads(checkpointed: bool):
        layer.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_(True)
        torch.cuda.manual_seed(5)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = checkpoint(layer, x_, use_reentrant=True) if checkpointed else layer(x_)
        out.backward(gy)
        return [x_.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad]

    plain, recomputed = grads(False), grads(True)
    for a, b in zip(plain, recomputed, strict=True):
        assert torch.equal(a, b)
