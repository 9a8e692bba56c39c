"""``chargen eval``, ``chargen score`` and ``chargen identify``: how likely models find a text."""

from __future__ import annotations

from pathlib import Path

import click

from chargen.cli.base import (
    CONTEXT,
    CliError,
    checkpoint_dir,
    checkpoint_dir_option,
    device_option,
    echo_json,
    fmt,
    load_model,
    root,
    weights_option,
)


@click.command("eval", context_settings=CONTEXT)
@click.argument("args", nargs=-1, required=True, metavar="[RUN] FILE...")
@weights_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@device_option("auto")
@checkpoint_dir_option
@click.pass_context
def eval_(ctx, args, weights, as_json, device):
    """Score unseen text: loss in nats/token, bits per character, perplexity.

    RUN is a run name or directory (default: the latest run); each FILE is a UTF-8 text.

    \b
    Examples:
      chargen eval bard held_out.txt
      chargen eval held_out.txt                    # the latest run
      chargen eval bard a.txt b.txt --json
    """
    from chargen.runs.store import is_run

    first = Path(args[0])
    names_a_run = is_run(first) or is_run(root(ctx) / args[0])
    if len(args) >= 2 and not first.is_file():
        run_spec, files = args[0], args[1:]
    elif len(args) == 1 and names_a_run:
        raise CliError(f"give a text file to evaluate {args[0]!r} on: chargen eval RUN FILE", 2)
    else:
        run_spec, files = None, args
    _report_scores(ctx, run_spec, files, weights, as_json, device, per_line=False)


@click.command(context_settings=CONTEXT)
@click.argument("run")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--per-line", is_flag=True, help="Score every line on its own.")
@weights_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (or line).")
@device_option("auto")
@checkpoint_dir_option
@click.pass_context
def score(ctx, run, files, per_line, weights, as_json, device):
    """Score files, or each of their lines, with the model RUN.

    Lower bits per character means the model finds the text more likely: a
    line in the model's own language or style scores low.

    \b
    Examples:
      chargen score bard sonnets.txt
      chargen score english mixed.txt --per-line --json
    """
    _report_scores(ctx, run, files, weights, as_json, device, per_line)


def _report_scores(ctx, run_spec, files, weights, as_json, device, per_line) -> None:
    from chargen.cli.console import console, table
    from chargen.files import read_text

    for file in files:
        path = Path(file)
        if not path.exists():
            raise CliError(f"{file}: no such file", 2)
        if not path.is_file():
            raise CliError(f"{file}: not a file", 2)
    model = load_model(ctx, run_spec, weights, device)
    rows = []  # (file, line number or None, score)
    for file in files:
        if per_line:
            scores = model.score_lines(read_text(file).splitlines())
            rows += [(file, i + 1, score) for i, score in enumerate(scores)]
            continue
        score, unknown = model.score_file(file)
        rows.append((file, None, score))
        if unknown and not as_json:
            console.print(
                f"[yellow]note:[/] {file}: {unknown:,} tokens the model never saw were scored "
                "as <unk>"
            )
    if as_json:
        for file, line, score in rows:
            record = {"run": model.name, "weights": model.weights, "file": file}
            if line is not None:
                record["line"] = line
            echo_json(record | score.as_dict())
        return
    columns = ["file", "line"] if per_line else ["file"]
    rendered = [
        [file, *([str(line)] if per_line else [])]
        + [fmt(s.nats_per_token), fmt(s.bits_per_char, 3), fmt(s.perplexity, 2), f"{s.tokens:,}"]
        for file, line, s in rows
    ]
    title = f"{model.name} ({model.weights} weights)"
    columns += ["nats/token", "bits/char", "perplexity", "tokens"]
    console.print(table(title, columns, rendered))


@click.command(context_settings=CONTEXT)
@click.argument("text", required=False)
@click.option(
    "-f", "--file", type=click.Path(exists=True, dir_okay=False), help="Read the text from here."
)
@click.option(
    "-m",
    "--model",
    "models",
    multiple=True,
    help="A run to compare (repeat; default: every run in the checkpoint directory).",
)
@weights_option
@click.option("--json", "as_json", is_flag=True, help="The ranking as a JSON array on stdout.")
@checkpoint_dir_option
@click.pass_context
def identify(ctx, text, file, models, weights, as_json):
    """Rank models by how likely they find a text: which language, author or tradition is it?

    The confidence of each model is the softmax of the models' log-likelihoods of the
    whole text (equal priors).

    \b
    Examples:
      chargen identify "Je pense, donc je suis" -m english -m french -m german
      chargen identify --file tune.abc --checkpoint-dir traditions/
    """
    from chargen import api
    from chargen.cli.console import console, table
    from chargen.files import read_text

    if (text is None) == (file is None):
        raise CliError("give the text either as an argument or with --file, not both", 2)
    if file is not None:
        text = read_text(file)
    ranked = api.identify(
        text, list(models) or None, weights=weights, checkpoint_dir=checkpoint_dir(ctx)
    )
    if as_json:
        echo_json(
            [
                {
                    "run": r.name,
                    "confidence": r.confidence,
                    "bits_per_char": r.score.bits_per_char,
                    "nats": r.score.nats,
                    "tokens": r.score.tokens,
                }
                for r in ranked
            ]
        )
        return
    rows = [
        [r.name, f"{r.confidence:.1%}", fmt(r.score.bits_per_char, 3), f"{r.score.nats:,.1f}"]
        for r in ranked
    ]
    console.print(table(None, ["model", "confidence", "bits/char", "total nats"], rows))
