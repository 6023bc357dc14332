"""The fused LoRA linear (tuner.fast.lora_fused) against peft's own forward, on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuner.fast import lora_fused
from tuner.fast.lora_fused import fuse_lora, set_dropout_regeneration, unfuse_lora


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # module weights and inputs drawn in the tests below


class TwoLinears(nn.Module):
    def __init__(self, bias: bool = False):
        super().__init__()
        self.q = nn.Linear(16, 24, bias=bias)
        self.o = nn.Linear(24, 16, bias=bias)

    def forward(self, x):
        return self.o(torch.tanh(self.q(x)))


class SharedInput(nn.Module):
    """Three linears reading one input, as a decoder layer's q, k and v projections do."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24, bias=False)
        self.k = nn.Linear(16, 8, bias=False)
        self.v = nn.Linear(16, 8, bias=False)

    def forward(self, x):
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


class OneLinear(nn.Module):
    def __init__(self, q: nn.Module):
        super().__init__()
        self.q = q

    def forward(self, x):
        return self.q(x)


def _lora(module: nn.Module, dropout: float = 0.0, seed: int = 0, targets=("q", "o")):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        module, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(targets))
    )
    _randomize_lora_B(model)
    return model.train()


def _randomize_lora_B(model):
    # peft starts B at zero, which would hide every bug in the LoRA branch
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


