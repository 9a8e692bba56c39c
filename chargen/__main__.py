"""``python -m chargen``: the same as the ``chargen`` command."""

from chargen.cli import cli

if __name__ == "__main__":
    cli(prog_name="chargen")
