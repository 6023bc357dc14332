"""Encoding through ``datasets.map``, cached on disk: a second run of the same data, tokenizer,
template and max_length reads its tokens and labels back instead of encoding again, and a large
set is encoded on several cores.

The encoding itself is :func:`tuner.data.encode.encode_samples`, one sample at a time, so labels,
truncation and the error that names a bad sample's file and line are exactly those of the plain
path. The cache file is named by a hash of everything the result depends on: the samples (after
reading, with their system prompts), the tokenizer (its whole serialised vocabulary and rules), the
chat template, max_length and the source of the encoding code itself; nothing else can reuse it.
It lives in ``<workspace>/.cache/encoded/``; the newest KEEP files are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from tuner.core.errors import DataError
from tuner.core.workspace import workspace_dir
from tuner.data import encode as encode_module
from tuner.data.anchors import ANCHOR, KL_ONLY
from tuner.data.encode import EncodeStats, encode_samples

log = logging.getLogger(__name__)

CACHE_DIR = Path(".cache") / "encoded"
KEEP = 8  # cache files kept (the newest); an encoded set of 50k samples at 512 tokens is about 200 MB
SAMPLES_PER_PROCESS = 2000  # below this, starting worker processes costs more than it saves
BATCH = 256


def cache_dir() -> Path:
    return workspace_dir() / CACHE_DIR


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the tokens: the serialised fast tokenizer (vocabulary, merges,
    normalisation, added tokens) and the BOS/EOS ids pretraining adds; else datasets' own hash."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        from datasets.fingerprint import Hasher

        return Hasher.hash(tokenizer)
    parts = [
        type(tokenizer).__name__,
        backend.to_str(),
        str(tokenizer.bos_token_id),
        str(tokenizer.eos_token_id),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def sample_texts(samples: list[dict]) -> list[str]:
    """Each sample as canonical JSON: what the cache key hashes and what datasets.map is given (one
    string column, so that samples of any shape share one Arrow schema)."""
    return [json.dumps(sample, sort_keys=True, ensure_ascii=False) for sample in samples]


def encode_key(samples: list[dict] | list[str], tokenizer, template, max_length: int | None) -> str:
    """The cache key of an encoding: any change to its inputs or to the encoding code changes it."""
    digest = hashlib.sha256()
    for part in (
        Path(encode_module.__file__).read_bytes(),
        Path(__file__).read_bytes(),
        tokenizer_fingerprint(tokenizer).encode(),
        json.dumps(
            None if template is None else [template.name, template.chat_template, template.end_of_turn],
        ).encode(),
        str(max_length).encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    for text in samples if samples and isinstance(samples[0], str) else sample_texts(samples):
        digest.update(text.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def _encode_batch(batch: dict, tokenizer, template, max_length):
    """datasets.map's function: one output row per sample, holding its encoded rows and statistics."""
    out = {
        "input_ids": [],
        "labels": [],
        "anchor": [],
        "length": [],
        "truncated": [],
        "dropped": [],
        "error": [],
    }
    for text in batch["sample"]:
        sample = json.loads(text)
        errors: list[DataError] = []
        rows, stats = encode_samples([sample], tokenizer, template, max_length, on_error=errors.append)
        out["input_ids"].append([r["input_ids"] for r in rows])
        out["labels"].append([r["labels"] for r in rows])
        out["anchor"].append(_ANCHOR_CODES[next((r[ANCHOR] for r in rows if r.get(ANCHOR)), False)])
        out["length"].append(stats.lengths[0] if stats.lengths else 0)
        out["truncated"].append(stats.truncated)
        out["dropped"].append(stats.dropped_empty_after_truncation)
        out["error"].append(json.dumps(_error_fields(errors[0])) if errors else "")
    return out


# The anchor mark (tuner.data.anchors) as the cache's int8 column: 0 none, 1 a whole answer (the only
# value caches written before KL probes hold), 2 a KL probe.
_ANCHOR_CODES = {False: 0, True: 1, KL_ONLY: 2}
_ANCHOR_MARKS = {code: mark for mark, code in _ANCHOR_CODES.items()}


