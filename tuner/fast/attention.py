"""Padding-free attention for packed training rows without the flash-attn package.

A packed row holds many samples; each must attend only to itself. flash-attn reads the sample
boundaries as "varlen" sequences, but it has no wheel for most setups. transformers' SDPA path
instead builds a dense (row x row) block mask from the position ids, which SDPA's flash kernel
cannot take, so attention over a 16k-token row of 512-token samples costs as much as one 16k-token
sample and a 16k x 16k mask. PyTorch (2.10+) ships the flash kernel's varlen entry point itself:
``torch.nn.attention.varlen.varlen_attn``. This module registers it with transformers as the
attention implementation :data:`NAME`, used for training on CUDA when flash-attn is absent.

Sample boundaries come from the batch: :class:`tuner.data.pack.PackedCollator` adds
``cu_seq_lens_q`` / ``max_length_q`` (the names transformers' flash-attention path reads too),
computed on the host so no step waits on the GPU to find them. Without them they are derived from
``position_ids`` (each sample restarts at 0). Anything the varlen kernel does not cover (a CPU, a
padding mask, dropout, sliding windows, soft-capping, a KV cache) goes to SDPA with an explicit
block-causal mask, so the result is the same, only slower. A row that is one sample goes to SDPA's
cuDNN kernel on Hopper, faster there than the flash kernel (:func:`cudnn_for_one_sample`).
"""

from __future__ import annotations

import functools
import inspect
import logging

log = logging.getLogger(__name__)

NAME = "tuner_varlen"


@functools.cache
def varlen_kernel():
    """(varlen_attn, extra kwargs making it causal, whether it takes enable_gqa), or None where
    this torch has no varlen attention. The causal switch moved between releases: ``is_causal``
    in 2.9, ``window_size=(-1, 0)`` (no limit left, none right) from 2.10."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    return varlen_attn, causal, "enable_gqa" in params


def unavailable_reason() -> str | None:
    """Why :data:`NAME` cannot run its kernel here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if varlen_kernel() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (2.10 or newer has)"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"GPU compute capability {major}.x is below 8.0 (flash kernels need Ampere or newer)"
    return None


def boundaries_from_position_ids(position_ids) -> tuple:
    """(cu_seq_lens int32 [samples + 1], longest sample) of ONE packed row; each sample starts where
    its position id is 0. Reads the tensor on the host (a sync): the collator's precomputed
    values avoid that.

    >>> import torch
    >>> cu, longest = boundaries_from_position_ids(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    >>> cu.tolist(), longest
    ([0, 3, 5, 6], 3)
    """
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max())


def block_causal_mask(position_ids, kv_length: int):
    """Boolean (batch, 1, q, kv) mask: causal, and no token sees another sample of its row."""
    import torch

    segment = torch.cumsum((position_ids == 0).to(torch.int32), dim=-1)  # sample index per token
    same = segment[:, :, None] == segment[:, None, :]
    q_length = position_ids.shape[-1]
    causal = torch.ones(q_length, kv_length, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None]


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def packed_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
):
    """transformers attention function (query/key/value: batch, heads, seq, head_dim; returns
    batch, seq, heads, head_dim) that keeps the samples of a packed row apart."""
    import torch

    q_length, kv_length = query.shape[2], key.shape[2]
    position_ids = kwargs.pop("position_ids", None)
    cu = kwargs.pop("cu_seq_lens_q", None)
    longest = kwargs.pop("max_length_q", None)
    for key_name in ("cu_seq_lens_k", "max_length_k"):
        kwargs.pop(key_name, None)
    extra = dict(dropout=dropout, scaling=scaling, **kwargs)
    if attention_mask is not None or q_length != kv_length:
        return _sdpa(module, query, key, value, attention_mask, **extra)  # padding mask or KV cache
    kernel = varlen_kernel()
    usable = (
        kernel is not None
        and query.is_cuda
        and query.shape[0] == 1
        and not dropout
        and sliding_window is None
        and softcap is None
        and query.shape[-1] <= 256
    )
    if not usable:
        if position_ids is None:
            return _sdpa(module, query, key, value, None, **extra)  # one sample per row: plain causal
        if position_ids.shape[0] != query.shape[0]:
            position_ids = position_ids.expand(query.shape[0], -1)
        return _sdpa(module, query, key, value, block_causal_mask(position_ids, kv_length), **extra)
    varlen_attn, causal, takes_gqa = kernel
    if cu is None:
        if position_ids is None:
            cu = torch.tensor([0, q_length], dtype=torch.int32, device=query.device)
            longest = q_length
        else:
            cu, longest = boundaries_from_position_ids(position_ids)
            cu = cu.to(query.device)
    dtype = query.dtype
    half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    if cu.shape[0] == 2 and cudnn_for_one_sample():  # the row is one sample (a host-known shape)
        return _one_sample_causal(query.to(half), key.to(half), value.to(half), scaling).to(dtype), None
    # varlen takes (tokens, heads, head_dim); the flash kernel needs the last dim contiguous
    q, k, v = (t[0].transpose(0, 1).to(half).contiguous() for t in (query, key, value))
    gqa = {}
    if k.shape[1] != q.shape[1]:
        if takes_gqa:
            gqa = {"enable_gqa": True}
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    out = varlen_attn(q, k, v, cu, cu, int(longest), int(longest), scale=scaling, **causal, **gqa)
    return out.to(dtype).unsqueeze(0), None


