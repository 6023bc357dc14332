"""PyTorch's varlen flash kernel for packed rows (tuner.fast.attention) against SDPA with a block mask."""

from __future__ import annotations

import functools

import pytest

pytestmark = pytest.mark.gpu


def _packed_batch(vocab: int, lengths: list[int], device: str):
    import torch

    from tuner.data.pack import PackedCollator, pack_row

    generator = torch.Generator().manual_seed(0)
    samples = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": ids})
    batch = PackedCollator(boundaries=True)([pack_row(samples)])
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("kv_heads", [16, 4])  # multi-head and grouped-query attention
def test_varlen_kernel_equals_block_mask_sdpa(kv_heads):
    import torch

    from tests.tiny import SMALL_GPU_SIZES, build_model, build_tokenizer
    from tuner.fast import attention

    assert attention.unavailable_reason() is None, attention.unavailable_reason()
    tokenizer = build_tokenizer()
    sizes = dict(SMALL_GPU_SIZES, num_key_value_heads=kv_heads)
    model = build_model("llama", tokenizer, **sizes).to("cuda", torch.bfloat16).train()
    batch = _packed_batch(len(tokenizer), [300, 17, 512, 150, 45], "cuda")
    calls = []
    kernel = attention.varlen_kernel()
    original = kernel[0]

    @functools.wraps(original)  # keeps the signature varlen_kernel() inspects
    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    model.set_attn_implementation("sdpa")  # transformers builds the block mask from position ids
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    attention.register()
    model.set_attn_implementation(attention.NAME)
    attention.varlen_kernel.cache_clear()
    try:
        import torch.nn.attention.varlen as varlen_module

        varlen_module.varlen_attn, saved = counting, varlen_module.varlen_attn
        loss, grads = _loss_and_grads(model, batch)
    finally:
        varlen_module.varlen_attn = saved
        attention.varlen_kernel.cache_clear()
    assert len(calls) == sizes["num_hidden_layers"]  # the kernel ran, once per layer
    print(f"kv_heads {kv_heads}: loss sdpa {ref_loss:.5f} varlen {loss:.5f}")
    assert loss == pytest.approx(ref_loss, abs=2e-2)
    for name, ref in ref_grads.items():
        cosine = torch.nn.functional.cosine_similarity(grads[name].flatten(), ref.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))

    # not vacuous: one boundary less (two samples merged) changes the loss
    merged = dict(batch, cu_seq_lens_q=batch["cu_seq_lens_q"][[0, 2, 3, 4, 5]])
    merged["cu_seq_lens_k"] = merged["cu_seq_lens_q"]
    merged["max_length_q"] = merged["max_length_k"] = 512
    with torch.no_grad():
        leaky = model(**merged, use_cache=False).loss.item()
    assert abs(leaky - loss) > 1e-3


def test_training_picks_varlen_without_flash_attn(small_llama_dir, workspace):
    import importlib.util

    from tests.gpu.common import gpu_config, write_gpu_data
    from tuner.fast import attention
    from tuner.train.data import make_collator
    from tuner.train.model import build_model

    if importlib.util.find_spec("flash_attn"):
        pytest.skip("flash-attn installed: transformers' own varlen path is used")
    config = gpu_config(small_llama_dir, write_gpu_data(workspace), method="qlora")
    model, loaded = build_model(config)
    assert loaded.attention == attention.NAME
    assert model.config._attn_implementation == attention.NAME
    assert make_collator(type("T", (), {"pad_token_id": 0})(), True, loaded.attention).boundaries
    print("training attention:", loaded.describe())


@pytest.mark.parametrize("kv_heads", [16, 4])
def test_a_one_sample_row_runs_cudnn_and_equals_the_varlen_kernel(kv_heads, monkeypatch):
    # register(cudnn_one_sample=True) (the default): a row that is one sample runs SDPA's cuDNN kernel (seen in
    # the profiler's kernel names) and gives the varlen flash kernel's loss and gradients.
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tests.tiny import SMALL_GPU_SIZES, build_model, build_tokenizer
    from tuner.fast import attention

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("cuDNN attention is used on Hopper or newer only")
    tokenizer = build_tokenizer()
    sizes = dict(SMALL_GPU_SIZES, num_key_value_heads=kv_heads)
    model = build_model("llama", tokenizer, **sizes).to("cuda", torch.bfloat16).train()
    attention.register()
    model.set_attn_implementation(attention.NAME)
    for length in (77, 1000):
        batch = _packed_batch(len(tokenizer), [length], "cuda")
        results, kernels = {}, {}
        for mode in ("off", "on"):
            attention.register(cudnn_one_sample=mode == "on")
            assert attention.cudnn_for_one_sample() is (mode == "on")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                results[mode] = _loss_and_grads(model, batch)
                torch.cuda.synchronize()
            kernels[mode] = " ".join(e.name.lower() for e in prof.events())
        assert "cudnn" in kernels["on"] and "cudnn" not in kernels["off"], kernels["on"][:3000]
        (ref_loss, ref_grads), (loss, grads) = results["off"], results["on"]
        print(f"kv_heads {kv_heads}, {length} tokens: loss varlen {ref_loss:.5f} cudnn {loss:.5f}")
        assert loss == pytest.approx(ref_loss, abs=2e-2)
        for name, ref in ref_grads.items():
            cosine = torch.nn.functional.cosine_similarity(grads[name].flatten(), ref.flatten(), dim=0)
            assert cosine > 0.99, (name, float(cosine))
