"""tuner.fast.loss_chunks: Liger's fused linear cross-entropy told to use wide chunks (CPU: a stand-in
for Liger's functional module with the same entry point and keyword; the real one needs CUDA)."""

from __future__ import annotations

import inspect
import sys
import types

import pytest
import torch


def _stand_in_liger(monkeypatch, entry_point):
    """Liger's functional module, holding only ``entry_point``, where tuner.fast.loss_chunks imports it."""
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = entry_point
    package = types.ModuleType("liger_kernel.transformers")
    package.functional = functional
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    return functional


@pytest.fixture
def fake_liger(monkeypatch):
    calls = []

    def liger_fused_linear_cross_entropy(
        input, weight, target, bias=None, reduction="mean", chunk_mem_const=1
    ):
        calls.append(chunk_mem_const)
        return torch.zeros(())

    yield _stand_in_liger(monkeypatch, liger_fused_linear_cross_entropy), calls
    from tuner.fast.loss_chunks import use_wide_chunks

    use_wide_chunks(False)


def test_wide_chunks_give_liger_a_half_gib_logits_budget_and_keep_its_signature(fake_liger):
    from tuner.fast.loss_chunks import use_wide_chunks

    functional, calls = fake_liger
    original = inspect.signature(functional.liger_fused_linear_cross_entropy)
    hidden = torch.zeros(4096, 4096, dtype=torch.bfloat16)
    weight, target = torch.zeros(8, 4096, dtype=torch.bfloat16), torch.zeros(4096, dtype=torch.long)

    assert use_wide_chunks(True)
    # Liger's callers filter their keyword arguments by this signature: it must stay Liger's.
    assert inspect.signature(functional.liger_fused_linear_cross_entropy) == original
    functional.liger_fused_linear_cross_entropy(hidden, weight, target, reduction="sum")
    functional.liger_fused_linear_cross_entropy(
        torch.zeros(65536, 4096, dtype=torch.bfloat16), weight, target
    )
    functional.liger_fused_linear_cross_entropy(hidden.float(), weight, target)  # 4-byte elements
    functional.liger_fused_linear_cross_entropy(hidden, weight, target, chunk_mem_const=3)  # the caller's own
    # 4096 tokens x 4096 hidden x 2 bytes = 32 MiB per unit: 16 units in half a GiB, 2 chunks of 2048
    # tokens for a 128k vocabulary; 65,536-token rows stay at Liger's 1.
    assert calls == [16, 1, 8, 3]

    assert not use_wide_chunks(False)  # the next run without: Liger's own budget
    functional.liger_fused_linear_cross_entropy(hidden, weight, target)
    assert calls[-1] == 1
    use_wide_chunks(True)  # installed once, however many runs switch it on
    assert (
        functional.liger_fused_linear_cross_entropy.__wrapped__.__name__ == "liger_fused_linear_cross_entropy"
    )
    assert not hasattr(functional.liger_fused_linear_cross_entropy.__wrapped__, "__wrapped__")


def test_a_liger_without_the_chunk_knob_keeps_its_own_chunks(monkeypatch):
    from tuner.fast.loss_chunks import use_wide_chunks

    def liger_fused_linear_cross_entropy(input, weight, target):
        return None

    functional = _stand_in_liger(monkeypatch, liger_fused_linear_cross_entropy)
    assert not use_wide_chunks(True)
    assert functional.liger_fused_linear_cross_entropy is liger_fused_linear_cross_entropy
