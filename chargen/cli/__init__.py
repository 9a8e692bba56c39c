"""The ``chargen`` command line: one module per command group over the Python API.

Each command parses its options, calls the library and renders the result; what they share
(error rendering, common options, output) is in ``chargen.cli.base``. torch is imported inside
commands, so ``chargen --help`` starts fast.
"""

from __future__ import annotations

import click

from chargen import __version__
from chargen.cli.base import CONTEXT, ChargenGroup
from chargen.cli.checkpoints import checkpoints
from chargen.cli.music import abc_group, corpus
from chargen.cli.sample import sample
from chargen.cli.scoring import eval_, identify, score
from chargen.cli.serve import serve
from chargen.cli.train import train


@click.group("chargen", cls=ChargenGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="chargen")
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    envvar="CHARGEN_CHECKPOINTS",
    help="Where runs live (default ./checkpoints; env CHARGEN_CHECKPOINTS).",
)
@click.pass_context
def cli(ctx: click.Context, checkpoint_dir: str | None):
    """Train recurrent neural networks on text and generate more of it.

    \b
    Quick start:
      chargen train corpora/harbour.txt --name harbour --time 2m
      chargen sample harbour --prime "NELL:" --length 400
      chargen eval harbour held_out.txt
      chargen checkpoints list
    """
    ctx.ensure_object(dict)
    ctx.obj["checkpoint_dir"] = checkpoint_dir


for command in (train, sample, eval_, score, identify, serve, checkpoints, corpus, abc_group):
    cli.add_command(command)
