"""Training data: samples from the config's files, an eval split, tokens + labels, packing, collators."""

from __future__ import annotations

import logging
import random

from tuner.core.errors import DataError
from tuner.data.anchors import ANCHOR, move_anchor_labels, settle_whole_answers, without_anchor_marks
from tuner.data.encode_cache import encode_cached
from tuner.data.formats import load_samples
from tuner.data.pack import PackedCollator, PaddingCollator, pack_samples, pack_stats
from tuner.fast.attention import NAME as VARLEN
from tuner.train.anchor import anchor_loss_on, whole_answers_mode

log = logging.getLogger(__name__)


def load_training_samples(config) -> tuple[list, list]:
    """(train, eval) samples in the internal form; bad records stop the run with their location."""

    # data_path is a data source (tuner.data.sources): a file, a datasets folder or a Hub id, resolved there.
    result = load_samples(config.data_path, config.data_format, system=config.system)
    if result.problems:
        first = result.problems[0]
        raise DataError(
            f"{len(result.problems)} bad record(s), first: {first}",
            hint=f"run `python -m tuner check-data {config.data_path}` for the full list, fix them, then train again",
        )
    samples = list(result.samples)
    if not samples:
        raise DataError(
            "no usable samples", path=config.data_path, hint="check the file's format with check-data"
        )
    if config.eval_data_path:
        eval_result = load_samples(config.eval_data_path, config.data_format, system=config.system)
        if eval_result.problems:
            raise DataError(f"eval data: {eval_result.problems[0]}", hint="run check-data on the eval file")
        return samples, list(eval_result.samples)
    if config.test_split and config.test_split > 0:
        order = list(range(len(samples)))
        random.Random(config.seed).shuffle(order)
        n_test = max(1, int(round(len(samples) * config.test_split)))
        test_idx = set(order[:n_test])
        return [s for i, s in enumerate(samples) if i not in test_idx], [samples[i] for i in sorted(test_idx)]
    return samples, []


def encode_for_training(samples, tokenizer, template, config) -> tuple[list, dict]:
    """Tokens + labels (through the encode cache, tuner.data.encode_cache), packed into rows of
    ``tokens_per_step`` tokens when packing is on."""

    encoded, stats, reused = encode_cached(samples, tokenizer, template, config.max_length)
    info = {"encode": {**stats.as_dict(), "cached": reused}}
    if not encoded:
        raise DataError(
            "no sample kept a supervised token after truncation",
            hint="raise max_length or check that the data has answers",
        )
    anchors = sum(bool(row.get(ANCHOR)) for row in encoded)
    if anchors:
        info["encode"]["anchor_rows"] = anchors
    # With anchor_kl_weight, anchor rows teach through the KL term only (tuner.train.anchor); without
    # it they are ordinary conversations, as before the mark existed. anchor_answers may say otherwise
    # for the whole answers ("anchor": true); KL probes never train as text.
    if anchor_loss_on(config) and not anchors:
        log.warning(
            "anchor_kl_weight %s: the data has no anchor rows, so it changes nothing", config.anchor_kl_weight
        )
    encoded, whole_left_out = settle_whole_answers(encoded, whole_answers_mode(config))
    if whole_left_out:
        info["encode"]["anchor_answers_left_out"] = whole_left_out
        log.info("%d anchor conversations left out (anchor_answers: off)", whole_left_out)
    if anchor_loss_on(config) and any(row.get(ANCHOR) for row in encoded):
        encoded = move_anchor_labels(encoded)
    else:
        encoded, probes = without_anchor_marks(encoded)
        if probes:
            info["encode"]["kl_probes_left_out"] = probes
            log.warning(
                '%d KL probe rows ("anchor": "kl") left out: they train only through the KL term, '
                "and anchor_kl_weight is 0",
                probes,
            )
    if not encoded:
        raise DataError(
            "no row is left to train on: the data holds only anchor rows that this config leaves out",
            hint="KL probes need anchor_kl_weight above 0; anchor_answers: off leaves out the "
            "whole-answer anchors; add conversations to learn from",
        )
    if config.pack_to_max_length:
        budget = config.tokens_per_step or config.max_length
        rows = pack_samples(encoded, budget, seed=config.seed)
        stats_ = pack_stats(encoded, rows, budget)
        info["pack"] = stats_.as_dict() if hasattr(stats_, "as_dict") else dict(vars(stats_))
        return rows, info
    return encoded, info


def truncation_warning(info: dict, config) -> str | None:
    """Words for the samples that max_length cut or dropped (their answer cut away entirely), or None:
    a count hidden in a JSON blob is not a message."""
    encode = info.get("encode", {})
    dropped, truncated = encode.get("dropped_empty_after_truncation", 0), encode.get("truncated", 0)
    if not dropped and not truncated:
        return None
    parts = []
    if dropped:
        parts.append(
            f"{dropped} sample(s) were left out: max_length {config.max_length} cut away their whole answer"
        )
    if truncated:
        parts.append(f"{truncated} sample(s) were cut at max_length {config.max_length}")
    return (
        "; ".join(parts) + f". Raise max_length, or see which with: python -m tuner check-data "
        f"{config.data_path} --model {config.model} --max-length {config.max_length}"
    )


def make_collator(tokenizer, packed: bool, attention: str = "sdpa", pad_to: int | None = None):
    """Packed rows (with sample boundaries for varlen attention kernels) or padded samples;
    ``pad_to``: packed batches padded to a multiple of it (a fixed shape for CUDA graphs)."""

    pad_id = tokenizer.pad_token_id  # set by tuner.models.load.load_tokenizer, the one pad-token rule
    if not packed:
        return PaddingCollator(pad_token_id=pad_id)
    return PackedCollator(
        pad_token_id=pad_id, boundaries=attention in (VARLEN, "flash_attention_2"), pad_to=pad_to
    )


def training_collator(tokenizer, config, loaded):
    """The collator a training run uses: packed or padded as the config says; with CUDA graphs on
    (tuner.fast.layer_graphs) packed batches are padded to full rows, so every full batch has the shape
    the graphs replay; with the input embedding in host memory, batches carry their ids' host copy."""
    pad_to = (config.tokens_per_step or config.max_length) if loaded.layer_graphs is not None else None
    collator = make_collator(
        tokenizer, packed=config.pack_to_max_length, attention=loaded.attention, pad_to=pad_to
    )
    if loaded.embedding_on_cpu:  # the host-memory embedding reads its ids from the batch, not the GPU
        from tuner.fast.embedding_offload import with_host_input_ids

        collator = with_host_input_ids(collator)
    return collator
