"""The `wsl` command. Thin: parses, calls the packages, prints.

User mistakes raise `UserError`; `main()` turns them into one line on stderr
and exit status 2 (tracebacks only with `--debug`).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer

from cli import common
from store.errors import UserError

app = typer.Typer(
    name="wsl",
    help="Weight-space learning and model zoos: train populations, query checkpoints with SQL, generate and evaluate weights, publish to the Hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module defines `register(app)`, adding its commands / sub-apps.
COMMAND_MODULES = [
    "cli.demo",
    "cli.info_cmds",
    "cli.store_cmds",
    "cli.zoo_cmds",
    "cli.eval_cmds",
    "cli.generate_cmds",
    "cli.hub_cmds",
    "cli.landscape_cmds",
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"wsl {version('wsl-zoo')}")
        raise typer.Exit()


@app.callback()
def root(
    store: Optional[Path] = typer.Option(None, "--store", help="Store directory for every command (default: $WSL_STORE, else ./wsl-store)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    trust_code: bool = typer.Option(False, "--trust-code", help="Let architecture configs read from a store (a pulled or published zoo) import the code they name, e.g. {name = \"module\", path = \"pkg.mod:build\"}. Only for code you trust."),
) -> None:
    common.set_global_store(str(store) if store else None)
    from store.architectures import trust_code as trust, untrust_code

    untrust_code()  # each invocation decides anew (tests call main() many times in one process)
    if trust_code:
        trust()


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status (tests call it too).

    Click/typer handle their own usage errors (exit 2 with usage text); our
    `UserError` becomes "error: ..." on stderr and exit 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="wsl", standalone_mode=True)
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UserError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
