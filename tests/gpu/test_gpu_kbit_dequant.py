"""bitsandbytes' 4-bit weights dequantized by tuner.fast.kbit_dequant: bit for bit bitsandbytes' own result,
through the direct kernel calls (not the fallback) for the layouts a QLoRA model holds."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "single-quant"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
def test_direct_dequantization_equals_bitsandbytes(nested, quant_type, dtype_name):
    import bitsandbytes.functional as bnb_functional
    import torch

    from tuner.fast import kbit_dequant

    dtype = getattr(torch, dtype_name)
    weight = torch.randn(
        4096, 1376, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(0)
    )
    packed, state = bnb_functional.quantize_4bit(weight, quant_type=quant_type, compress_statistics=nested)
    assert kbit_dequant._direct_kernels(packed, state) is not None  # not the fallback
    expected = bnb_functional.dequantize_4bit(packed, state)
    got = kbit_dequant.dequantize_4bit(packed, state)
    assert got.dtype == expected.dtype == dtype and got.shape == expected.shape == weight.shape
    assert torch.equal(got, expected)


def test_a_quantized_linear_of_a_loaded_model_dequantizes_alike():
    """The weights as transformers' 4-bit loading leaves them (Params4bit with its quant state)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional
    import torch

    from tuner.fast import kbit_dequant

    layer = bnb.nn.Linear4bit(
        512, 1024, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4"
    )
    layer.weight = bnb.nn.Params4bit(torch.randn(1024, 512), requires_grad=False, quant_type="nf4")
    layer = layer.to("cuda")
    state = layer.weight.quant_state
    assert kbit_dequant._direct_kernels(layer.weight.data, state) is not None
    assert torch.equal(
        kbit_dequant.dequantize_4bit(layer.weight.data, state),
        bnb_functional.dequantize_4bit(layer.weight.data, state),
    )