def _error_fields(error: DataError) -> dict:
    return {k: getattr(error, k) for k in ("message", "path", "line", "row", "field", "hint")}


def _prune(folder: Path, keep: int) -> None:
    files = sorted(folder.glob("*.arrow"), key=lambda p: p.stat().st_mtime, reverse=True)
    keys = []
    for path in files:
        key = path.name.split("_")[0].removesuffix(".arrow")
        if key not in keys:
            keys.append(key)
    for path in files:
        if path.name.split("_")[0].removesuffix(".arrow") not in keys[:keep]:
            path.unlink(missing_ok=True)


def encode_cached(
    samples: list[dict], tokenizer, template, max_length: int | None, *, num_proc: int | None = None
) -> tuple[list[dict], EncodeStats, bool]:
    """:func:`encode_samples` through ``datasets.map`` with an on-disk cache.

    Returns (rows, stats, reused) where ``reused`` says the cache answered. Raises the DataError of
    the first sample that cannot be encoded, as encode_samples does.
    """
    from datasets import Dataset, Features, Sequence, Value
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not samples:
        return [], EncodeStats(), False
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    texts = sample_texts(samples)
    key = encode_key(texts, tokenizer, template, max_length)
    target = folder / f"{key}.arrow"
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, len(samples) // SAMPLES_PER_PROCESS)
    num_proc = num_proc if num_proc > 1 else None
    reused = target.is_file() or any(folder.glob(f"{key}_*_of_*.arrow"))
    ids = Sequence(Sequence(Value("int32")))
    features = Features(
        {
            "input_ids": ids,
            "labels": ids,
            "anchor": Value("int8"),
            "length": Value("int32"),
            "truncated": Value("int8"),
            "dropped": Value("int8"),
            "error": Value("string"),
        }
    )
    dataset = Dataset.from_dict({"sample": texts})
    bars = not are_progress_bars_disabled()
    disable_progress_bars()  # the run log says what happened; bars would fill the app's log pane
    try:
        encoded = dataset.map(
            _encode_batch,
            fn_kwargs={"tokenizer": tokenizer, "template": template, "max_length": max_length},
            batched=True,
            batch_size=BATCH,
            remove_columns=dataset.column_names,
            features=features,
            num_proc=num_proc,
            cache_file_name=str(target),
            load_from_cache_file=True,
            new_fingerprint=key,
            desc="encoding",
        )
    finally:
        if bars:
            enable_progress_bars()
    errors = [e for e in encoded["error"] if e]
    if errors:
        raise DataError(**json.loads(errors[0]))
    stats = EncodeStats(samples=len(samples))
    rows: list[dict] = []
    columns = encoded.select_columns(["input_ids", "labels", "anchor", "length", "truncated", "dropped"])
    for item in columns.iter(batch_size=1024):
        for input_ids, labels, anchor, length, truncated, dropped in zip(
            item["input_ids"],
            item["labels"],
            item["anchor"],
            item["length"],
            item["truncated"],
            item["dropped"],
            strict=True,
        ):
            stats.lengths.append(length)
            stats.truncated += truncated
            stats.dropped_empty_after_truncation += dropped
            stats.chunked += len(input_ids) > 1
            for row_ids, row_labels in zip(input_ids, labels, strict=True):
                stats.encoded += 1
                stats.tokens += len(row_ids)
                stats.supervised_tokens += sum(label != -100 for label in row_labels)
                rows.append(
                    {"input_ids": row_ids, "labels": row_labels, ANCHOR: _ANCHOR_MARKS[anchor]}
                    if anchor
                    else {"input_ids": row_ids, "labels": row_labels}
                )
    _prune(folder, KEEP)
    log.info(
        "encoded %d samples (%s)",
        len(samples),
        "read from the cache" if reused else f"cached as {target.name}",
    )
    return rows, stats, reused
