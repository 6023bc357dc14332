"""check-data: read a data file the way training will and report everything a user should fix or know.

Every problem comes with file, line and field; then counts, token lengths against max_length, the
template that will be used, and a few samples rendered with the supervised text marked ``[[...]]``
(exactly the tokens the loss is computed on).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tuner.core.errors import DataError, TunerError
from tuner.data.encode import IGNORE, chat_ids_and_labels, encode_samples
from tuner.data.formats import load_samples
from tuner.data.templates import resolve_template
from tuner.data.templates.base import ChatTemplate
from tuner.data.templates.from_tokenizer import implicit_system
from tuner.models.load import load_tokenizer

MARK_OPEN, MARK_CLOSE = "[[", "]]"


@dataclass
class CheckReport:
    """What :func:`check_data` found. ``ok`` is False when the data has errors."""

    path: str
    format: str
    records: int
    model: str
    max_length: int | None
    problems: list[DataError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    lengths: dict = field(default_factory=dict)
    encode: dict = field(default_factory=dict)
    template: dict | None = None
    shown: list[dict] = field(default_factory=list)
    # token length of every sample (for a histogram); left out of to_dict() to keep --json small
    sample_lengths: list[int] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "path": self.path,
            "format": self.format,
            "records": self.records,
            "model": self.model,
            "max_length": self.max_length,
            "counts": self.counts,
            "lengths": self.lengths,
            "encode": self.encode,
            "template": self.template,
            "problems": [_problem_dict(p) for p in self.problems],
            "warnings": self.warnings,
            "shown": self.shown,
        }

    def format_text(self, max_problems: int = 20) -> str:
        c, n = self.counts, self.lengths
        lines = [
            f"data: {self.path} (format {self.format}, {self.records} records)",
            f"samples: {c.get('samples', 0)} usable ({c.get('chat', 0)} chat with {c.get('assistant_turns', 0)} "
            f"answers, {c.get('pretrain', 0)} pretraining), {len(self.problems)} problems",
            f"model: {self.model}",
        ]
        if self.template:
            t = self.template
            lines.append(
                f"template: {t['name']} ({t['description']}); end of turn {t['end_of_turn']!r}, "
                f"stop words {t['stop_words']}"
            )
        if c.get("system_prompts"):
            top, count = c["system_prompts"][0]
            lines.append(
                f"system prompts: {len(c['system_prompts'])} distinct; most used ({count}x): {top!r}"
            )
        if n:
            lines.append(
                f"tokens per sample: min {n['min']}, median {n['median']}, p95 {n['p95']}, max {n['max']}; "
                f"{n['over_max_length']} longer than max_length {self.max_length}"
            )
        if self.encode:
            e = self.encode
            share = e["supervised_tokens"] / e["tokens"] if e["tokens"] else 0
            lines.append(
                f"training rows: {e['encoded']} with {e['tokens']} tokens, {e['supervised_tokens']} "
                f"supervised ({share:.0%})"
            )
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more (--json lists all)")
        for shown in self.shown:
            where = _where(shown["source"]) or f"sample {shown['index'] + 1}"
            lines.append(
                f"\n--- {where}: {len(shown['input_ids'])} tokens, supervised text in {MARK_OPEN}...{MARK_CLOSE}"
            )
            lines.append(shown["marked"])
        return "\n".join(lines)


def _where(source: dict | None) -> str:
    if not source:
        return ""
    return f"{source.get('path')}:{source.get('line')}" if source.get("line") else str(source.get("path"))


def _problem_dict(problem: DataError) -> dict:
    return {
        "message": problem.message,
        "path": problem.path,
        "line": problem.line,
        "row": problem.row,
        "column": problem.column,
        "field": problem.field,
        "hint": problem.hint,
        "text": str(problem),
    }


def length_summary(lengths: list[int], max_length: int | None) -> dict:
    """min / median / p95 (nearest rank) / max, and how many exceed max_length.

    >>> length_summary([1, 2, 3, 10], 5)
    {'count': 4, 'min': 1, 'median': 2.5, 'p95': 10, 'max': 10, 'over_max_length': 1}
    """
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
        "over_max_length": sum(x > max_length for x in ordered) if max_length else 0,
    }


def mark_supervised(input_ids: list[int], labels: list[int], tokenizer) -> str:
    """Decode tokens, wrapping each run of supervised tokens in ``[[...]]``.

    >>> # ids of "<|im_start|>assistant\\nParis<|im_end|>\\n" with labels on "Paris<|im_end|>" ->
    >>> # "<|im_start|>assistant\\n[[Paris<|im_end|>]]\\n"
    """
    out, run, supervised = [], [], None
    for token, label in zip(input_ids, labels, strict=True):
        flag = label != IGNORE
        if flag != supervised and run:
            text = tokenizer.decode(run)
            out.append(f"{MARK_OPEN}{text}{MARK_CLOSE}" if supervised else text)
            run = []
        supervised = flag
        run.append(token)
    if run:
        text = tokenizer.decode(run)
        out.append(f"{MARK_OPEN}{text}{MARK_CLOSE}" if supervised else text)
    return "".join(out)


def _show(sample: dict, index: int, tokenizer, template: ChatTemplate | None, max_length: int | None) -> dict:
    """A sample as training sees it: token ids and labels (after truncation / chunking), marked text."""
    if "messages" in sample:
        ids, labels = chat_ids_and_labels(sample["messages"], tokenizer, template)
        ids, labels = ids[:max_length], labels[:max_length]
        extra = {}
    else:
        rows, _ = encode_samples([sample], tokenizer, None, max_length)
        ids = [t for row in rows for t in row["input_ids"]]
        labels = [t for row in rows for t in row["labels"]]
        extra = {"chunks": len(rows)}
    return {
        "index": index,
        "source": sample.get("source"),
        "marked": mark_supervised(ids, labels, tokenizer),
        "input_ids": ids,
        "labels": labels,
        **extra,
    }


def _system_prompts(samples: list[dict]) -> list[tuple[str, int]]:
    found = Counter()
    for sample in samples:
        messages = sample.get("messages") or []
        if messages and messages[0]["role"] == "system":
            found[messages[0]["content"]] += 1
    return found.most_common()


def load_tokenizer_for_check(model: str):
    """The model's tokenizer (``default`` = the embedded model)."""

    return load_tokenizer(model)