def _step(model, x):
    """Output, input grad and LoRA grads of one forward and backward of sum(out * fixed weights)."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    torch.manual_seed(1)
    (out.float() * torch.randn(out.shape)).sum().backward()
    return out.detach(), x.grad, _lora_grads(model)


def _assert_close(actual, expected, rtol):
    scale = expected.float().abs().max().clamp_min(1e-6)
    assert (actual.float() - expected.float()).abs().max() <= rtol * scale


def _compare(model, x, rtol, autocast=False):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return _step(model, x)

    ref_out, ref_gx, ref_grads = run()
    assert fuse_lora(model) == 2
    try:
        out, gx, grads = run()
    finally:
        unfuse_lora(model)
    assert out.dtype == ref_out.dtype and gx.dtype == ref_gx.dtype
    _assert_close(out, ref_out, rtol)
    _assert_close(gx, ref_gx, rtol)
    assert grads.keys() == ref_grads.keys() and len(grads) == 4
    for name, grad in grads.items():
        assert grad.dtype == ref_grads[name].dtype == torch.float32
        _assert_close(grad, ref_grads[name], rtol)


@pytest.fixture
def fused_calls(monkeypatch):
    """How many times the fused Function ran (the fallbacks must not run it)."""
    calls = []
    original = lora_fused._FusedLoraLinear.apply

    def counting(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(lora_fused._FusedLoraLinear, "apply", counting)
    return calls


@pytest.mark.parametrize("bias", [False, True])  # with bias: Qwen's q/k/v projections
def test_fused_equals_peft_in_fp32(bias, fused_calls):
    model = _lora(TwoLinears(bias=bias))
    _compare(model, torch.randn(2, 5, 16), rtol=1e-5)
    assert len(fused_calls) == 2


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_peft_under_bf16_autocast(model_dtype, fused_calls):
    model = _lora(TwoLinears(bias=True).to(model_dtype))  # LoRA weights stay fp32, as peft makes them
    _compare(model, torch.randn(2, 5, 16, dtype=model_dtype), rtol=3e-2, autocast=True)
    assert len(fused_calls) == 2


def _single_layer(dropout: float):
    model = _lora(TwoLinears(bias=True), dropout=dropout)
    return model, model.base_model.model.q


def test_dropout_gradients_follow_the_drawn_mask():
    p = 0.25
    _, layer = _single_layer(p)
    assert fuse_lora(layer) == 1
    x = torch.randn(3, 7, 16, requires_grad=True)
    out = layer(x)
    node = out.grad_fn.next_functions[0][0]  # the fused node, under the reshape to x's leading dims
    mask = node.saved_tensors[2].view(x.shape)
    gy = torch.randn(out.shape)
    out.backward(gy)
    assert mask.dtype == torch.bool

    # the same math by hand, on the mask the fused forward drew
    x_ref = x.detach().clone().requires_grad_(True)
    base = layer.base_layer
    A = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)
    B = layer.lora_B["default"].weight.detach().clone().requires_grad_(True)
    scale = layer.scaling["default"]
    ref = base(x_ref) + (x_ref * mask / (1 - p)) @ A.t() @ B.t() * scale
    ref.backward(gy)
    _assert_close(out.detach(), ref.detach(), 1e-5)
    _assert_close(x.grad, x_ref.grad, 1e-5)
    _assert_close(layer.lora_A["default"].weight.grad, A.grad, 1e-5)
    _assert_close(layer.lora_B["default"].weight.grad, B.grad, 1e-5)


def test_dropout_keeps_about_1_minus_p():
    p = 0.3
    _, layer = _single_layer(p)
    fuse_lora(layer)
    out = layer(torch.randn(64, 1024, 16))
    mask = out.grad_fn.next_functions[0][0].saved_tensors[2]
    assert abs(mask.float().mean().item() - (1 - p)) < 0.01


def test_dropout_in_eval_mode_is_peft_exactly(fused_calls):
    model, _ = _single_layer(0.3)
    model.eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = model(x)
        fuse_lora(model)
        assert torch.equal(model(x), ref)
    assert not fused_calls


def test_no_grad_in_training_mode_is_fused_and_equals_the_grad_forward(fused_calls):
    # reentrant checkpointing's first forward runs so; its recomputation must draw the same mask
    model, _ = _single_layer(0.3)
    fuse_lora(model)
    x = torch.randn(2, 5, 16)
    torch.manual_seed(3)
    with torch.no_grad():
        first = model(x)
    torch.manual_seed(3)
    assert torch.equal(model(x).detach(), first)
    assert len(fused_calls) == 4


def _fallback_model():
    from peft import LoraConfig

    model = _lora(TwoLinears(bias=True))
    model.add_adapter("other", LoraConfig(r=2, lora_alpha=2, target_modules=["q", "o"]))
    _randomize_lora_B(model)
    return model


def _merged(model, x):
    model.merge_adapter()
    try:
        return _step(model, x)[0]
    finally:
        model.unmerge_adapter()


def _adapters_disabled(model, x):
    with model.disable_adapter():
        return _step(model, x)[0]


def _two_adapters(model, x):
    model.base_model.set_adapter(["default", "other"])
    try:
        return _step(model, x)
    finally:
        model.base_model.set_adapter("default")


def _eval(model, x):
    model.eval()
    try:
        return model(x)
    finally:
        model.train()


def _adapter_names(model, x):
    return model.base_model.model.q(x, adapter_names=["default", "other"])


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("case", [_eval, _merged, _adapters_disabled, _two_adapters, _adapter_names])
def test_fallbacks_are_peft_exactly(case, fused_calls):
    model = _fallback_model()
    x = torch.randn(2, 5, 16)
    ref = case(model, x)
    fuse_lora(model)
    fused = case(model, x)
    for a, b in zip(_as_tuple(ref), _as_tuple(fused), strict=True):
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.equal(a, b)
    assert not fused_calls


def test_trainable_base_weight_is_not_fused(fused_calls):
    model = _lora(TwoLinears())
    model.base_model.model.q.base_layer.weight.requires_grad_(True)
    fuse_lora(model)
    _step(model, torch.randn(2, 5, 16))
    assert len(fused_calls) == 1  # o only


def test_fuse_is_idempotent_and_unfuse_restores(fused_calls):
    model = _lora(TwoLinears())
    x = torch.randn(2, 5, 16)
    ref = _step(model, x)
    assert fuse_lora(model) == 2
    assert fuse_lora(model) == 2
    _step(model, x)
    assert len(fused_calls) == 2  # one per layer: not wrapped twice
    assert unfuse_lora(model) == 2
    assert unfuse_lora(model) == 0
    for layer in (model.base_model.model.q, model.base_model.model.o):
        assert "forward" not in layer.__dict__
    again = _step(model, x)
    assert len(fused_calls) == 2
    assert torch.equal(again[0], ref[0]) and torch.equal(again[1], ref[1])


def test_fuse_keeps_an_instance_forward(fused_calls):
    model = _lora(TwoLinears())
    layer = model.base_model.model.q
    own = layer.forward  # an instance-level forward (as accelerate's hooks install) must come back
    layer.forward = own
    fuse_lora(model)
    unfuse_lora(model)
    assert layer.__dict__["forward"] is own


def _tiny_llama(tokenizer, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    from tests.tiny import build_model

    model = build_model("llama", tokenizer)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(model, config)
    _randomize_lora_B(model)
    with torch.no_grad():  # smaller B: a loss near its start, so the steps below have room to lower it
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    return model.train()


def _llama_loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), _lora_grads(model)


def test_tiny_llama_fused_equals_peft_and_trains(tiny_tokenizer, fused_calls):
    model = _tiny_llama(tiny_tokenizer)
    torch.manual_seed(0)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 24))
    ref_loss, ref_grads = _llama_loss_and_grads(model, ids)
    assert fuse_lora(model) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    loss, grads = _llama_loss_and_grads(model, ids)
    assert len(fused_calls) == 14
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 28
    for name, grad in grads.items():
        _assert_close(grad, ref_grads[name], 1e-4)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss, _ = _llama_loss_and_grads(model, ids)
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0] - 0.3, (
        losses
    )


@pytest.mark.parametrize("regenerate", [False, True])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_recomputes_the_same_dropout(tiny_tokenizer, reentrant, regenerate, fused_calls):
    # the reentrant kind's first forward runs under no_grad; fused there too, both passes take the
    # same path and so draw the same masks (peft's and the fused dropout draw different ones on CUDA)
    model = _tiny_llama(tiny_tokenizer, dropout=0.2)
    fuse_lora(model)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 24))
    torch.manual_seed(5)
    ref_loss, ref_grads = _llama_loss_and_grads(model, ids)
    model.base_model.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": reentrant}
    )
    model.base_model.model.enable_input_require_grads()
    assert set_dropout_regeneration(model, regenerate) == 14
    torch.manual_seed(5)
    del fused_calls[:]
    loss, grads = _llama_loss_and_grads(model, ids)
    assert len(fused_calls) == 28  # the forward and the recomputation
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    for name, grad in grads.items():
        _assert_close(grad, ref_grads[name], 1e-5)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])  # float32: peft's k-bit upcast
def test_4bit_base_on_cpu_equals_peft(x_dtype, fused_calls):
    """bitsandbytes' CPU backend, where it has one (tests/gpu covers CUDA and memory)."""
    bnb = pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    dense = nn.Linear(64, 96, bias=True).to(torch.bfloat16)
    base = bnb.nn.Linear4bit(64, 96, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4")
    base.weight = bnb.nn.Params4bit(
        dense.weight.data, compress_statistics=True, quant_type="nf4", module=base
    )
    base.bias = nn.Parameter(dense.bias.data, requires_grad=False)
    try:
        base = base.to("cpu")  # quantizes
    except Exception as error:  # any failure: no usable CPU backend
        pytest.skip(f"bitsandbytes cannot quantize on the CPU: {error}")
    if getattr(base.weight, "quant_state", None) is None:
        pytest.skip("bitsandbytes did not quantize on the CPU")

    holder = OneLinear(base)
    holder.is_loaded_in_4bit = True  # as transformers marks a 4-bit model; peft picks its bnb layer by it
    model = get_peft_model(holder, LoraConfig(r=4, lora_alpha=8, target_modules=["q"]))
    assert type(model.base_model.model.q) is LoraLinear4bit
    _randomize_lora_B(model)
    model.train()
    x = torch.randn(2, 5, 64, dtype=x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _step(model, x)
        assert fuse_lora(model) == 1
        fused = _step(model, x)
    assert len(fused_calls) == 1
    for a, b in zip(fused[:2], ref[:2], strict=True):
        assert a.dtype == b.dtype == x_dtype
        _assert_close(a, b, 3e-2)
    for name, grad in fused[2].items():
        _assert_close(grad, ref[2][name], 3e-2)


def _shared_input_model(dropout: float = 0.1):
    return _lora(SharedInput(), dropout=dropout, targets=("q", "k", "v"))


def _seeded_step(model, x, seed: int = 4, autocast: bool = False):
    """_step with the dropout masks drawn from ``seed``."""
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return _step(model, x)


def _assert_equal_steps(actual, expected):
    for a, b in zip(actual[:2], expected[:2], strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert actual[2].keys() == expected[2].keys() and len(actual[2]) == 6
    for name, grad in actual[2].items():
        assert torch.equal(grad, expected[2][name]), name


# bf16 autocast over an fp32 input: the cast input is a copy, kept instead of the input
@pytest.mark.parametrize("autocast", [False, True])
def test_regenerated_dropout_equals_saved_dropout_exactly(autocast, fused_calls):
    model = _shared_input_model()
    x = torch.randn(2, 5, 16)
    assert fuse_lora(model) == 3
    saved = _seeded_step(model, x, autocast=autocast)
    assert set_dropout_regeneration(model, True) == 3
    regenerated = _seeded_step(model, x, autocast=autocast)
    assert len(fused_calls) == 6
    _assert_equal_steps(regenerated, saved)
    other_seed = _seeded_step(model, x, seed=5, autocast=autocast)
    assert not torch.equal(other_seed[0], saved[0])  # the masks do depend on the seed


def test_regeneration_is_set_by_fuse_lora_and_unset(fused_calls):
    model = _shared_input_model()
    x = torch.randn(2, 5, 16)
    assert fuse_lora(model, regenerate_dropout=True) == 3
    regenerated = _seeded_step(model, x)
    assert set_dropout_regeneration(model, False) == 3
    saved = _seeded_step(model, x)
    _assert_equal_steps(regenerated, saved)
    assert set_dropout_regeneration(model.base_model.model.q, True) == 1  # one module's layers
    assert fuse_lora(model, regenerate_dropout=True) == 3  # already fused: their setting stays
    assert [layer.forward.args[6] for layer in _lora_layers(model)] == [True, False, False]
    assert unfuse_lora(model) == 3
    assert set_dropout_regeneration(model, True) == 0
    assert len(fused_calls) == 6


def _lora_layers(model):
    return [model.base_model.model.q, model.base_model.model.k, model.base_model.model.v]


def test_regeneration_refuses_a_forward_replaced_after_fusing():
    model = _shared_input_model()
    fuse_lora(model)
    layer = model.base_model.model.q
    fused = layer.forward
    layer.forward = lambda x: fused(x)
    with pytest.raises(RuntimeError, match="replaced after fuse_lora"):
        set_dropout_regeneration(model, True)


def _saved_bytes(model, x, exclude) -> int:
    """Bytes of the distinct storages saved for backward by one forward, but those in ``exclude``."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    out.sum().backward()
    return sum(size for ptr, size in storages.items() if ptr not in exclude)


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_regeneration_keeps_one_input_for_the_layers_sharing_it(dropout):
    model = _shared_input_model(dropout)
    fuse_lora(model)
    params = {param.untyped_storage().data_ptr() for param in model.parameters()}
    x = torch.randn(2, 5, 16, requires_grad=True)
    saved = _saved_bytes(model, x, params)
    set_dropout_regeneration(model, True)
    regenerated = _saved_bytes(model, x, params)

    tokens, layers, rank = 2 * 5, 3, 4
    x_bytes = tokens * 16 * 4  # fp32, as xd is
    h_bytes = tokens * rank * 4
    mask_bytes = tokens * 16  # bool
    print(f"dropout {dropout}: saved activation bytes {saved} without regeneration, {regenerated} with")
    if dropout == 0:  # nothing to regenerate: every layer keeps x itself
        assert saved == regenerated == x_bytes + layers * h_bytes
        return
    assert saved == layers * (x_bytes + mask_bytes + h_bytes)  # 2880
    assert regenerated == x_bytes + layers * h_bytes  # 1120
    assert saved - regenerated == 2 * x_bytes + layers * mask_bytes


def test_regeneration_leaves_the_generator_where_saved_dropout_does():
    model = _shared_input_model()
    fuse_lora(model)
    x = torch.randn(2, 5, 16, requires_grad=True)
    gy = torch.randn(2, 5, 40)

    def after_step(regenerate):
        set_dropout_regeneration(model, regenerate)
        torch.manual_seed(7)
        model(x).backward(gy)
        return torch.get_rng_state(), torch.rand(100)

    saved_state, saved_next = after_step(False)
    regenerated_state, regenerated_next = after_step(True)
    assert torch.equal(regenerated_state, saved_state)
    assert torch.equal(regenerated_next, saved_next)


def test_regeneration_under_reentrant_checkpointing_equals_no_checkpointing():
    from torch.utils.checkpoint import checkpoint

    model = _shared_input_model()
    fuse_lora(model, regenerate_dropout=True)
    x = torch.randn(2, 5, 16)

    def step(checkpointed):
        model.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_(True)
        torch.manual_seed(9)
        out = checkpoint(model, x_, use_reentrant=True) if checkpointed else model(x_)
        torch.manual_seed(1)
        out.backward(torch.randn(out.shape))
        return out.detach(), x_.grad, _lora_grads(model)

    _assert_equal_steps(step(True), step(False))
