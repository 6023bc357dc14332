"""tuner.fast.lora_dropout_kernels through Triton's interpreter on the CPU (bf16 is checked on a GPU only:
the interpreter misreads bf16): the mask the kernels draw is the same in each of them and keeps 1 - p
of the elements, each kernel equals its formula with that mask, and a fused LoRA linear trains through
them with vanilla LoRA's output and gradients for that mask. The checks (tests/lora_dropout_checks.py)
run in a process of their own with TRITON_INTERPRET=1."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)


def _run(check: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", TUNER_LORA_DROPOUT_KERNEL="on")
    code = f"from tests.fast.lora_dropout_checks import {check}; {check}(); print('checked')"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "checked" in proc.stdout, proc.stderr[-4000:]


@needs_triton
def test_each_kernel_equals_its_formula_with_the_drawn_mask():
    _run("each_kernel_equals_its_formula_with_the_drawn_mask")


@needs_triton
def test_a_fused_lora_linear_trains_through_the_kernels():
    _run("a_fused_lora_linear_trains_through_the_kernels")


@needs_triton
def test_a_training_run_learns_with_drawn_dropout():
    _run("a_training_run_learns_with_drawn_dropout")


def test_off_by_default_and_never_without_triton_on_a_plain_cpu(monkeypatch):
    from tuner.fast import lora_dropout_kernels as K

    x, A = torch.randn(4, 16), torch.randn(2, 16)
    monkeypatch.delenv("TUNER_LORA_DROPOUT_KERNEL", raising=False)
    assert not K.kernels_apply(x, A)  # the switch is off
    monkeypatch.setenv("TUNER_LORA_DROPOUT_KERNEL", "on")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not K.kernels_apply(x, A)  # a CPU tensor outside the interpreter
