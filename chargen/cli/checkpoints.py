"""``chargen checkpoints``: list, show, remove and prune saved runs."""

from __future__ import annotations

import sys
import time

import click

from chargen.cli.base import (
    CONTEXT,
    ChargenGroup,
    CliError,
    checkpoint_dir_option,
    echo_json,
    fmt,
    root,
)


@click.group(context_settings=CONTEXT, cls=ChargenGroup)
def checkpoints():
    """List, inspect, remove and prune saved runs."""


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


@checkpoints.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="A JSON array on stdout.")
@checkpoint_dir_option
@click.pass_context
def checkpoints_list(ctx, as_json):
    """List runs, most recently updated first.

    \b
    Example:
      chargen checkpoints list
    """
    from chargen.cli.console import console, table
    from chargen.runs.store import RUN_FILE, scan_runs

    where = root(ctx)
    found, damaged = scan_runs(where)
    runs = [r.summary() for r in found]
    for path in damaged:
        console.print(
            f"[yellow]warning:[/] {path.name}: damaged run, not listed "
            f"(inspect {path / RUN_FILE}, or delete it: chargen checkpoints rm {path.name})"
        )
    if as_json:
        echo_json(runs)
        return
    if not runs:
        console.print(f"No runs in {where}. Train one: chargen train CORPUS --name NAME")
        return
    rows = [
        [
            r["name"],
            r["level"],
            f"{r['cell']} {r['layers']}x{r['hidden']}",
            f"{r['parameters']:,}" if r["parameters"] is not None else "-",
            f"{r['steps']:,}",
            fmt(r["best_val_loss"]),
            fmt(r["best_val_bpc"], 3),
            r["status"] or "-",
            _when(r["updated"]),
        ]
        for r in runs
    ]
    console.print(
        table(
            str(where),
            [
                "name",
                "level",
                "cell",
                "params",
                "steps",
                "best val",
                "bits/char",
                "status",
                "updated",
            ],
            rows,
        )
    )


@checkpoints.command("show", context_settings=CONTEXT)
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Config, summary and metrics as JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Also draw the loss curves to this PNG (needs matplotlib).",
)
@checkpoint_dir_option
@click.pass_context
def checkpoints_show(ctx, run, as_json, plot):
    """Show a run's config, metrics and validation loss curve.

    \b
    Example:
      chargen checkpoints show bard --plot bard.png
    """
    from chargen.cli.console import console, loss_chart
    from chargen.runs.store import read_metrics, resolve_run

    found = resolve_run(run, root(ctx))
    metrics = read_metrics(found)
    summary = found.summary()
    if plot:
        _plot(metrics, plot, found.name)
    if as_json:
        echo_json(
            {
                **summary,
                "model": found.info["model"],
                "train": found.info["train"],
                "metrics": metrics,
            }
        )
        return
    console.print(f"[bold]{found.name}[/]  {found.path}")
    for key in ("status", "corpus", "resumable"):
        console.print(f"  {key:<12} {summary[key]}")
    for key in ("parameters", "steps", "tokens_seen"):
        console.print(f"  {key:<12} {summary[key] or 0:,}")
    console.print(
        f"  {'best val':<12} {fmt(summary['best_val_loss'])} nats/token, "
        f"{fmt(summary['best_val_bpc'], 3)} bits/char"
    )
    console.print(f"  {'disk':<12} {summary['disk_bytes'] / 1e6:.1f} MB")
    console.print(f"  {'model':<12} {_as_flags(found.info['model'], skip={'vocab_size'})}")
    level = found.info["train"].get("level")
    word_only = {"min_freq"} if level not in ("word", "bpe") else set()
    word_only |= {"vocab_size"} if level not in ("word", "abc", "bpe") else set()
    console.print(f"  {'training':<12} {_as_flags(found.info['train'], skip=word_only)}")
    evaluations = [m for m in metrics if "val_loss" in m]
    if evaluations:
        console.print("\nValidation loss (nats/token):")
        console.print(
            loss_chart([m["step"] for m in evaluations], [m["val_loss"] for m in evaluations])
        )


def _as_flags(config: dict, skip: frozenset | set = frozenset()) -> str:
    """A config as the command-line flags that give it."""
    from chargen.config import option_name

    flags = []
    for field, value in config.items():
        if field in skip or value is None or value is False:
            continue
        if field == "time_limit":
            value = f"{value:g}s"
        flags.append(option_name(field) if value is True else f"{option_name(field)} {value}")
    return " ".join(flags)


def _plot(metrics: list[dict], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError(
            "--plot needs matplotlib: pip install matplotlib (or chargen[plot])", 1
        ) from None
    figure, axes = plt.subplots(figsize=(7, 4))
    evaluations = [m for m in metrics if "val_loss" in m]  # other lines: training loss only
    axes.plot([m["step"] for m in metrics], [m["train_loss"] for m in metrics], label="train")
    axes.plot([m["step"] for m in evaluations], [m["val_loss"] for m in evaluations],
              marker="o", label="validation")  # fmt: skip
    axes.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    click.echo(f"Wrote {path}", err=True)


@checkpoints.command("rm", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@checkpoint_dir_option
@click.pass_context
def checkpoints_rm(ctx, runs, yes):
    """Delete runs.

    \b
    Example:
      chargen checkpoints rm old-run other-run --yes
    """
    from chargen.runs.store import find_run_dir, remove_run

    found = [find_run_dir(name, root(ctx)) for name in runs]  # damaged runs too
    names = ", ".join(path.name for path in found)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(f"refusing to delete {names} without confirmation; add --yes", 2)
        click.confirm(f"Delete {names}?", abort=True, err=True)
    for path in found:
        link = path.readlink() if path.is_symlink() else None
        remove_run(path)
        if link is not None:
            click.echo(f"Deleted the link {path.name} (its target {link} was left alone)", err=True)
        else:
            click.echo(f"Deleted {path.name} ({path})", err=True)


@checkpoints.command("prune", context_settings=CONTEXT)
@click.argument("runs", nargs=-1)
@click.option("--all", "all_runs", is_flag=True, help="Prune every finished run.")
@click.option("--best-only", is_flag=True, help="Also delete the last weights, keep the best.")
@click.option("--force", is_flag=True, help="Prune named runs even if they could be resumed.")
@checkpoint_dir_option
@click.pass_context
def checkpoints_prune(ctx, runs, all_runs, best_only, force):
    """Free disk: drop resume state (optimizer moments) from finished runs.

    A pruned run still samples and evaluates but can no longer be resumed.

    \b
    Examples:
      chargen checkpoints prune bard
      chargen checkpoints prune --all --best-only
    """
    from chargen.runs.store import list_runs, prune_run, resolve_run

    where = root(ctx)
    if all_runs:
        found = [r for r in list_runs(where) if r.info.get("status") == "finished"]
    elif runs:
        found = [resolve_run(name, where, shipped=False) for name in runs]
    else:
        raise CliError("name the runs to prune, or use --all", 2)
    total = 0
    for run in found:
        freed = prune_run(run, best_only=best_only, force=force)
        total += freed
        click.echo(f"{run.name}: freed {freed / 1e6:.1f} MB", err=True)
    click.echo(f"Freed {total / 1e6:.1f} MB in {len(found)} run(s)", err=True)
