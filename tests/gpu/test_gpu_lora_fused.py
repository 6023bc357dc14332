"""The fused LoRA linear (tuner.fast.lora_fused) over bitsandbytes 4-bit bases on CUDA, against peft.

NF4 with double quantization and bf16 compute, as tuner loads QLoRA bases: outputs and gradients
match peft's under bf16 autocast, the fused forward and backward peak no higher, and on a small
QLoRA Llama the loss and the LoRA gradients match.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def _rel(actual, expected) -> float:
    """Largest difference relative to the largest magnitude (bf16 rounds each element ~0.4%)."""
    return (
        (actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)
    ).item()


def _lora_4bit(in_features=1024, out_features=2816, bias=False, dropout=0.0):
    """A peft LoRA layer (peft.tuners.lora.bnb.Linear4bit) over an NF4 bnb.nn.Linear4bit on the GPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    from torch import nn

    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    dense = nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    base = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=bias,
        compute_dtype=torch.bfloat16,
        compress_statistics=True,
        quant_type="nf4",
    )
    base.weight = bnb.nn.Params4bit(
        dense.weight.data.clone(),
        requires_grad=False,
        compress_statistics=True,
        quant_type="nf4",
        module=base,
    )
    if bias:
        base.bias = nn.Parameter(dense.bias.data.clone(), requires_grad=False)
    base = base.cuda()  # quantizes
    assert base.weight.quant_state is not None and base.weight.quant_state.nested

    class Holder(nn.Module):
        is_loaded_in_4bit = True  # as transformers marks a 4-bit model; peft picks its bnb layer by it

        def __init__(self):
            super().__init__()
            self.proj = base

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(
        Holder(), LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=["proj"])
    )
    layer = model.base_model.model.proj
    assert type(layer) is LoraLinear4bit
    with torch.no_grad():  # peft starts B at zero, which would hide every bug in the LoRA branch
        layer.lora_B["default"].weight.normal_(0, 0.02)
    return model.train(), layer


def _forward_backward(model, x, gy):
    import torch

    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    out.backward(gy)
    layer = model.base_model.model.proj
    grads = [layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad]
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("x_dtype", ["bfloat16", "float32"])  # float32: peft's k-bit upcast of the norms
@pytest.mark.parametrize("bias", [False, True])
def test_fused_4bit_equals_peft(x_dtype, bias):
    import torch

    from tuner.fast.lora_fused import fuse_lora, unfuse_lora

    model, _ = _lora_4bit(bias=bias)
    dtype = getattr(torch, x_dtype)
    x = torch.randn(2, 512, 1024, device="cuda", dtype=dtype)
    gy = torch.randn(2, 512, 2816, device="cuda", dtype=dtype)
    ref = _forward_backward(model, x, gy)
    assert fuse_lora(model) == 1
    fused = _forward_backward(model, x, gy)
    unfuse_lora(model)
    assert fused[0].dtype == ref[0].dtype == dtype  # bitsandbytes returns the input's dtype
    assert fused[1].dtype == ref[1].dtype == dtype
    errors = [_rel(a, b) for a, b in zip([*fused[:2], *fused[2]], [*ref[:2], *ref[2]], strict=True)]
    print(f"x {x_dtype}, bias {bias}: relative errors (out, x, A, B) {[f'{e:.4f}' for e in errors]}")
    assert all(g.dtype == torch.float32 for g in fused[2])
    assert max(errors) < 2e-2, errors


