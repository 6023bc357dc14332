"""Packing: many short encoded samples in one row, none attending to another; and collators.

A packed row is the concatenation of its samples with ``position_ids`` restarting at 0 for each
sample. transformers turns such position ids into a block-causal mask when no attention_mask is
passed and no KV cache is used (``use_cache=False``, as in training); flash attention reads them as
varlen boundaries (only with batch size 1, which is why :class:`PackedCollator` flattens a batch
into one row). The first label of every sample is -100, so the last token of one sample is never
trained to predict the first token of the next.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tuner.data.anchors import ANCHOR_LABELS

IGNORE = -100


@dataclass
class PackStats:
    """Packing summary: ``rows`` packed rows holding ``tokens`` tokens; ``fill`` = tokens / (rows x budget)."""

    samples: int
    rows: int
    tokens: int
    tokens_per_pack: int
    oversized: int  # samples longer than the budget, each alone in its row

    @property
    def fill(self) -> float:
        return self.tokens / (self.rows * self.tokens_per_pack) if self.rows else 0.0

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "rows": self.rows,
            "tokens": self.tokens,
            "tokens_per_pack": self.tokens_per_pack,
            "oversized": self.oversized,
            "fill": round(self.fill, 4),
        }


def _assign(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Best-fit decreasing: each sample (longest first) goes to the open row it fills most tightly.

    >>> _assign([3, 2, 2, 1], 4)
    [[0, 3], [1, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep shuffled order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), kept sorted
    for i in order:
        size = lengths[i]
        if size >= budget:
            rows.append([i])
            continue
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (budget - size, len(rows) - 1))
            continue
        room, row = free.pop(at)
        rows[row].append(i)
        if room > size:
            bisect.insort(free, (room - size, row))
    return rows


def pack_row(samples: Sequence[dict]) -> dict:
    """Concatenate encoded samples into one row.

    >>> pack_row([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8, 9], "labels": [-100, 8, 9]}])
    {'input_ids': [5, 6, 7, 8, 9], 'labels': [-100, 6, -100, 8, 9], 'position_ids': [0, 1, 0, 1, 2]}
    """
    # Anchor rows (tuner.data.anchors) carry their answer tokens as a second label list.
    label_keys = label_keys_of(samples)
    row = {"input_ids": [], **{key: [] for key in label_keys}, "position_ids": []}
    for sample in samples:
        ids = list(sample["input_ids"])
        for key in label_keys:
            labels = list(sample[key])
            if labels:
                labels[0] = IGNORE
            row[key] += labels
        row["input_ids"] += ids
        row["position_ids"] += list(range(len(ids)))
    return row


def pack_samples(encoded: Sequence[dict], tokens_per_pack: int, *, seed: int = 0) -> list[dict]:
    """Pack encoded samples into rows of at most ``tokens_per_pack`` tokens.

    Samples are shuffled with ``seed``, placed best-fit-decreasing, and the rows shuffled again, so
    the result depends only on the inputs and the seed. A sample longer than the budget gets a row
    of its own.

    >>> rows = pack_samples([{"input_ids": [1, 2], "labels": [1, 2]}] * 3, 4)
    >>> [r["position_ids"] for r in rows]
    [[0, 1], [0, 1, 0, 1]]
    """
    if tokens_per_pack < 1:
        raise ValueError("tokens_per_pack must be positive")
    rng = random.Random(seed)
    order = list(range(len(encoded)))
    rng.shuffle(order)
    lengths = [len(encoded[i]["input_ids"]) for i in order]
    rows = [pack_row([encoded[order[j]] for j in members]) for members in _assign(lengths, tokens_per_pack)]
    rng.shuffle(rows)
    return rows


def pack_stats(encoded: Sequence[dict], rows: Sequence[dict], tokens_per_pack: int) -> PackStats:
    """Summary of a packing (fill ratio = packed tokens / row capacity)."""
    return PackStats(
        samples=len(encoded),
        rows=len(rows),
        tokens=sum(len(r["input_ids"]) for r in rows),
        tokens_per_pack=tokens_per_pack,
        oversized=sum(len(s["input_ids"]) > tokens_per_pack for s in encoded),
    )


def label_keys_of(rows: Sequence[dict]) -> tuple[str, ...]:
    """The label lists a batch carries: ``labels``, and ``anchor_labels`` when its rows have them
    (tuner.data.anchors; every row of a run has them or none does)."""
    return ("labels", ANCHOR_LABELS) if rows and ANCHOR_LABELS in rows[0] else ("labels",)


def _tensor(rows: list[list[int]]):
    import torch

    return torch.tensor(rows, dtype=torch.long)


# Batch key (a plain int) with the padding tokens a pad_to batch holds, so that the tokens a run
# reports seeing are real tokens; tuner.train.trainer removes it before the batch reaches the model.
PADDING_TOKENS = "tuner_padding_tokens"


class PackedCollator:
    """Batch packed rows without an attention_mask, so masks come from ``position_ids``.

    By default (``flatten=True``) a batch of rows becomes ONE row of batch size 1: that is the only
    form flash attention reads as varlen sequences, and it wastes no padding. With
    ``flatten=False`` rows are right-padded to the longest one (padding forms its own block with
    position ids from 0 and labels -100); that is correct for sdpa and eager attention only.
    ``boundaries=True`` (flattened rows only) adds the samples' cumulative lengths
    (:func:`sample_boundaries`) for varlen kernels; only models whose forward passes extra keyword
    arguments on to attention take them, so it is off unless the attention needs it.
    ``pad_to`` (flattened rows only) pads each batch to a multiple of that many tokens with one
    padding sample (labels -100, its own positions), so that steps repeat one shape, which CUDA
    graphs replay (tuner.fast.layer_graphs); best-fit packing leaves rows nearly full, so it costs little.
    Such batches carry their padding count under :data:`PADDING_TOKENS`.

    >>> PackedCollator()([{"input_ids": [1, 2], "labels": [-100, 2], "position_ids": [0, 1]},
    ...                   {"input_ids": [3], "labels": [-100], "position_ids": [0]}])["position_ids"]
    tensor([[0, 1, 0]])
    """

    def __init__(
        self, pad_token_id: int = 0, flatten: bool = True, boundaries: bool = False, pad_to: int | None = None
    ):
        self.pad_token_id = pad_token_id
        self.flatten = flatten
        self.boundaries = boundaries and flatten
        self.pad_to = pad_to if flatten else None

    def __call__(self, rows: Sequence[dict]) -> dict:
        label_keys = label_keys_of(rows)
        keys = ("input_ids", *label_keys, "position_ids")
        if self.flatten:
            flat = {key: [v for row in rows for v in row[key]] for key in keys}
            if self.pad_to:
                pad = -len(flat["input_ids"]) % self.pad_to
                flat["input_ids"] += [self.pad_token_id] * pad
                for key in label_keys:
                    flat[key] += [IGNORE] * pad
                flat["position_ids"] += list(range(pad))
            batch = {key: _tensor([value]) for key, value in flat.items()}
            if self.pad_to:
                batch[PADDING_TOKENS] = pad  # taken out by tuner's Trainer before the model sees it
            if self.boundaries:
                batch.update(sample_boundaries(flat["position_ids"]))
            return batch
        width = max(len(row["input_ids"]) for row in rows)
        batch = {key: [] for key in keys}
        for row in rows:
            pad = width - len(row["input_ids"])
            batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            for key in label_keys:
                batch[key].append(list(row[key]) + [IGNORE] * pad)
            batch["position_ids"].append(list(row["position_ids"]) + list(range(pad)))
        return {key: _tensor(value) for key, value in batch.items()}


def sample_boundaries(position_ids: Sequence[int]) -> dict:
    """Where the samples of one flattened row start and end, for varlen attention kernels.

    The keys are the ones transformers' flash-attention path reads (and tuner.fast.attention): with them
    no step has to read the position ids back from the GPU to find the samples.

    >>> b = sample_boundaries([0, 1, 2, 0, 1, 0])
    >>> b["cu_seq_lens_q"].tolist(), b["max_length_q"]
    ([0, 3, 5, 6], 3)
    """
    import torch

    starts = [i for i, position in enumerate(position_ids) if position == 0 or i == 0]
    cu = starts + [len(position_ids)]
    longest = max(b - a for a, b in zip(cu, cu[1:], strict=False))
    cu_tensor = torch.tensor(cu, dtype=torch.int32)
    return {
        "cu_seq_lens_q": cu_tensor,
        "cu_seq_lens_k": cu_tensor,
        "max_length_q": longest,
        "max_length_k": longest,
    }


class PaddingCollator:
    """Batch unpacked samples: right padding with ``pad_token_id``, labels -100, an attention_mask.

    >>> PaddingCollator(0)([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [7], "labels": [7]}])
    ... # doctest: +SKIP
    {'input_ids': [[5, 6], [7, 0]], 'labels': [[-100, 6], [7, -100]], 'attention_mask': [[1, 1], [1, 0]]}
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[dict]) -> dict:
        width = max(len(s["input_ids"]) for s in samples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        label_keys = label_keys_of(samples)
        ids, labels, mask = [], {key: [] for key in label_keys}, []
        for sample in samples:
            pad = width - len(sample["input_ids"])
            ids.append(list(sample["input_ids"]) + [self.pad_token_id] * pad)
            for key in label_keys:
                labels[key].append(list(sample[key]) + [IGNORE] * pad)
            mask.append([1] * len(sample["input_ids"]) + [0] * pad)
        return {
            "input_ids": _tensor(ids),
            **{key: _tensor(value) for key, value in labels.items()},
            "attention_mask": _tensor(mask),
        }
