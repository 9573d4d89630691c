"""The ``qdgap`` application: assembles the command groups and owns the exit codes.

Exit codes: 0 done; 2 anything the user must change (a ``QdgapError`` or a
usage error), one line on stderr; 1 an unexpected internal error (traceback);
130 interrupted.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer

from qdgap.cli import data, ensemble, export, finetune, fna, predict, report, train, ui, upstream, workflow
from qdgap.cli import select as select_cmd

app = typer.Typer(
    name="qdgap",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
    help="Machine-learned band gaps along MD trajectories: ALIGNN ensembles, atom importance (FNA), transfer learning.",
)
app.add_typer(data.app, name="data", rich_help_panel="Data")
app.command("train", rich_help_panel="Model")(train.train)
app.add_typer(ensemble.app, name="ensemble", rich_help_panel="Model")
app.command("finetune", rich_help_panel="Model")(finetune.finetune)
app.command("import-alignn", rich_help_panel="Model")(upstream.import_alignn)
app.command("export", rich_help_panel="Model")(export.export)
app.command("predict", rich_help_panel="Analysis")(predict.predict)
app.command("fna", rich_help_panel="Analysis")(fna.fna)
app.command("select", rich_help_panel="Analysis")(select_cmd.select)
app.command("label", rich_help_panel="Data")(select_cmd.label)
app.command("report", rich_help_panel="Workflow")(report.report)
app.command("status", rich_help_panel="Workflow")(ensemble.status)
app.command("pipeline", rich_help_panel="Workflow")(workflow.pipeline)
app.command("reproduce", rich_help_panel="Workflow")(workflow.reproduce)


def _version(value: bool) -> None:
    if value:
        from qdgap.core.common.buildinfo import version_lines

        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the versions of qdgap (with its git commit) and torch (CPU or CUDA build), whether CUDA is usable, and exit.",
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")] = False,
) -> None:
    ui.state.debug = debug
    ui.state.quiet = quiet
    ui.setup_logging(quiet=quiet, debug=debug)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; always ends with ``SystemExit`` carrying the exit code."""
    from qdgap.core.common.errors import Interrupted, QdgapError

    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = command.main(args=args, prog_name="qdgap", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except QdgapError as exc:
        if ui.state.debug:
            traceback.print_exc()
        ui.error_line(str(exc))
        code = 2
    except Interrupted as exc:
        ui.error_line(str(exc))
        code = exc.exit_code
    except typer._click.exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "", err=False)
        code = 0
    except typer._click.exceptions.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        ui.error_line(exc.format_message() + hint)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        ui.error_line("interrupted; rerun the same command to continue where it stopped")
        code = 130
    except BrokenPipeError:
        code = 0
    finally:
        sys.stdout.flush()
    raise SystemExit(code)
