"""The Data tab's validation report, built from the engine's readers and encoder.

(The CLI's check-data lives in tuner/data/check.py; when it offers a report function this module
should call it. Until then the same facts are assembled here: problems with line numbers, counts,
token lengths, and the first sample rendered exactly as training will see it.)
"""

from __future__ import annotations

import functools
from pathlib import Path

from tuner.ui.common import rel

MAX_PROBLEMS_SHOWN = 50


@functools.lru_cache(maxsize=2)
def _tokenizer(model: str):
    from tuner.model import load_tokenizer

    return load_tokenizer(model)


def check_file(path: Path, fmt: str, model: str, system: str | None, max_length: int) -> dict:
    """Returns {"markdown", "summary", "problems" (list of str), "lengths" (tokens per sample)}."""
    from tuner.data.encode import encode_samples
    from tuner.data.formats import load_samples
    from tuner.data.templates import resolve_template

    result = load_samples(path, fmt, system=system)
    problems = [str(p) for p in result.problems]
    lines = [
        f"**{rel(path)}** — format `{result.format}`, {result.records} records, "
        f"{len(result.samples)} usable, {len(problems)} with problems"
    ]
    if problems:
        lines.append("\n**Problems** (file:line):")
        lines += [f"- `{p}`" for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"- ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    lengths: list[int] = []
    if result.samples:
        tokenizer = _tokenizer(model)
        template = resolve_template(tokenizer, None)
        _, stats = encode_samples(result.samples, tokenizer, template, max_length)
        lengths = list(stats.lengths)
        if lengths:
            ordered = sorted(lengths)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            lines.append(
                f"\n**Tokens** ({model}, template `{template.name}`): min {ordered[0]}, "
                f"mean {sum(ordered) / len(ordered):.0f}, p95 {p95}, max {ordered[-1]}; "
                f"{stats.truncated} truncated at {max_length}, "
                f"{stats.dropped_empty_after_truncation} dropped (no answer left), "
                f"{stats.supervised_tokens} supervised tokens"
            )
        first = result.samples[0]
        if "messages" in first:
            where = first.get("source", {}).get("line")
            shown = template.render(first["messages"])
            lines.append(f"\n**First sample as training sees it** (line {where}):\n```\n{shown[:1500]}\n```")
    summary = f"{len(result.samples)} usable samples, {len(problems)} problems"
    return {"markdown": "\n".join(lines), "summary": summary, "problems": problems, "lengths": lengths}
