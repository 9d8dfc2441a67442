"""The ``ar`` command: plugins, train, sample, bench, demo (and plugins' own subcommands)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer
from rich.console import Console
from typer.exceptions import TyperException

from ar_cli import bench as bench_mod
from ar_cli.report import RESULT_FILE, Run, print_result, print_table, write_report
from ar_core import plugins, registry
from ar_core.atomic import atomic_write_text
from ar_core.errors import ArError, ConfigError, validation_message
from ar_core.recipes import (
    RECIPE_FILE,
    RecipeResult,
    Table,
    build_config,
    parse_overrides,
    read_recipe_file,
    write_recipe_file,
)
from ar_core.runs import RunControl, RunFolder, read_run_file, run_control

app = typer.Typer(
    name="ar",
    help="Autoregressive generation over steps, in every modality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)


def writable_folder(path: Path, option: str = "--out") -> Path:
    """``path`` as a folder this process can write to (created if missing), or a one-line
    ConfigError naming the problem and the fix; checked before any work starts."""
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{option} {path} is a file, not a folder; pass a folder path (it is created if "
            f"missing)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".ar-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{option} {path} cannot be written ({reason}); pass a folder you can write to"
        ) from None
    return path


def _progress(message: str) -> None:
    err_console.print(f"[dim]{message}[/dim]")


def plugins_table() -> Table:
    rows = []
    for info in plugins.plugin_infos():
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registered.items()))
        rows.append(
            [
                info.name,
                info.distribution or "-",
                info.version or "-",
                info.status,
                (info.error or "-") if info.status == "failed" else (registered or "-"),
            ]
        )
    return Table(
        "Plugins", ["plugin", "distribution", "version", "status", "registered (or error)"], rows
    )


@app.command("plugins")
def plugins_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every plugin, its distribution and version, its status (loaded, failed,
    skipped) and what it registered, or the error that made it fail."""
    infos = plugins.plugin_infos()
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
    else:
        print_table(console, plugins_table())


