"""Small HTML/SVG renderings for the Train tab: the loss chart and the progress bar.

The chart is drawn here rather than with gr.LinePlot because a line plot shows nothing until it has
two points, and short runs are exactly when users look at it; every logged step is drawn as a dot
from the first one on, with train and eval loss in two colours.
"""

from __future__ import annotations

import html
import math

WIDTH, HEIGHT = 640, 260
PAD_L, PAD_R, PAD_T, PAD_B = 52, 16, 16, 34
COLORS = {"train": "#2563eb", "eval": "#ea580c"}


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def loss_svg(series: dict[str, list[tuple[float, float]]], title: str = "loss", empty: str = "") -> str:
    """An SVG chart of ``{"train": [(step, loss), ...], "eval": [...]}``.

    >>> "<circle" in loss_svg({"train": [(1, 2.5)]})
    True
    """
    points = [p for pts in series.values() for p in pts if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return f'<div class="tuner-chart-empty">{html.escape(empty)}</div>'
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(0.0, min(xs)), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    y0, y1 = min(ys), max(ys)
    margin = (y1 - y0) * 0.08 or max(abs(y1) * 0.1, 0.1)
    y0, y1 = max(0.0, y0 - margin) if y0 >= 0 else y0 - margin, y1 + margin

    def sx(x):
        return PAD_L + (x - x0) / (x1 - x0) * (WIDTH - PAD_L - PAD_R)

    def sy(y):
        return HEIGHT - PAD_B - (y - y0) / (y1 - y0) * (HEIGHT - PAD_T - PAD_B)

    parts = [
        f'<svg class="tuner-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg" '
        'style="max-width:760px;font:11px sans-serif">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{WIDTH - PAD_L - PAD_R}" height="{HEIGHT - PAD_T - PAD_B}" '
        'fill="none" stroke="#9ca3af" stroke-width="0.5"/>',
    ]
    for y in _ticks(y0, y1):
        parts.append(
            f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e5e7eb" stroke-width="0.5"/>'
        )
        parts.append(
            f'<text x="{PAD_L - 4}" y="{sy(y) + 4:.1f}" text-anchor="end" fill="#6b7280">{y:.3g}</text>'
        )
    for x in _ticks(x0, x1, 6):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{HEIGHT - PAD_B + 14}" text-anchor="middle" fill="#6b7280">'
            f"{x:g}</text>"
        )
    parts.append(
        f'<text x="{(PAD_L + WIDTH - PAD_R) / 2}" y="{HEIGHT - 4}" text-anchor="middle" '
        'fill="#6b7280">step</text>'
    )
    legend_x = PAD_L + 8
    for name, pts in series.items():
        pts = [p for p in pts if p[1] is not None and math.isfinite(p[1])]
        if not pts:
            continue
        color = COLORS.get(name, "#059669")
        if len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        radius = 3 if len(pts) < 60 else 1.5
        for x, y in pts:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{radius}" fill="{color}">'
                f"<title>{name} step {x:g}: {y:.4f}</title></circle>"
            )
        parts.append(
            f'<rect x="{legend_x}" y="{PAD_T + 6}" width="10" height="10" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="{PAD_T + 15}" fill="#374151">{html.escape(name)} '
            f"{pts[-1][1]:.4f}</text>"
        )
        legend_x += 120
    parts.append("</svg>")
    return "".join(parts)


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
