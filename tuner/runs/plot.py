"""The loss chart of a run: train and eval loss against the step, as SVG.

One drawing for both readers of a run folder: the app's Train tab shows it live, and every run writes
it to ``loss.svg`` at each checkpoint and at the end (tuner.train.tracking), so a CLI user gets the
same picture. Every logged step is a dot from the first one on (a line plot would show nothing until
it has two points, and short runs are exactly when users look); train and eval loss in two colours.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from tuner.core.io import write_text_atomic
from tuner.runs.events import read_events, whole_run

PLOT_FILE = "loss.svg"

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


def finite_points(series: dict[str, list[tuple[float, float]]]) -> list[tuple[float, float]]:
    return [p for pts in series.values() for p in pts if p[1] is not None and math.isfinite(p[1])]


def loss_svg(
    series: dict[str, list[tuple[float, float]]], title: str = "loss", *, background: str | None = None
) -> str:
    """An SVG chart of ``{"train": [(step, loss), ...], "eval": [...]}`` (at least one finite point).

    ``background``: a fill colour for a standalone file (the app draws on its own page colour).

    >>> "<circle" in loss_svg({"train": [(1, 2.5)]})
    True
    """
    points = finite_points(series)
    if not points:
        raise ValueError("no finite loss to draw")
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
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="{background}"/>' if background else "",
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


def loss_series(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """``{"train": [(step, loss)...], "eval": [(step, eval_loss)...]}`` from a run's events."""
    return {
        "train": [(e["step"], e["loss"]) for e in events if e["type"] == "log" and e.get("loss") is not None],
        "eval": [
            (e["step"], e["eval_loss"])
            for e in events
            if e["type"] == "eval" and e.get("eval_loss") is not None
        ],
    }


def write_loss_plot(run_dir: str | Path, title: str | None = None) -> Path | None:
    """Draw ``<run_dir>/loss.svg`` from its events.jsonl (all its sessions, as one run); atomic.
    None when no finite loss was logged yet (nothing is written then)."""
    run_dir = Path(run_dir)
    series = loss_series(whole_run(read_events(run_dir)))
    if not finite_points(series):
        return None
    label = title or f"loss: {run_dir.parent.name}/{run_dir.name}"
    path = run_dir / PLOT_FILE
    write_text_atomic(path, loss_svg(series, label, background="white") + "\n")
    return path
