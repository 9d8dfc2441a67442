"""Rendering of recipe results: rich tables in the terminal, an HTML page on disk."""

from __future__ import annotations

import html
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from ar_core.recipes import RecipeResult, Table, atomic_write_text


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def print_table(console: Console, table: Table) -> None:
    # every text a recipe returns is escaped: "[before]" in a sample is text, not rich markup
    rt = RichTable(title=escape(table.title), caption=escape(table.note) or None)
    for col in table.columns:
        rt.add_column(escape(col))
    for row in table.rows:
        rt.add_row(*(escape(fmt(v)) for v in row))
    console.print(rt)


def print_result(console: Console, result: RecipeResult) -> None:
    console.rule(escape(result.title))
    if result.summary:
        console.print(escape(result.summary))
    for table in result.tables:
        print_table(console, table)
    for sample in result.samples[:4]:
        console.print(f"[dim]sample:[/dim] {escape(repr(sample))}")
    for caption, path in result.images:
        console.print(f"[dim]image:[/dim] {escape(caption)}: {escape(str(path))}")


def plot_curves(result: RecipeResult, path: Path) -> Path | None:
    if not result.curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for name, points in result.curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(result.title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;
color:#222;padding:0 1em}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
caption{font-weight:600;text-align:left;padding:.3em 0}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.note{color:#555;font-size:.9em}
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (
        f"<table><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}"
    )


def write_html(
    out_dir: Path, title: str, sections: list[tuple[RecipeResult, float]], preamble: list[Table]
) -> Path:
    """Write ``out_dir/index.html`` with every result; images are copied next to it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>Written {datetime.now(UTC):%Y-%m-%d %H:%M UTC}.</p>",
    ]
    for table in preamble:
        parts.append(_html_table(table))
    for i, (result, seconds) in enumerate(sections):
        parts.append(f"<h2>{html.escape(result.title)}</h2>")
        parts.append(f"<p class='note'>{seconds:.1f} s</p>")
        if result.summary:
            parts.append(f"<p>{html.escape(result.summary)}</p>")
        for table in result.tables:
            parts.append(_html_table(table))
        curve = plot_curves(result, out_dir / "img" / f"curves-{i}.png")
        images = list(result.images) + ([("training curves", curve)] if curve else [])
        for caption, path in images:
            path = Path(path)
            if path.resolve().is_relative_to(out_dir.resolve()):  # already in the report
                rel = path.resolve().relative_to(out_dir.resolve())
            else:
                rel = Path("img") / f"{i}-{path.name}"
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out_dir / rel)
            parts.append(
                f"<figure><img src='{html.escape(str(rel))}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        if result.samples:
            parts.append("<h3>Samples</h3>")
            for sample in result.samples:
                parts.append(f"<pre>{html.escape(sample)}</pre>")
    parts.append("</body></html>")
    index = out_dir / "index.html"
    atomic_write_text(index, "\n".join(parts))
    return index