def test_fused_4bit_dropout_follows_its_mask():
    import torch

    from tuner.fast.lora_fused import fuse_lora

    p = 0.1
    model, layer = _lora_4bit(dropout=p)
    fuse_lora(model)
    x = torch.randn(4, 1024, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(4, 1024, 2816, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    mask = out.grad_fn.next_functions[0][0].saved_tensors[2].view(x.shape)
    out.backward(gy)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.005

    assert_follows_mask(layer, x, gy, out, mask, 1 / (1 - p), f"dropout {p}")


def assert_follows_mask(layer, x, gy, out, keep, scale: float, label: str) -> None:
    """``out`` (and the gradients its backward left) against the same math by hand on the keep mask,
    through peft's own pieces (its base layer: bitsandbytes)."""
    import torch

    x_ref = x.detach().clone().requires_grad_(True)
    A = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)
    B = layer.lora_B["default"].weight.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = layer.base_layer(x_ref) + (x_ref * keep * scale) @ A.t() @ B.t() * layer.scaling["default"]
    ref.backward(gy)
    errors = [
        _rel(out.detach(), ref.detach()),
        _rel(x.grad, x_ref.grad),
        _rel(layer.lora_A["default"].weight.grad, A.grad),
        _rel(layer.lora_B["default"].weight.grad, B.grad),
    ]
    print(f"{label}: relative errors (out, x, A, B) {[f'{e:.4f}' for e in errors]}")
    assert max(errors) < 2e-2, errors


def _peak_bytes(model, x, gy) -> int:
    import torch

    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    _forward_backward(model, x, gy)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def test_fused_4bit_peak_memory_not_above_peft():
    import torch

    from tuner.fast.lora_fused import fuse_lora, unfuse_lora

    model, _ = _lora_4bit()
    x = torch.randn(4, 2048, 1024, device="cuda", dtype=torch.bfloat16)
    gy = torch.randn(4, 2048, 2816, device="cuda", dtype=torch.bfloat16)
    _peak_bytes(model, x, gy)  # warm-up: cuBLAS workspaces and the like, outside the measurement
    ref = _peak_bytes(model, x, gy)
    fuse_lora(model)
    _peak_bytes(model, x, gy)
    fused = _peak_bytes(model, x, gy)
    unfuse_lora(model)
    print(f"peak above start, forward + backward: peft {ref / 2**20:.1f} MiB, fused {fused / 2**20:.1f} MiB")
    assert fused <= ref


def test_fused_qlora_llama_equals_peft(small_llama_dir):
    import torch

    from tuner.fast.lora_fused import fuse_lora, unfuse_lora
    from tuner.models.load import add_lora, load_model, release

    loaded = load_model(str(small_llama_dir), bits=4, precision="bf16")
    model = add_lora(loaded.model, r=16, alpha=32, dropout=0.0, quantized=True).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    ids = torch.randint(3, model.config.vocab_size, (2, 256), device="cuda")

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.item(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    try:
        ref_loss, ref_grads = loss_and_grads()
        assert fuse_lora(model) == 4 * 7  # 4 layers x (q, k, v, o, gate, up, down), all 4-bit
        loss, grads = loss_and_grads()
        unfuse_lora(model)
        assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 4 * 7
        worst = max(_rel(grads[n], ref_grads[n]) for n in grads)
        cosine = min(
            torch.cosine_similarity(grads[n].flatten(), ref_grads[n].flatten(), dim=0).item() for n in grads
        )
        print(
            f"qlora llama: loss peft {ref_loss:.5f} fused {loss:.5f}; LoRA grads: worst relative error "
            f"{worst:.4f}, lowest cosine {cosine:.6f}"
        )
        assert abs(loss - ref_loss) < 1e-2 * abs(ref_loss)
        assert worst < 1e-1 and cosine > 0.999
    finally:
        release(model, loaded)


def test_fused_4bit_regenerated_dropout_equals_saved_and_peaks_lower():
    """Three 4-bit LoRA layers reading one input, as q, k and v do: regenerating the dropout in
    backward gives the same gradients and keeps one input instead of three copies and masks."""
    import torch

    from tuner.fast.lora_fused import fuse_lora, set_dropout_regeneration

    layers = []
    for seed in range(3):
        model, layer = _lora_4bit(dropout=0.1)
        with torch.no_grad():  # distinct adapters: a mask regenerated for the wrong layer would show
            layer.lora_B["default"].weight.normal_(
                0, 0.02, generator=torch.Generator("cuda").manual_seed(seed)
            )
        assert fuse_lora(model) == 1
        layers.append((model, layer))
    x = torch.randn(4, 2048, 1024, device="cuda", dtype=torch.bfloat16)
    gy = torch.randn(4, 2048, 2816, device="cuda", dtype=torch.bfloat16)

    def step(regenerate):
        for model, _ in layers:
            assert set_dropout_regeneration(model, regenerate) == 1
            model.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_(True)
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.manual_seed(11)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs = [model(x_) for model, _ in layers]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        torch.autograd.backward(outs, [gy] * 3)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
        del outs
        grads = [x_.grad]
        for _, layer in layers:
            grads += [layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad]
        return peak, [g.clone() for g in grads], torch.cuda.get_rng_state()

    step(False)  # warm-up: cuBLAS workspaces and the like, outside the measurement
    step(True)
    saved_peak, saved_grads, saved_rng = step(False)
    regenerated_peak, regenerated_grads, regenerated_rng = step(True)
    print(
        f"backward peak above the start of the step, 3 layers sharing x: saved dropout "
        f"{saved_peak / 2**20:.1f} MiB, regenerated {regenerated_peak / 2**20:.1f} MiB"
    )
    for a, b in zip(regenerated_grads, saved_grads, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(regenerated_rng, saved_rng)
    assert regenerated_peak < saved_peak


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_dropout_grad_kernel_is_bit_identical_to_addcmul(dtype):
    import torch

    from tuner.fast.dropout_grad import add_masked_, kernel_applies

    dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for shape in [(4096, 4096), (1000, 4097)]:  # a full-size step and a ragged tail block
        out = torch.randn(shape, device="cuda", dtype=dtype, generator=generator)
        src = torch.randn(shape, device="cuda", dtype=dtype, generator=generator)
        keep = torch.rand(shape, device="cuda", generator=generator) > 0.1
        assert kernel_applies(out, src, keep)
        expected = out.clone().addcmul_(src, keep, value=1 / 0.9)
        scale = torch.tensor(1 / 0.9, dtype=torch.float32).item()
        rounded = torch.where(keep, (src.float() * scale) + out.float(), out.float()).to(dtype)
        fused = torch.where(keep, src.double() * scale + out.double(), out.double()).to(dtype)
        actual = add_masked_(out.clone(), src, keep, 1 / 0.9)
        print(
            f"{dtype} {shape}: differ from addcmul {(actual != expected).sum().item()}, "
            f"addcmul vs rounded-product {(rounded != expected).sum().item()}, vs fused {(fused != expected).sum().item()}"
        )
        assert torch.equal(actual, expected)
