"""Task metrics for a fine-tune: answer a held-out test file with the base model and the fine-tuned
one, side by side, and score both against the reference answers (tuner.export.metrics).

The questions are asked the way training rendered them: the run's chat template and its system
prompt (a sample's own system message wins, as in training). Each sample is a fresh single-turn
question, its first user turn, scored against its first answer; later turns of a multi-turn sample
are not asked (the results say how many samples had them). Answers are greedy
(tuner.chat.generate.greedy_answers), batched with prompts of similar length together, and the
base answers come from the same loaded model with the adapter switched off.

Results: ``<name>.json`` (scores, settings, timings) and ``<name>.samples.jsonl`` (each question,
its reference, both answers and their scores), written atomically into the run's ``evaluation/``
folder (or ``<workspace>/evaluation/<model>/`` for a model without a run).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuner.chat.generate import greedy_answers
from tuner.chat.session import ChatSession
from tuner.core.errors import DataError, TunerError
from tuner.core.io import write_jsonl_atomic, write_text_atomic
from tuner.core.workspace import resolve_path, workspace_dir
from tuner.data.formats import load_samples
from tuner.export.metrics import LABELS, METRICS, score
from tuner.models.load import release
from tuner.runs.adapters import locate_adapter

log = logging.getLogger(__name__)

RESULTS_DIR = "evaluation"
SIDES = ("base", "fine_tuned")


@dataclass
class Question:
    """One test sample as asked: the system prompt, the first user turn and its reference answer."""

    prompt: str
    reference: str
    system: str | None
    source: dict = field(default_factory=dict)


@dataclass
class EvaluationResult:
    results_path: Path
    samples_path: Path
    scores: dict  # side -> {score name: value}
    samples: int

    def table(self) -> str:
        """The scores as a small text table, one column per side."""
        sides = [s for s in SIDES if s in self.scores]
        names = list(next(iter(self.scores.values())))
        header = f"{'':<14}" + "".join(f"{s.replace('_', '-'):>12}" for s in sides)
        rows = [f"{LABELS[n]:<14}" + "".join(f"{self.scores[s][n]:>12.2f}" for s in sides) for n in names]
        return "\n".join([header, *rows])


def read_questions(test_path: str, data_format: str = "auto", system: str | None = None) -> tuple[list, int]:
    """(questions, samples with more than one turn) of a chat test file; any bad record stops here."""

    loaded = load_samples(test_path, data_format, system=system)
    if loaded.problems:
        loaded.raise_for_problems()
    questions, multi_turn = [], 0
    for sample in loaded.samples:
        messages = sample.get("messages")
        if messages is None:
            raise DataError(
                "pretraining text has no questions and answers to score",
                path=test_path,
                hint="evaluate a chat test file (e.g. the test half of `tuner split`)",
            )
        head = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = messages[1:] if head is not None else messages
        multi_turn += len(turns) > 2
        questions.append(Question(turns[0]["content"], turns[1]["content"], head, sample.get("source", {})))
    if not questions:
        raise DataError("no samples", path=test_path, hint="check the file's format with check-data")
    return questions, multi_turn


def answer_all(session, questions: list[Question], *, max_new_tokens: int, batch_size: int, progress=None):
    """Greedy answers to every question, in order; one greedy_answers call per system prompt, with
    the prompts sorted by length so that a batch pads little."""

    answers: list = [None] * len(questions)
    groups: dict[str | None, list[int]] = {}
    for index, question in enumerate(questions):
        groups.setdefault(question.system, []).append(index)
    done = 0
    for system, indexes in groups.items():
        indexes = sorted(indexes, key=lambda i: len(questions[i].prompt), reverse=True)
        for start in range(0, len(indexes), batch_size):
            chunk = indexes[start : start + batch_size]
            found = greedy_answers(
                session.model,
                session.tokenizer,
                session.chat_template,
                [questions[i].prompt for i in chunk],
                system=system,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            for i, answer in zip(chunk, found, strict=True):
                answers[i] = answer
            done += len(chunk)
            if progress:
                progress(done, len(questions))
    return answers


def _resolve_target(target: str, adapter: str | None):
    """(model name, adapter source or None) from RUN_OR_MODEL and --adapter."""

    path = resolve_path(target)
    is_run = path.is_dir() and any((path / n).is_file() for n in ("config.yaml", "adapter_config.json"))
    if is_run:
        if adapter:
            raise TunerError(f"{target} is a run or adapter already; drop --adapter, or give a model with it")
        source = locate_adapter(path)
        if not source.base_model:
            raise TunerError(
                f"{source.adapter_dir}: the base model is unknown; give it: evaluate MODEL TEST --adapter DIR"
            )
        return source.base_model, source
    return target, locate_adapter(resolve_path(adapter)) if adapter else None


def _out_dir(model_name: str, source) -> Path:
    if source is not None and source.run_dir is not None:
        return source.run_dir / RESULTS_DIR
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name).name or model_name)
    return workspace_dir() / RESULTS_DIR / label


def evaluate(
    target: str,
    test_path: str,
    *,
    adapter: str | None = None,
    metrics: Sequence[str] = METRICS,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    compare_base: bool = True,
    data_format: str = "auto",
    out_dir: str | Path | None = None,
    bits: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationResult:
    """Answer ``test_path`` with the fine-tuned model (and the base), score, and write the results.

    Args:
        target: a run folder, a checkpoint or an adapter folder (its base model is the run's), or a
            model (name, folder or ``default``) evaluated with ``adapter`` or alone.
        test_path: a chat data source (tuner.data.sources): the test half of ``tuner split``, a Hub split...
        metrics: of tuner.export.metrics.METRICS.
        compare_base: also answer with the adapter switched off (needs an adapter).
        progress: called as ``progress(side, done, total)`` after each batch.
    """

    if max_new_tokens < 1 or batch_size < 1:
        raise TunerError("max_new_tokens and batch_size must be at least 1")
    model_name, source = _resolve_target(target, adapter)
    config = source.config if source is not None else {}
    questions, multi_turn = read_questions(test_path, data_format, system=config.get("system"))
    session = ChatSession(
        model_name,
        adapter=source.adapter_dir if source else None,
        bits=bits,
        template=config.get("template"),
        system=config.get("system"),
        trust_remote_code=bool(config.get("trust_remote_code")),
    )
    sides = ["fine_tuned"] if source else ["base"]
    if source and compare_base:
        sides.insert(0, "base")
    answers, seconds = {}, {}
    try:
        for side in sides:
            started = time.time()
            report = (lambda done, total, side=side: progress(side, done, total)) if progress else None
            if side == "base" and source:
                with session.model.disable_adapter():
                    answers[side] = answer_all(
                        session,
                        questions,
                        max_new_tokens=max_new_tokens,
                        batch_size=batch_size,
                        progress=report,
                    )
            else:
                answers[side] = answer_all(
                    session, questions, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=report
                )
            seconds[side] = round(time.time() - started, 2)
            log.info("%s: %d answers in %.1f s", side, len(questions), seconds[side])
    finally:
        template_name = session.chat_template.name
        session.model = None
        release(session)
    references = [q.reference for q in questions]
    scores, per_sample = {}, {}
    for side in sides:
        scores[side], per_sample[side] = score([a.text for a in answers[side]], references, metrics)

    out = Path(out_dir) if out_dir else _out_dir(model_name, source)
    stem = Path(str(test_path).partition("?")[0]).stem or "test"
    results = {
        "test": str(test_path),
        "samples": len(questions),
        "multi_turn_samples": multi_turn,  # only their first turn was asked
        "model": model_name,
        "adapter": str(source.adapter_dir) if source else None,
        "template": template_name,
        "system": config.get("system"),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "metrics": list(metrics),
        "scores": scores,
        "seconds": seconds,
        "unfinished_answers": {s: sum(not a.finished for a in answers[s]) for s in sides},
    }
    rows = []
    for index, question in enumerate(questions):
        row = {
            "index": index,
            "source": question.source,
            "system": question.system,
            "prompt": question.prompt,
        }
        row["reference"] = question.reference
        for side in sides:
            row[side] = answers[side][index].text
            row[f"{side}_scores"] = per_sample[side][index]
        rows.append(row)
    results_path = out / f"{stem}.json"
    samples_path = out / f"{stem}.samples.jsonl"
    write_jsonl_atomic(samples_path, rows)
    write_text_atomic(results_path, json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    return EvaluationResult(results_path, samples_path, scores, len(questions))
