"""Checks of tuner.fast.lora_dropout_kernels that run under Triton's interpreter on the CPU, each in a process
of its own started by tests/test_lora_dropout_kernels.py with TRITON_INTERPRET=1 (Triton decides
interpreted or compiled for its own library when it is first imported, so a pytest process that has
imported Triton already cannot switch). Each function raises on a mismatch."""

from __future__ import annotations

import torch


def each_kernel_equals_its_formula_with_the_drawn_mask():
    for dtype in (torch.float32, torch.float16):
        _kernel_formulas(dtype)


def _kernel_formulas(dtype):
    from tuner.fast import lora_dropout_kernels as K

    torch.manual_seed(0)
    tokens, width, rank, p = 70, 96, 8, 0.25  # ragged against the 64-wide blocks
    x = torch.randn(tokens, width, dtype=dtype)
    A = (torch.randn(rank, width) * 0.1).to(dtype)
    seed = K.new_seed(torch.device("cpu"))
    assert K.kernels_apply(x, A)
    keep = K.drawn_mask((tokens, width), seed, p, "cpu")
    assert 0.7 < keep.float().mean().item() < 0.8
    dropped = (x.float() * keep / (1 - p)).to(dtype).float()
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(K.masked_x_at(x, A, seed, p).float(), dropped @ A.float().t(), **tolerance)
    grad_h = torch.randn(tokens, rank, dtype=dtype)
    torch.testing.assert_close(
        K.masked_gradient_a(grad_h, x, seed, p), grad_h.float().t() @ dropped, **tolerance
    )
    grad_x = torch.randn(tokens, width, dtype=dtype)
    expected = grad_x.float() + (grad_h.float() @ A.float()) * keep / (1 - p)
    torch.testing.assert_close(K.add_masked_grad_x(grad_x, grad_h, A, seed, p).float(), expected, **tolerance)
    other = K.drawn_mask((tokens, width), K.new_seed(torch.device("cpu")), p, "cpu")
    assert not torch.equal(other, keep)  # a new call draws a new mask


def a_fused_lora_linear_trains_through_the_kernels(device: str = "cpu", dtype=torch.float32, tolerance=1e-4):
    # The fused layer's output and gradients equal vanilla LoRA's formulas with the mask the kernels
    # drew (read back by replaying the seed), and nothing of the mask's size is kept for backward.
    # Also run on a GPU in bf16 by tests/gpu/test_gpu_lora_fused.py.
    import peft
    from torch import nn

    from tuner.fast import lora_dropout_kernels, lora_fused

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(96, 80, bias=False)).to(device, dtype)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.25, target_modules=["0"])
    model = peft.get_peft_model(base, config).to(device)
    model.train()
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
    assert lora_fused.fuse_lora(model) == 1
    seeds = []
    new_seed = lora_fused.new_seed

    def recording(device):
        seeds.append(new_seed(device))
        return seeds[-1].clone()

    lora_fused.new_seed = recording
    try:
        x = torch.randn(3, 20, 96, device=device, dtype=dtype, requires_grad=True)
        saved = []

        def pack(tensor):
            saved.append((tuple(tensor.shape), tensor.dtype, tensor.untyped_storage().data_ptr()))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            y = model(x)
        # no mask and no dropped-out copy: the only input-sized tensor kept is x itself (a view of it)
        assert not [s for s in saved if s[1] == torch.bool], saved
        input_sized = [s for s in saved if s[0] in ((60, 96), (3, 20, 96))]
        assert input_sized and {s[2] for s in input_sized} == {x.untyped_storage().data_ptr()}, saved
        y.square().sum().backward()
    finally:
        lora_fused.new_seed = new_seed  # a GPU test runs this in a shared process
    assert len(seeds) == 1
    keep = lora_dropout_kernels.drawn_mask((60, 96), seeds[0], 0.25, device).view(3, 20, 96)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x_ref = x.detach().clone().requires_grad_()
    A_ref, B_ref = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
    dropped = (x_ref.float() * keep / 0.75).to(dtype)
    lora = (dropped.float() @ A_ref.float().t() @ B_ref.float().t()) * layer.scaling["default"]
    y_ref = layer.base_layer(x_ref).float() + lora
    y_ref.square().sum().backward()

    def close(actual, expected):  # relative to the largest magnitude: bf16 rounds each element
        scale = expected.float().abs().max().clamp_min(1e-6)
        assert ((actual.float() - expected.float()).abs().max() / scale).item() <= tolerance

    close(y, y_ref)
    close(x.grad, x_ref.grad)
    close(A.grad, A_ref.grad)
    close(B.grad, B_ref.grad)


def a_training_run_learns_with_drawn_dropout():
    # tuner's whole training path (gradient checkpointing recomputes each layer, drawing the same
    # seed again because checkpointing restores the generator) with dropout drawn in the kernels: the
    # loss falls, and every fused linear went through them.
    import tempfile
    from pathlib import Path

    from tests.tiny import make_config, save_tiny_model, write_data
    from tuner.fast import lora_fused
    from tuner.runs.events import read_events
    from tuner.train.run import train

    calls = []
    masked_x_at = lora_fused.masked_x_at

    def counting(*args):
        calls.append(args[0].shape)
        return masked_x_at(*args)

    lora_fused.masked_x_at = counting
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model_dir = save_tiny_model("llama", work / "model")
        data = write_data(work / "d.jsonl", repeat=2)
        config = make_config(
            model_dir, data, name="drawn", max_steps=12, lr=3e-3, lora_r=8, lora_dropout=0.1,
            gradient_checkpointing=True, output_dir=str(work / "runs"),
        )  # fmt: skip
        result = train(config)
        assert result.status == "completed"
        losses = [e["loss"] for e in read_events(result.run_dir) if e["type"] == "log" and "loss" in e]
    assert calls, "the kernels never ran"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