@app.command("train")
def train_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `ar plugins`).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config field: key=value.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default ar-out/RECIPE).")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Start from the small demo settings.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the unfinished run in --out from its last checkpoint (same "
            "config; steps may change).",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run in --out; the old run stays until the new one completes.",
        ),
    ] = False,
    checkpoint_every: Annotated[
        int,
        typer.Option("--checkpoint-every", help="Checkpoint every N updates (0: off).", min=0),
    ] = 0,
    checkpoint_minutes: Annotated[
        float,
        typer.Option("--checkpoint-minutes", help="Checkpoint every M minutes (0: off).", min=0.0),
    ] = 10.0,
) -> None:
    """Run a recipe: data, training, sampling, evaluation; results under --out
    (index.html, and result.json for scripts). A folder holding a run is refused unless
    --resume or --overwrite; Ctrl-C saves a checkpoint and prints how to resume."""
    r = registry.recipes.get(recipe)
    overrides = parse_overrides(set_ or [])
    base = r.demo_config() if demo else r.config_class()
    config = build_config(r.config_class, base, overrides)
    out_dir = writable_folder(out or Path("ar-out") / recipe)
    control = RunControl(
        resume=resume,
        checkpoint_every_steps=checkpoint_every,
        checkpoint_every_seconds=checkpoint_minutes * 60.0,
    )
    with RunFolder(
        out_dir,
        recipe=recipe,
        config=config,
        resume=resume,
        overwrite=overwrite,
        overrides=overrides,
    ) as run:
        if run.work != out_dir:
            _progress(f"writing the new run into {run.work}; it replaces {out_dir} when done")
        start = time.perf_counter()
        try:
            with run_control(control):
                result = r.run(run.config, run.work, _progress)
        except KeyboardInterrupt:
            message = run.interrupted(control.last_checkpoint())
            err_console.print(message, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except BaseException as exc:
            run.failed(f"{type(exc).__name__}: {exc}", checkpoints=len(control.checkpoints))
            raise
        seconds = time.perf_counter() - start
        print_result(console, result)
        write_report(run.work, f"ar train {recipe}", [Run(recipe, run.config, result, seconds)], [])
        run.complete()
    console.print(f"wrote {out_dir} (report: {out_dir / 'index.html'}, results: {RESULT_FILE})")


SAMPLES_FILE = "samples.txt"  # every text sample of `ar sample`, one block each


def _free_sibling(run: Path, suffix: str) -> Path:
    """``RUN-suffix`` beside ``run``, or ``RUN-suffix-2``, ... (never an existing path)."""
    base = run.absolute()
    for i in range(1, 10_000):
        path = base.with_name(f"{base.name}-{suffix}" + (f"-{i}" if i > 1 else ""))
        if not path.exists():
            return path
    raise ConfigError(f"no free folder name beside {run}; pass --out")


OUTPUT_SUFFIXES = (".png", ".gif", ".jpg", ".html", ".txt")  # what sampling writes, not reads


def _is_output(entry: Path) -> bool:
    """Entries of a run that are outputs (pictures, reports), not inputs of sampling: not
    linked, so that a recipe writing a file of the same name writes its own."""
    return entry.suffix in OUTPUT_SUFFIXES or entry.name in (RESULT_FILE, "img", "samples")


@contextlib.contextmanager
def _run_view(run: Path, out: Path, recipe: str, fields: dict[str, Any] | None) -> Iterator[Path]:
    """``out`` as the recipe's checkpoint folder: a link to each entry of ``run`` (read
    through, never written), so that what the recipe writes lands in ``out``; with
    ``fields``, a recipe.json of its own (the run's config with --set applied). The links
    are removed afterwards."""
    links = []
    try:
        for entry in sorted(run.iterdir()):
            target = out / entry.name
            if target.exists() or entry.name.startswith(".") or _is_output(entry):
                continue
            if fields is not None and entry.name == RECIPE_FILE:
                continue
            target.symlink_to(entry.absolute(), target_is_directory=entry.is_dir())
            links.append(target)
        if fields is not None:
            atomic_write_text(
                out / RECIPE_FILE, json.dumps({"recipe": recipe, "config": fields}, indent=2)
            )
        yield out
    finally:
        for link in links:
            if link.is_symlink():
                link.unlink()


@app.command("sample")
def sample_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A folder written by `ar train`.")],
    n: Annotated[int, typer.Option("-n", help="How many samples.", min=1)] = 8,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where samples go (default: RUN-samples beside the run)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field of the run's config: key=value."),
    ] = None,
) -> None:
    """Sample from a run written by `ar train`. The run is only read (it may be
    read-only); samples, pictures, index.html and result.json go to --out."""
    if not checkpoint.is_dir():
        raise ArError(f"{checkpoint} is not a folder; pass the --out folder of `ar train`")
    run = read_run_file(checkpoint)
    if run is not None and run.get("status") != "complete":
        raise ConfigError(
            f"{checkpoint} holds an unfinished run ({run.get('recipe')}, {run.get('status')}); "
            f"finish it with: ar train {run.get('recipe')} --out {checkpoint} --resume"
        )
    name, saved = read_recipe_file(checkpoint)
    r = registry.recipes.get(name)
    fields = None
    if set_:
        base = build_config(r.config_class, None, saved)
        fields = build_config(r.config_class, base, parse_overrides(set_)).model_dump(mode="json")
    target = out if out is not None else _free_sibling(checkpoint, "samples")
    if target.absolute() == checkpoint.absolute():
        raise ConfigError(f"--out {target} is the run itself; pass another folder")
    out_dir = writable_folder(target)
    start = time.perf_counter()
    with _run_view(checkpoint, out_dir, name, fields) as view:
        result = r.sample(view, n, _progress)
        seconds = time.perf_counter() - start
        print_result(console, result)
        index, _ = write_report(
            out_dir,
            f"ar sample {checkpoint}",
            [
                Run(
                    name,
                    r.config_class.model_validate(fields if fields is not None else saved),
                    result,
                    seconds,
                )
            ],
            [],
        )
    saved_note = ""
    if result.samples:
        atomic_write_text(out_dir / SAMPLES_FILE, "\n\n".join(result.samples) + "\n")
        saved_note = f"{len(result.samples)} samples in {out_dir / SAMPLES_FILE}, "
    console.print(f"wrote {saved_note}report {index}", markup=False, highlight=False)