def cudnn_for_one_sample() -> bool:
    """Whether a row holding one sample goes to SDPA's cuDNN kernel instead of the varlen flash kernel
    (``register(cudnn_one_sample=...)``, on by default). Why: on Hopper cuDNN's fused attention runs a causal 4096-token sample's
    forward and backward in 1.09 ms against the flash kernel's 1.98 ms (H200, 32 heads of 128, with or
    without grouped KV heads: bench/probes/attention_kernels.py, bench/history/benchmarks-2026-11.md), and PyTorch's varlen
    entry point has only the flash kernel. Long rows are often one sample (long documents, rows of
    incremental pretraining, single long conversations). Hopper or newer only: that is where it was
    measured to pay."""
    return _options["cudnn_one_sample"] and _cudnn_here()  # called per layer: the GPU check is cached


@functools.cache
def _cudnn_here() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    return torch.backends.cudnn.is_available() and torch.cuda.get_device_capability()[0] >= 9


def _one_sample_causal(query, key, value, scaling):
    """Causal attention over one sample (batch, heads, seq, head_dim in; batch, seq, heads, head_dim
    out) through SDPA with cuDNN first; SDPA falls back to its flash kernel where cuDNN declines."""
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    with sdpa_kernel(order, set_priority=True):
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, **gqa)
    return out.transpose(1, 2)


def _mask_for_packed(*args, **kwargs):
    """Mask builder for :data:`NAME`: none for unpadded rows (the attention function finds the
    samples itself), SDPA's mask when there is padding."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def _skip_packed_scan() -> None:
    """Spare :data:`NAME`'s unpadded rows transformers' scan for packed samples.

    With no attention mask and no cache, transformers' mask preparation looks for packed samples in
    the position ids, and decides with a host read of a GPU tensor: a device sync at the start of
    every forward, after which the GPU idles while the host launches the layers. For :data:`NAME`
    that scan's result is never used: its mask builder returns no mask for unpadded rows, and the
    attention function takes the samples from the collator's boundaries (or the position ids it
    gets itself). So such calls see no position ids here (``register(skip_packed_scan=...)``). transformers'
    private helper is wrapped where it exists; where it does not, nothing changes but the sync."""
    from transformers import masking_utils

    original = getattr(masking_utils, "_preprocess_mask_arguments", None)
    if original is None or getattr(original, "tuner_wrapped", False):
        return
    signature = inspect.signature(original)
    if "position_ids" not in signature.parameters:
        return

    @functools.wraps(original)
    def preprocess(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        config, mask = bound.arguments.get("config"), bound.arguments.get("attention_mask")
        cache = bound.arguments.get("cache", bound.arguments.get("past_key_values"))
        if (
            getattr(config, "_attn_implementation", None) == NAME
            and mask is None
            and cache is None
            and _options["skip_packed_scan"]
        ):
            bound.arguments["position_ids"] = None
        return original(*bound.args, **bound.kwargs)

    preprocess.tuner_wrapped = True
    masking_utils._preprocess_mask_arguments = preprocess


# Sub-pieces of this attention, chosen when it is registered (tests and bench ablate them; a run keeps
# the defaults): cuDNN for one-sample rows on Hopper, and skipping transformers' packed-sample scan.
_options = {"cudnn_one_sample": True, "skip_packed_scan": True}


def register(*, cudnn_one_sample: bool = True, skip_packed_scan: bool = True) -> str:
    """Make :data:`NAME` a transformers attention implementation with these sub-pieces; returns the name."""
    _options.update(cudnn_one_sample=bool(cudnn_one_sample), skip_packed_scan=bool(skip_packed_scan))
    return _register_once()


@functools.cache
def _register_once() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, _mask_for_packed)
    _skip_packed_scan()
    return NAME


def use_varlen_attention(
    model, *, cudnn_one_sample: bool = True, skip_packed_scan: bool = True
) -> tuple[bool, str]:
    """Switch a loaded model (SDPA) to :data:`NAME` when the kernel can run and the model routes
    attention through transformers' interface (sub-pieces as in :func:`register`). Returns (switched, why)."""
    reason = unavailable_reason()
    if reason:
        return False, reason
    current = getattr(model.config, "_attn_implementation", None)
    if current != "sdpa":
        return False, f"the model uses {current} attention"
    if not getattr(model, "_supports_attention_backend", False):
        return False, f"{type(model).__name__} does not take pluggable attention"
    register(cudnn_one_sample=cudnn_one_sample, skip_packed_scan=skip_packed_scan)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("varlen attention not set (%s); staying on sdpa", exc)
        return False, f"transformers refused it: {exc}"
    return True, "PyTorch's varlen flash kernel (flash-attn not installed)"
