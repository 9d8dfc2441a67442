"""Line plots as plain SVG (no matplotlib: it is not an ar-core dependency).

:func:`line_plot` writes one panel: several named series of (x, y) points, optional log
axes, a legend; browsers show the file in the demo's ``index.html`` like a PNG.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from ar_core.atomic import atomic_write_text
from ar_core.errors import InputError

__all__ = ["line_plot"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def line_plot(
    path: Path,
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    width: int = 520,
    height: int = 320,
) -> Path:
    """Write ``series`` (name -> points) as an SVG line plot at ``path``; returns it."""
    pts = [(x, y) for s in series.values() for x, y in s]
    if not pts:
        raise InputError("line_plot: no points to draw")
    for x, y in pts:
        if not (math.isfinite(x) and math.isfinite(y)) or (logx and x <= 0) or (logy and y <= 0):
            raise InputError(f"line_plot: point ({x}, {y}) cannot be drawn on these axes")
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    fy = (lambda v: math.log10(v)) if logy else (lambda v: v)
    xs, ys = [fx(x) for x, _ in pts], [fy(y) for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 64, 150, 30, 44  # margins: the legend sits on the right
    W, H = width - L - R, height - T - B

    def px(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * W

    def py(v: float) -> float:
        return T + (1 - (v - y0) / (y1 - y0)) * H

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"font-family='sans-serif' font-size='11'>",
        "<rect width='100%' height='100%' fill='white'/>",
        f"<text x='{L}' y='18' font-size='13'>{html.escape(title)}</text>",
        f"<rect x='{L}' y='{T}' width='{W}' height='{H}' fill='none' stroke='#444'/>",
    ]
    for i in range(5):  # ticks
        vx, vy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        lx = f"{10**vx:.3g}" if logx else f"{vx:.3g}"
        ly = f"{10**vy:.3g}" if logy else f"{vy:.3g}"
        out.append(f"<text x='{px(vx):.1f}' y='{T + H + 14}' text-anchor='middle'>{lx}</text>")
        out.append(f"<text x='{L - 4}' y='{py(vy) + 4:.1f}' text-anchor='end'>{ly}</text>")
        out.append(
            f"<line x1='{L}' x2='{L + W}' y1='{py(vy):.1f}' y2='{py(vy):.1f}' stroke='#ddd'/>"
        )
    out.append(
        f"<text x='{L + W / 2}' y='{height - 8}' text-anchor='middle'>{html.escape(xlabel)}</text>"
    )
    out.append(
        f"<text x='14' y='{T + H / 2}' text-anchor='middle' "
        f"transform='rotate(-90 14 {T + H / 2})'>{html.escape(ylabel)}</text>"
    )
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        line = " ".join(f"{px(fx(x)):.1f},{py(fy(y)):.1f}" for x, y in s)
        out.append(f"<polyline points='{line}' fill='none' stroke='{color}' stroke-width='2'/>")
        for x, y in s:
            out.append(f"<circle cx='{px(fx(x)):.1f}' cy='{py(fy(y)):.1f}' r='3' fill='{color}'/>")
        key_y = T + 12 + 16 * i
        out.append(
            f"<line x1='{L + W + 10}' x2='{L + W + 28}' y1='{key_y - 4}' y2='{key_y - 4}' "
            f"stroke='{color}' stroke-width='2'/>"
        )
        out.append(f"<text x='{L + W + 32}' y='{key_y}'>{html.escape(name)}</text>")
    out.append("</svg>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(out))
    return path
