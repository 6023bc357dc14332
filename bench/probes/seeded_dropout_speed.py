"""LoRA dropout on this GPU: torch's native_dropout (mask kept, or redrawn from the generator's state)
against tuner.fast.seeded_dropout, separate from the LoRA products and inside them, alone and inside the
fused 4-bit LoRA linear's forward + backward, at Llama-2-7B's widths (and Llama-3-8B's MLP width) with
4096 tokens; and the host time of one call of each way, where an eager step waits on the host.

Why: before wiring a dropout kernel into every adapted linear, time what it replaces on the GPU that
runs the benchmark (issue 16: 672 dropout calls of 36 us in an 8 GiB-card step).

    python3 bench/probes/seeded_dropout_speed.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.probes.attention_kernels import timed
from tuner.fast import dropout_products, lora_fused, seeded_dropout
from tuner.fast.dropout_grad import add_masked_


def _linear(in_features: int, out_features: int):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from torch import nn

    base = bnb.nn.Linear4bit(
        in_features, out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4"
    )
    base.weight = bnb.nn.Params4bit(
        torch.randn(out_features, in_features, dtype=torch.bfloat16) * 0.02,
        requires_grad=False,
        compress_statistics=True,
        quant_type="nf4",
        module=base,
    )

    class Holder(nn.Module):
        is_loaded_in_4bit = True

        def __init__(self):
            super().__init__()
            self.proj = base.cuda()

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(
        Holder(), LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, target_modules=["proj"])
    )
    lora_fused.fuse_lora(model, seeded_dropout=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = [row for width in (4096, 11008, 14336) for row in measure(width)]
    for row in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, handle, indent=1)


def measure(width: int, p: float = 0.1, tokens: int = 4096) -> list[dict]:
    """Milliseconds per call of each piece at this input width, both ways."""
    rows = []
    x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
    A = torch.randn(64, width, device="cuda", dtype=torch.bfloat16)
    gh = torch.randn(tokens, 64, device="cuda", dtype=torch.bfloat16)
    gx = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
    seed = seeded_dropout.draw_seed(x.device)
    mask = torch.native_dropout(x, p, True)[1]
    native = {
        "dropout": timed(lambda: torch.native_dropout(x, p, True), 50),
        "forward (dropout, x A^T)": timed(lambda: torch.native_dropout(x, p, True)[0] @ A.t(), 50),
        "input grad (gh A, masked add)": timed(lambda: add_masked_(gx, gh @ A, mask, 1 / (1 - p)), 50),
    }
    native["A grad (gh^T dropped x)"] = timed(lambda: gh.t() @ torch.native_dropout(x, p, True)[0], 50)
    seeded = {
        "dropout": timed(lambda: seeded_dropout.dropped(x, seed, p), 50),
        "forward (dropout, x A^T)": timed(lambda: seeded_dropout.dropped(x, seed, p) @ A.t(), 50),
        "input grad (gh A, masked add)": timed(lambda: seeded_dropout.add_dropped_(gx, gh @ A, seed, p), 50),
        "A grad (gh^T dropped x)": timed(lambda: gh.t() @ seeded_dropout.dropped(x, seed, p), 50),
    }
    in_products = {
        "forward (dropout, x A^T)": timed(lambda: dropout_products.dropped_product(x, A, seed, p), 50),
        "input grad (gh A, masked add)": timed(
            lambda: dropout_products.add_dropped_product_(gx, gh, A, seed, p), 50
        ),
        "A grad (gh^T dropped x)": timed(lambda: dropout_products.dropped_product_grad(gh, x, seed, p), 50),
    }
    for name in native:
        rows.append(
            {
                "width": width,
                "what": name,
                "native_ms": native[name],
                "seeded_ms": seeded[name],
                "in_products_ms": in_products.get(name),
            }
        )
    rows.append({"width": width, "what": "host us per forward call (64 tokens)", **_host_us(width, p)})
    model = _linear(width, 4096)
    xg = torch.randn(1, tokens, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(1, tokens, 4096, device="cuda", dtype=torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(xg)
        out.backward(gy)

    seeded_ms = timed(step, 30)
    lora_fused.unfuse_lora(model)
    lora_fused.fuse_lora(model, seeded_dropout=True, dropout_product=True)
    in_products_ms = timed(step, 30)
    lora_fused.unfuse_lora(model)
    lora_fused.fuse_lora(model)  # the masks kept, as before
    native_ms = timed(step, 30)
    lora_fused.set_dropout_regeneration(model, True)
    redrawn_ms = timed(step, 30)
    rows.append(
        {
            "width": width,
            "what": "fused 4-bit LoRA linear, forward + backward",
            "native_ms": native_ms,
            "native_redrawn_ms": redrawn_ms,
            "seeded_ms": seeded_ms,
            "in_products_ms": in_products_ms,
        }
    )
    return rows


def _host_us(width: int, p: float, calls: int = 300) -> dict:
    """Microseconds of host time per forward call of each way, on 64 tokens (the GPU then idles, so
    the wall clock is the host's): seed draw, dropout and the first LoRA product."""
    import time

    x = torch.randn(64, width, device="cuda", dtype=torch.bfloat16)
    A = torch.randn(64, width, device="cuda", dtype=torch.bfloat16)
    ways = {
        "native": lambda: torch.native_dropout(x, p, True)[0] @ A.t(),
        "seeded": lambda: seeded_dropout.dropped(x, seeded_dropout.draw_seed(x.device), p) @ A.t(),
        "in_products": lambda: dropout_products.dropped_product(x, A, seeded_dropout.draw_seed(x.device), p),
    }
    result = {}
    for name, call in ways.items():
        for _ in range(10):
            call()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        result[f"{name}_us"] = (time.perf_counter() - start) / calls * 1e6
    return result


if __name__ == "__main__":
    main()