def check_data(
    path: str | Path,
    fmt: str = "auto",
    *,
    model: str = "default",
    template: str | None = None,
    max_length: int | None = 2048,
    show: int = 3,
    system: str | None = None,
    tokenizer=None,
) -> CheckReport:
    """Check a data file: every problem, counts, token lengths, template, K rendered samples.

    Args:
        path: data file.
        fmt: data format or "auto".
        model: model whose tokenizer measures and renders the data (``default`` = embedded).
        template: a named template; None = the tokenizer's own chat template (else ``default``).
        max_length: the training sample limit in tokens.
        show: how many samples to render.
        system: system prompt for samples that have none (as training would add it).
        tokenizer: an already loaded tokenizer (skips loading ``model``).

    Raises:
        DataError: the file cannot be read at all. Problems in records are in ``report.problems``.

    >>> # check_data("train.jsonl").to_dict()["lengths"] -> {"min": 31, "median": 88, ...}
    """

    loaded = load_samples(path, fmt, system=system)
    samples = loaded.samples
    report = CheckReport(
        path=str(path),
        format=loaded.format,
        records=loaded.records,
        model=model,
        max_length=max_length,
        problems=list(loaded.problems),
    )
    chat = [s for s in samples if "messages" in s]
    report.counts = {
        "samples": len(samples),
        "chat": len(chat),
        "pretrain": len(samples) - len(chat),
        "assistant_turns": sum(m["role"] == "assistant" for s in chat for m in s["messages"]),
        "system_prompts": _system_prompts(chat),
    }
    if not samples:
        if not report.problems:
            report.problems.append(DataError("no usable samples", path=path, hint="check the file's format"))
        return report
    if tokenizer is None:
        tokenizer = load_tokenizer_for_check(model)
    resolved = resolve_template(tokenizer, template) if chat else None
    if resolved is not None:
        report.template = {
            "name": resolved.name,
            "description": resolved.description,
            "end_of_turn": resolved.end_of_turn,
            "stop_words": list(resolved.stop_words),
            "chat_template": resolved.chat_template,
        }
        default_system = implicit_system(resolved)
        report.template["implicit_system"] = default_system
        without = sum(s["messages"][0]["role"] != "system" for s in chat)
        if default_system and without:
            report.warnings.append(
                f"{without} chat sample(s) have no system prompt; the template adds its own: "
                f"{default_system!r} (pass --system to choose one)"
            )
    encode_problems: list[DataError] = []
    rows, stats = encode_samples(samples, tokenizer, resolved, max_length, on_error=encode_problems.append)
    report.problems += encode_problems
    report.problems.sort(key=lambda p: p.line or p.row or 0)
    report.lengths = length_summary(stats.lengths, max_length)
    report.sample_lengths = list(stats.lengths)
    report.encode = stats.as_dict()
    if stats.truncated:
        report.warnings.append(
            f"{stats.truncated} chat sample(s) longer than max_length {max_length} will be truncated"
        )
    if stats.dropped_empty_after_truncation:
        report.warnings.append(
            f"{stats.dropped_empty_after_truncation} sample(s) keep no answer token after truncation and "
            "will be dropped; raise max_length or shorten their prompts"
        )
    if stats.chunked:
        report.warnings.append(f"{stats.chunked} pretraining documents are cut into max_length chunks")
    bad = {(p.path, p.line) for p in encode_problems}
    for index, sample in enumerate(samples):
        if len(report.shown) >= show:
            break
        source = sample.get("source") or {}
        if (source.get("path"), source.get("line")) in bad and source.get("line"):
            continue
        try:
            report.shown.append(_show(sample, index, tokenizer, resolved, max_length))
        except TunerError:
            continue
        except Exception as exc:  # an unusual sample must not hide the report
            report.warnings.append(f"could not render sample {index + 1}: {exc}")
    return report
