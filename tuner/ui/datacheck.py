"""The Data tab's validation report: the engine's check-data report (tuner.data.check) as Markdown."""

from __future__ import annotations

from pathlib import Path

from tuner.ui.common import rel

MAX_PROBLEMS_SHOWN = 50


def check_file(path: Path, fmt: str, model: str, system: str | None, max_length: int) -> dict:
    """Returns {"markdown", "summary", "problems" (list of str), "lengths" (tokens per sample)}."""
    from tuner.data.check import check_data

    report = check_data(path, fmt, model=model, system=system, max_length=max_length, show=1)
    problems = [str(p) for p in report.problems]
    counts = report.counts
    lines = [
        f"**{rel(path)}** — format `{report.format}`, {report.records} records, "
        f"{counts.get('samples', 0)} usable, {len(problems)} with problems"
    ]
    if problems:
        lines.append("\n**Problems** (file:line):")
        lines += [f"- `{p}`" for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"- ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    if report.warnings:
        lines.append("\n**Warnings:**")
        lines += [f"- {w}" for w in report.warnings]
    n = report.lengths
    if n.get("count"):
        template = report.template["name"] if report.template else "none (pretraining)"
        lines.append(
            f"\n**Tokens** ({model}, template `{template}`): min {n.get('min')}, median {n.get('median')}, "
            f"p95 {n.get('p95')}, max {n.get('max')}; {n.get('over_max_length', 0)} over {max_length}; "
            f"{report.encode.get('supervised_tokens', 0)} supervised tokens"
        )
    for shown in report.shown:
        text = shown.get("marked") or ""
        where = (shown.get("source") or {}).get("line")
        lines.append(
            f"\n**First sample as training sees it** (line {where}; supervised text in [[...]]):\n"
            f"```\n{text[:1500]}\n```"
        )
    summary = f"{counts.get('samples', 0)} usable samples, {len(problems)} problems"
    return {
        "markdown": "\n".join(lines),
        "summary": summary,
        "problems": problems,
        "lengths": report.sample_lengths,
    }
