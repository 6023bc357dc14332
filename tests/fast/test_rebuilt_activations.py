"""Cheap activations rebuilt in backward (tuner.fast.rebuilt_activations), on the CPU: the MLPs it
knows by their code, the same loss and the same gradients bit for bit, the rebuilt tensors freed after
forward, checkpointed layers left alone, inputs changed in place refused, and remove() undoing it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from tuner.fast import rebuilt_activations
from tuner.fast.lora_fused import fuse_lora
from tuner.models.layers import decoder_layers


def _model(fused: bool = True, dropout: float = 0.0, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import TINY_FAMILY_SIZES

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_FAMILY_SIZES, vocab_size=128)).to(dtype)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False
    )
    model = get_peft_model(model, lora)
    if fused:
        fuse_lora(model)
    return model.train()


def _step(model, rebuild: bool, autocast: bool = False, every_norm: bool = True):
    """One forward and backward: (loss, LoRA gradients, whether each watched activation outlived the
    forward). Watched: both norm outputs and the MLP's gated product of every layer."""
    layers = decoder_layers(model)
    if rebuild:
        keeps = (lambda norm: True) if every_norm else rebuilt_activations.keeps_its_input
        assert rebuilt_activations.rebuild_activations(layers, norm_keeps_input=keeps) == len(layers)
    watched = []
    for layer in layers:
        layer.input_layernorm.register_forward_hook(lambda m, a, out: watched.append(weakref.ref(out)))
        layer.post_attention_layernorm.register_forward_hook(
            lambda m, a, out: watched.append(weakref.ref(out))
        )
        layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: watched.append(weakref.ref(args[0])))
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (1, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    gc.collect()
    alive = [ref() is not None for ref in watched]
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, alive


def test_it_knows_llama_style_mlps_by_their_code_and_nothing_else():
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config
    from transformers.models.gemma.modeling_gemma import GemmaMLP
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.mistral.modeling_mistral import MistralMLP
    from transformers.models.phi3.modeling_phi3 import Phi3Config, Phi3MLP
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    small = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1)
    for mlp_class, config_class in [
        (LlamaMLP, LlamaConfig),
        (MistralMLP, MistralConfig),
        (Qwen2MLP, Qwen2Config),
        (GemmaMLP, GemmaConfig),
    ]:
        mlp = mlp_class(config_class(**small))
        product = rebuilt_activations.gated_product(mlp)
        gate, up = torch.randn(3, 16), torch.randn(3, 16)
        assert product is not None, mlp_class
        assert torch.equal(product(gate, up), mlp.act_fn(gate) * up)

    class Scaled(LlamaMLP):  # another computation under the same names
        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x) * 2)

    assert rebuilt_activations.gated_product(Scaled(LlamaConfig(**small))) is None
    assert rebuilt_activations.gated_product(Phi3MLP(Phi3Config(**small))) is None  # gate and up fused
    # transformers' RMSNorm keeps no input of its own: rebuilding its output would keep as much
    layer = _model().base_model.model.model.layers[0]
    assert not rebuilt_activations.keeps_its_input(layer.input_layernorm)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_the_same_loss_and_gradients_with_the_activations_freed_after_forward(autocast):
    # under autocast as training runs it: a 16-bit model (an fp32 one's norms would give fp32
    # outputs, which the LoRA casts to a copy of its own, and nothing would be kept to free)
    dtype = torch.bfloat16 if autocast else torch.float32
    loss, grads, alive = _step(_model(dtype=dtype), rebuild=False, autocast=autocast)
    rebuilt_loss, rebuilt_grads, rebuilt_alive = _step(_model(dtype=dtype), rebuild=True, autocast=autocast)
    # kept for backward without it (both norms by q/k/v and gate/up, the product by down's LoRA) ...
    assert all(alive) and len(alive) == 6
    # ... freed with it, rebuilt in backward bit for bit
    assert not any(rebuilt_alive)
    assert torch.equal(loss, rebuilt_loss)
    assert grads.keys() == rebuilt_grads.keys() and len(grads) == 2 * 7 * 2
    for name, grad in grads.items():
        assert torch.equal(grad, rebuilt_grads[name]), name


def test_peft_s_own_forward_and_transformers_norms_free_the_product_only():
    # unfused LoRA saves the same inputs; transformers' RMSNorm outputs are not rebuilt by default
    loss, grads, _ = _step(_model(fused=False), rebuild=False)
    rebuilt_loss, rebuilt_grads, alive = _step(_model(fused=False), rebuild=True, every_norm=False)
    assert torch.equal(loss, rebuilt_loss)
    assert all(torch.equal(grads[name], rebuilt_grads[name]) for name in grads)
    # per layer: input norm, post-attention norm kept; product freed
    assert alive == [True, True, False] * 2