@app.command("bench")
def bench_cmd(
    name: Annotated[str | None, typer.Argument(help="Benchmark name; omit to list them.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    args: Annotated[
        list[str] | None, typer.Argument(help="Arguments passed to the benchmark (after --).")
    ] = None,
) -> None:
    """Run a benchmark (prints a table, writes JSON); without NAME, list them."""
    if name is None:
        rows = [[k, v] for k, v in sorted(bench_mod.available().items())]
        if as_json:
            print(json.dumps(dict(rows), indent=2))
        else:
            print_table(console, Table("Benchmarks", ["name", "source"], rows))
        return
    fn = bench_mod.load(name)
    result = fn(list(args or []))
    if as_json:
        print(json.dumps(result, indent=2, default=str))


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("ar-demo"),
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only these recipes.")
    ] = None,
    all_: Annotated[
        bool,
        typer.Option(
            "--all", help="Run every installed recipe (also those not in the default demo)."
        ),
    ] = False,
) -> None:
    """Run the small default recipes end to end (each at its demo settings); write
    OUT/index.html and OUT/result.json, which also list the recipes not run and the
    command that runs each."""
    if only and all_:
        raise ConfigError("pass --only NAME or --all, not both")
    registered = registry.recipes.names()
    names = [n for n in registered if getattr(registry.recipes.get(n), "in_demo", True)]
    if all_:
        names = list(registered)
    if only:
        for n in only:
            registry.recipes.get(n)  # unknown names fail here, with the list
        names = [n for n in registered if n in only] or list(only)
    if not names:
        raise ArError("no recipe is installed; install ar-core (and ar-text, ar-vision, ...)")
    not_run = not_run_table(n for n in registered if n not in names)
    writable_folder(out)
    runs: list[Run] = []
    failed: list[str] = []
    total = time.perf_counter()
    for i, name in enumerate(names, 1):
        r = registry.recipes.get(name)
        console.rule(f"[{i}/{len(names)}] {name}: {r.description}")
        config = r.demo_config()
        run_dir = out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        write_recipe_file(run_dir, name, config)
        start = time.perf_counter()
        try:
            result = r.run(config, run_dir, _progress)
        except Exception as exc:  # one failing recipe must not cost the others their report
            error = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            err_console.print(f"error: recipe {name!r} failed: {error}", markup=False)
            result = RecipeResult(title=f"{name}: FAILED", summary=f"failed: {error}")
            failed.append(name)
            runs.append(Run(name, config, result, time.perf_counter() - start, error=error))
            continue
        seconds = time.perf_counter() - start
        print_result(console, result)
        runs.append(Run(name, config, result, seconds))
    total_seconds = time.perf_counter() - total
    timing = Table(
        "Demo timings",
        ["recipe", "seconds", "status"],
        [[run.recipe, round(run.seconds, 1), run.status] for run in runs]
        + [["total", round(total_seconds, 1), f"{len(failed)} failed" if failed else "ok"]],
    )
    index, result_json = write_report(
        out,
        "ar demo",
        runs,
        [plugins_table(), timing] + ([not_run] if not_run.rows else []),
        extra={
            "total_seconds": round(total_seconds, 3),
            "failed": failed,
            "not_run": [
                {"recipe": row[0], "demo_command": row[2], "train_command": row[3]}
                for row in not_run.rows
            ],
        },
    )
    for name, why, demo_command, train_command in not_run.rows:  # plain lines: copyable
        console.print(
            f"not run: {name} ({why}); run it with: {demo_command}  or: {train_command}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"[bold]wrote {index} and {result_json}[/bold]")
    if failed:
        err_console.print(
            f"error: {len(failed)} of {len(runs)} recipes failed ({', '.join(failed)}); "
            f"see {index}",
            markup=False,
        )
        raise typer.Exit(1)


def not_run_table(names: Iterable[str]) -> Table:
    """The recipes a demo did not run, with the commands that run each."""
    rows = []
    for name in sorted(names):
        r = registry.recipes.get(name)
        why = "left out by --only" if getattr(r, "in_demo", True) else "not in the default demo"
        rows.append([name, why, f"ar demo --only {name}", f"ar train {name}"])
    return Table(
        "Recipes not run",
        ["recipe", "why", "run its demo", "train it (full settings)"],
        rows,
        note="ar demo --all runs every recipe at its demo settings",
    )


def _add_plugin_commands() -> None:
    try:
        plugins.add_commands(app)
    except ArError as exc:  # a duplicate or broken plugin: report, keep the core commands
        err_console.print(f"error: {exc}")


def _one_line(message: str) -> None:
    # soft_wrap: one line whatever the terminal width (a wrapped line splits names)
    message = " ".join(message.split())  # an error's own newlines too
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def _usage_message(exc: Exception) -> str:
    """A parser error as one line: click's message and where to read the usage."""
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "ar"
    return f"{message.rstrip('.')} (see `{command} --help`)"


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes end with a one-line error and exit code 2."""
    warnings.simplefilter("default", plugins.PluginLoadWarning)
    _add_plugin_commands()
    try:
        result: Any = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        return 1
    except TyperException as exc:  # usage errors (bad option, missing argument, ...)
        _one_line(_usage_message(exc))
        return 2
    except ArError as exc:
        _one_line(str(exc))
        return 2
    except pydantic.ValidationError as exc:  # a config a plugin validated itself
        _one_line(validation_message(exc, exc.title))
        return 2
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
