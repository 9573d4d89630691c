"""MkDocs hooks (mkdocs.yml): let mkdocs-click document the Typer app.

mkdocs-click documents a click command named as ``module:attribute``. Typer builds one with
``typer.main.get_command``, but on its own vendored click (``typer._click``), whose option class is
not click's: mkdocs-click would list every command without its options. So its ``click`` name is
pointed at the classes Typer uses, and the command is put where ``:module:`` can import it.
"""

from __future__ import annotations

import sys
import types

import mkdocs_click._docs
import typer
import typer.core

CLI_MODULE = "qdgap_cli_reference"  # docs/reference/cli.md names it in its mkdocs-click block


class _NoSuchType:
    """Typer's options carry no click ParamType: no Choice, DateTime or range to describe."""


class _Command:
    @staticmethod
    def format_options(command, ctx, formatter) -> None:
        command.format_options(ctx, formatter)  # Typer's own plain (not rich) option list


def on_config(config, **kwargs):
    from qdgap.cli.app import app

    mkdocs_click._docs.click = types.SimpleNamespace(
        Option=typer.core.TyperOption,
        Group=typer.core.TyperGroup,
        Command=_Command,
        Choice=_NoSuchType,
        DateTime=_NoSuchType,
        IntRange=_NoSuchType,
        FloatRange=_NoSuchType,
    )
    module = types.ModuleType(CLI_MODULE)
    module.command = typer.main.get_command(app)
    sys.modules[CLI_MODULE] = module
    return config
