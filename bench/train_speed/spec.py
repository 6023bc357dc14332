"""What one row measures: its configuration (``Spec``), the recipe every tool shares, the named
overrides of a tuner row (``--variant``) and the random token rows.

The recipe lives here, apart from the tools, so that a third tool (``tools.py``) trains exactly what
the other two do: same LoRA, learning rate, clipping and tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from dataclasses import dataclass

METHODS = ("qlora", "lora")
DEFAULT_SEQS = (512, 2048, 4096)

# The presets' LoRA: every tool adapts the same seven projections of each layer (peft's "all-linear",
# which leaves the LM head out); --lora-dropout overrides the dropout for every tool alike.
LORA = dict(r=64, alpha=16, dropout=0.1, targets="all-linear")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LR = 2e-4
PLAIN_REENTRANT = True  # the plain loop's gradient checkpointing (tuner uses non-reentrant)
MAX_NORM = 1.0


@dataclass(frozen=True)
class Spec:
    """One benchmark configuration: what a child process measures."""

    shape: str
    method: str
    seq: int
    tool: str
    sample_len: int | None = None  # tuner only: pack samples of this length into the seq-token row
    variant: str | None = None  # tuner only: the name of a --variant (overrides of tuner's settings)

    @property
    def label(self) -> str:
        packed = f"-pack{self.sample_len}" if self.sample_len else ""
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.shape}-{self.method}-{self.seq}{packed}-{self.tool}{variant}"


VARIANT_KINDS = ("env", "set", "arg")


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME[:KIND.KEY=VALUE,...]`` -> (name, {kind: {key: value}}): a named set of overrides for a
    tuner row. ``env``: an environment variable while the row runs (a speed setting's variable, e.g.
    TUNER_LIGER, or the TUNER_GPU_MEMORY_GIB budget); ``set``: a TrainConfig key (e.g. the memory
    policies checkpoint_layers, embedding_on_cpu); ``arg``: a TrainingArguments attribute, set after
    tuner built them.
    Values are JSON where they parse (numbers, true/false), else strings.

    >>> parse_variant("fp16:set.precision=fp16,env.TUNER_LIGER=on")
    ('fp16', {'env': {'TUNER_LIGER': 'on'}, 'set': {'precision': 'fp16'}, 'arg': {}})
    >>> parse_variant("base")
    ('base', {'env': {}, 'set': {}, 'arg': {}})
    """
    name, _, rest = text.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise argparse.ArgumentTypeError(f"variant name {name!r}: letters, digits and _.+- only")
    overrides: dict = {kind: {} for kind in VARIANT_KINDS}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        target, eq, raw = item.partition("=")
        kind, dot, key = target.partition(".")
        if not (eq and dot and key) or kind not in VARIANT_KINDS:
            raise argparse.ArgumentTypeError(f"{item!r}: write KIND.KEY=VALUE, KIND one of {VARIANT_KINDS}")
        if kind == "env":
            overrides[kind][key] = raw
            continue
        try:
            overrides[kind][key] = json.loads(raw)
        except ValueError:
            overrides[kind][key] = raw
    return name, overrides


@contextlib.contextmanager
def environment(values: dict):
    """Set environment variables for the duration of one row, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------------------------- data


def token_rows(spec: Spec, vocab_size: int, count: int) -> list[list[int]]:
    """``count`` rows of ``spec.seq`` random token ids, the same for every tool (seeded by seq)."""
    import torch

    generator = torch.Generator().manual_seed(1234 + spec.seq)
    return torch.randint(0, vocab_size, (count, spec.seq), generator=generator).tolist()


def sample_lengths(spec: Spec) -> list[int]:
    if not spec.sample_len:
        return [spec.seq]
    full, rest = divmod(spec.seq, spec.sample_len)
    return [spec.sample_len] * full + ([rest] if rest else [])


def tuner_rows(spec: Spec, rows: list[list[int]]) -> list[dict]:
    """tuner's packed rows (``pack_row``: position ids restart per sample, first label -100)."""
    from tuner.data.pack import pack_row

    out = []
    for ids in rows:
        samples, at = [], 0
        for length in sample_lengths(spec):
            piece = ids[at : at + length]
            samples.append({"input_ids": piece, "labels": piece})
            at += length
        out.append(pack_row(samples))
    return out