def test_checkpointed_layers_are_left_alone_and_remove_undoes_it():
    model = _model()
    layers = decoder_layers(model)
    layers[0].gradient_checkpointing = True
    own = layers[1].forward
    assert rebuilt_activations.rebuild_activations(layers, norm_keeps_input=lambda norm: True) == 1
    assert "forward" not in layers[0].__dict__ and layers[1].forward is not own
    assert rebuilt_activations.rebuild_activations(layers) == 1  # idempotent
    assert rebuilt_activations.remove(layers) == 1
    assert layers[1].forward == own and "forward" not in layers[1].mlp.__dict__
    layers[0].gradient_checkpointing = False
    _, _, alive = _step(model, rebuild=False)
    assert all(alive)  # no hook left behind


def test_an_input_changed_in_place_before_backward_is_refused():
    x = torch.randn(4, 8, requires_grad=True)
    offers = rebuilt_activations._Offers()
    with torch.autograd.graph.saved_tensors_hooks(offers.pack, rebuilt_activations._unpack):
        base = x * 2  # the producer, whose input ``x`` is what it is rebuilt from
        offers.offer(base, lambda: x * 2, (x,))
        out = base.sin()  # saves ``base``: the recipe is stored instead
    del base
    with torch.no_grad():
        x.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_only_the_live_offered_output_and_its_views_of_its_dtype_are_rebuilt():
    offers = rebuilt_activations._Offers()
    source = torch.randn(4, 8)
    made = source * 2
    offers.offer(made, lambda: source * 2, (source,))
    assert isinstance(offers.pack(made[1:]), rebuilt_activations._Saved)
    reinterpreted = made.view(torch.int32)  # a reinterpretation is kept as it is
    assert offers.pack(reinterpreted) is reinterpreted
    del reinterpreted
    # a tensor at the same address once the offered output is gone (here it shares the storage, as
    # a later tensor reusing freed memory would share the address) is kept, never rebuilt
    same_address = torch.empty(0).set_(made.untyped_storage(), 0, (4, 8))
    del made
    gc.collect()
    assert offers.pack(same_address) is same_address


def test_a_view_of_an_offered_output_comes_back_as_the_same_view():
    x = torch.randn(6, 8, requires_grad=True)
    offers = rebuilt_activations._Offers()
    with torch.autograd.graph.saved_tensors_hooks(offers.pack, rebuilt_activations._unpack):
        made = torch.nn.functional.silu(x)
        offers.offer(made, lambda: torch.nn.functional.silu(x), (x,))
        weight = torch.randn(5, 8, requires_grad=True)
        out = nn.functional.linear(made[2:].reshape(-1, 8), weight)  # saves a view with an offset
    expected = torch.autograd.grad(out.sum(), weight, retain_graph=True)[0]
    assert torch.equal(expected, torch.ones(4, 5).t() @ torch.nn.functional.silu(x)[2:])


# Stand-ins with the names and the saved tensors of Liger's kernels (which need a GPU): its RMSNorm keeps
# its input and its SwiGLU keeps gate and up, and Liger binds their forwards onto transformers' modules.
class LigerSiLUMulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        return grad * up * sig * (1 + gate * (1 - sig)), grad * nn.functional.silu(gate)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x.float() * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            out = (x.float() * rstd).to(x.dtype) * weight
            return torch.autograd.grad(out, x, grad)[0], None, None


class LigerSwiGLUMLP(nn.Module):
    def forward(self, x):
        return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x)))


class LigerRMSNorm(nn.Module):
    def forward(self, hidden_states):
        return _RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)


def _as_liger(model):
    import types

    for layer in decoder_layers(model):
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.forward = types.MethodType(LigerRMSNorm.forward, norm)
        layer.mlp.forward = types.MethodType(LigerSwiGLUMLP.forward, layer.mlp)
    return model


def test_liger_s_kernels_as_liger_binds_them_are_recognised_and_rebuilt():
    layer = decoder_layers(_as_liger(_model()))[0]
    assert rebuilt_activations.keeps_its_input(layer.input_layernorm)
    assert rebuilt_activations.gated_product(layer.mlp) == LigerSiLUMulFunction.apply
    loss, grads, alive = _step(_as_liger(_model()), rebuild=False)
    rebuilt_loss, rebuilt_grads, rebuilt_alive = _step(_as_liger(_model()), rebuild=True, every_norm=False)
    assert all(alive) and not any(rebuilt_alive)
    assert torch.equal(loss, rebuilt_loss)
    assert all(torch.equal(grads[name], rebuilt_grads[name]) for name in grads)
