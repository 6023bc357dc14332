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
    print("ok")
    """
)


@pytest.mark.skipif(not seeded_dropout.available(), reason="Triton is not installed (CPU builds of torch)")
def test_the_kernels_apply_the_mask_their_seed_draws_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", CHECKS], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_drop_rate_and_scale_keep_the_expectation():
    assert seeded_dropout.threshold(0.1) == 6554  # drops 0.100006
    keep_rate = 1 - seeded_dropout.threshold(0.1) / seeded_dropout.UNIFORM_LEVELS
    assert seeded_dropout.keep_scale(0.1) * keep_rate == pytest.approx(1.0, abs=1e-12)
    assert seeded_dropout.threshold(0.0) == 0 and seeded_dropout.keep_scale(0.0) == 1.0
