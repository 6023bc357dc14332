"""Small HTML renderings for the Train tab: the loss chart (drawn by tuner.runs.plot, the same
picture every run folder gets as loss.svg) and the progress bar."""

from __future__ import annotations

import html

from tuner.runs.plot import finite_points, loss_svg


def loss_chart(series: dict[str, list[tuple[float, float]]], empty: str = "") -> str:
    """The run's loss chart (tuner.runs.plot), or a placeholder saying why there is none yet."""
    if not finite_points(series):
        return f'<div class="tuner-chart-empty">{html.escape(empty)}</div>'
    return loss_svg(series)


def progress_html(step: int, total: int | None, text: str) -> str:
    """A progress bar with its caption (step / total, percent, elapsed, ETA)."""
    share = 0.0 if not total else max(0.0, min(1.0, step / total))
    return (
        '<div class="tuner-progress" style="width:100%">'
        '<div style="background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden">'
        f'<div role="progressbar" aria-valuenow="{share * 100:.0f}" aria-valuemin="0" aria-valuemax="100" '
        f'style="background:#2563eb;height:14px;width:{share * 100:.1f}%"></div></div>'
        f'<div style="margin-top:4px;font-size:13px">{html.escape(text)}</div></div>'
    )
