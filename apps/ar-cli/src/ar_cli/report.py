"""Rendering of recipe results: rich tables in the terminal, an HTML page and its
``result.json`` on disk."""

from __future__ import annotations

import html
import json
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from ar_core.recipes import RecipeResult, Table, atomic_write_text

RESULT_FILE = "result.json"  # beside index.html: the same results, for scripts


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


@dataclass
class Run:
    """One recipe run of a report: what ``result.json`` records beside ``index.html``."""

    recipe: str
    config: pydantic.BaseModel
    result: RecipeResult
    seconds: float
    error: str | None = None  # the recipe raised: ``result`` only names the failure

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "failed"


def place_images(
    out_dir: Path, sections: list[tuple[RecipeResult, float]]
) -> list[list[tuple[str, Path]]]:
    """Each section's images (its own, then its training curves) as paths relative to
    ``out_dir``: images from elsewhere are copied under ``out_dir/img``."""
    placed: list[list[tuple[str, Path]]] = []
    for i, (result, _) in enumerate(sections):
        curve = plot_curves(result, out_dir / "img" / f"curves-{i}.png")
        images = list(result.images) + ([("training curves", curve)] if curve else [])
        mine: list[tuple[str, Path]] = []
        for caption, path in images:
            path = Path(path)
            if path.resolve().is_relative_to(out_dir.resolve()):  # already in the report
                rel = path.resolve().relative_to(out_dir.resolve())
            else:
                rel = Path("img") / f"{i}-{path.name}"
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out_dir / rel)
            mine.append((caption, rel))
        placed.append(mine)
    return placed


def _render_html(
    out_dir: Path,
    title: str,
    sections: list[tuple[RecipeResult, float]],
    preamble: list[Table],
    placed: list[list[tuple[str, Path]]],
) -> Path:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>Written {datetime.now(UTC):%Y-%m-%d %H:%M UTC}.</p>",
    ]
    for table in preamble:
        parts.append(_html_table(table))
    for (result, seconds), images in zip(sections, placed, strict=True):
        parts.append(f"<h2>{html.escape(result.title)}</h2>")
        parts.append(f"<p class='note'>{seconds:.1f} s</p>")
        if result.summary:
            parts.append(f"<p>{html.escape(result.summary)}</p>")
        for table in result.tables:
            parts.append(_html_table(table))
        for caption, rel in images:
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


def write_html(
    out_dir: Path, title: str, sections: list[tuple[RecipeResult, float]], preamble: list[Table]
) -> Path:
    """Write ``out_dir/index.html`` with every result; images are copied next to it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _render_html(out_dir, title, sections, preamble, place_images(out_dir, sections))


def _finite(value: Any) -> Any:
    """JSON that any parser reads: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def table_json(table: Table) -> dict[str, Any]:
    return {"title": table.title, "columns": table.columns, "rows": table.rows, "note": table.note}


def run_json(run: Run, images: list[tuple[str, Path]]) -> dict[str, Any]:
    """One run as ``result.json`` records it (image paths relative to the report folder)."""
    r = run.result
    return {
        "recipe": run.recipe,
        "status": run.status,
        "error": run.error,
        "config": run.config.model_dump(mode="json"),
        "seconds": round(run.seconds, 3),
        "title": r.title,
        "summary": r.summary,
        "metrics": r.metrics,
        "tables": [table_json(t) for t in r.tables],
        "images": [{"caption": c, "path": rel.as_posix()} for c, rel in images],
        "curves": {name: [list(p) for p in points] for name, points in r.curves.items()},
        "samples": r.samples,
    }


def write_report(
    out_dir: Path,
    title: str,
    runs: list[Run],
    preamble: list[Table],
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/index.html`` and ``out_dir/result.json`` (for scripts: one entry
    per run under ``"runs"``, with the tables shown on the page), both atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [(run.result, run.seconds) for run in runs]
    placed = place_images(out_dir, sections)
    index = _render_html(out_dir, title, sections, preamble, placed)
    payload = {
        "title": title,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
        "runs": [run_json(run, images) for run, images in zip(runs, placed, strict=True)],
    }
    result_path = out_dir / RESULT_FILE
    atomic_write_text(result_path, json.dumps(_finite(payload), indent=2, allow_nan=False))
    return index, result_path
