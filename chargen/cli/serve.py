"""``chargen serve``: the HTTP API and the web page over the runs given (or every run)."""

from __future__ import annotations

import ipaddress

import click

from chargen.cli.base import CONTEXT, CliError, checkpoint_dir, checkpoint_dir_option, device_option


@click.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="CHARGEN_API_KEY",
    help="Require 'Authorization: Bearer KEY' on /v1/ (env CHARGEN_API_KEY).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Sequences in flight per model; more requests get 429.",
)
@click.option(
    "--request-seconds",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="Time limit of one request.",
)
@click.option("--no-assets", is_flag=True, help="Serve the page without fetching abcjs.")
@device_option("cpu")
@checkpoint_dir_option
@click.pass_context
def serve(ctx, runs, host, port, api_key, max_rows, request_seconds, no_assets, device):
    """Serve RUNs (default: every run) over HTTP: an OpenAI-compatible completion API,
    tunes with MIDI, scores, and a web page at / where text streams in and tunes are
    seen and heard.

    \b
    Examples:
      chargen serve                               # every run, http://127.0.0.1:8000/
      chargen serve bard folk --port 9000
      chargen serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
      curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"model": "bard", "prompt": "ROMEO:", "max_tokens": 100}'
    """
    try:
        import uvicorn

        from chargen.server.app import Limits, create_app
    except ImportError:
        raise CliError("chargen serve needs its extra: pip install 'chargen[serve]'", 1) from None
    from chargen import api
    from chargen.cli.console import console
    from chargen.files import cache_root

    names = served_names(runs, checkpoint_dir(ctx))
    if not names:
        raise CliError("no runs to serve; train one first: chargen train CORPUS --name NAME", 1)
    models = {}
    for name in names:
        model = api.load(name, device=device, checkpoint_dir=checkpoint_dir(ctx))
        models[model.name] = model
    if not _loopback(host):
        console.print(
            f"[yellow]warning:[/] serving on {host}: anyone who can reach this machine can use "
            f"it{'' if api_key else '; set --api-key'}"
        )
    limits = Limits(rows=max_rows, seconds=request_seconds)
    cache = None if no_assets else cache_root() / "assets"
    app = create_app(models, limits, api_key, cache)
    console.print(f"Serving {', '.join(models)} at http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_names(runs: tuple[str, ...], checkpoint_dir) -> list[str]:
    """The runs named, else every run in the checkpoint directory and those that ship with
    chargen (``folk``), unless one of yours has the name."""
    if runs:
        return list(runs)
    from chargen import api
    from chargen.runs.store import shipped_names

    names = [run.name for run in api.list_runs(checkpoint_dir)]
    return names + [name for name in shipped_names() if name not in names]
