"""The ``qdgap`` application: assembles the command groups and owns the exit codes.

Exit codes: 0 done; 2 anything the user must change (a ``QdgapError`` or a
usage error), one line on stderr; 1 an unexpected internal error (traceback);
130 interrupted.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer

from qdgap.cli import data, ensemble, export, finetune, fna, interpolate, predict, report, train, ui, upstream, workflow
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
app.command("interpolate", rich_help_panel="Analysis")(interpolate.interpolate)
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


def _reproducible(value: bool) -> None:
    """``--reproducible``: the mode, applied before any command imports torch (a fresh process has not yet)."""
    if value:
        from qdgap.core.common.numerics import REPRODUCIBLE_ENV

        os.environ[REPRODUCIBLE_ENV] = "1"
        _apply_numerics(restart_args=_RESTART_ARGS[0])


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the versions of qdgap (with its git commit) and torch (CPU or CUDA build), whether CUDA is usable, the CPU numerics in force, and exit.",
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")] = False,
    reproducible: Annotated[
        bool,
        typer.Option(
            "--reproducible",
            callback=_reproducible,
            is_eager=True,  # before --version, which reports the mode
            help="Bitwise-reproducible CPU numerics, as QDGAP_REPRODUCIBLE=1: AVX2 kernels, MKL_CBWR=COMPATIBLE, "
            "QDGAP_THREADS (default 1) torch threads per member; needs an x86-64 CPU with AVX2 (README, Reproducibility).",
        ),
    ] = False,
) -> None:
    ui.state.debug = debug
    ui.state.quiet = quiet
    ui.setup_logging(quiet=quiet, debug=debug)


_RESTARTED_ENV = "QDGAP_RESTARTED_FOR_NUMERICS"  # set on the one re-exec, so it cannot loop
# The arguments a real process (main() without argv) restarts with, for the --reproducible callback; None in-process.
_RESTART_ARGS: list[list[str] | None] = [None]


def _apply_numerics(*, restart_args: list[str] | None) -> None:
    """Apply ``QDGAP_REPRODUCIBLE=1``'s settings to the environment before torch is imported.

    Two of them cannot take hold in a running process: Python's hash seed (read at start-up) and,
    where something imported torch already, ATen's kernels. With ``restart_args`` (a real process,
    not a test's or the API's call) the command then starts afresh once, the same Python running
    the same script (or ``-m qdgap``) with ARGS and the new environment. Otherwise a late torch is a
    one-line error and a random hash seed is let be (it only orders ``model.ts``'s code).
    """
    from qdgap.core.common import numerics
    from qdgap.core.common.errors import QdgapError

    restarted = os.environ.pop(_RESTARTED_ENV, None) is not None  # popped: processes started later may restart
    coretype_before = os.environ.get("OPENBLAS_CORETYPE")
    if not numerics.apply_reproducible_env():
        return
    late_torch = numerics.torch_needs_restart()
    late_numpy = numerics.numpy_needs_restart(coretype_before)
    if not late_torch and not late_numpy and not numerics.hash_seed_needs_restart():
        return
    if restart_args is not None and not restarted:
        os.environ[_RESTARTED_ENV] = "1"
        script = sys.argv[0]
        start = ["-m", "qdgap"] if not script or script.endswith("__main__.py") else [script]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *start, *restart_args])
    if late_torch or late_numpy:
        raise QdgapError(
            f"{numerics.REPRODUCIBLE_ENV}=1: {'torch' if late_torch else 'numpy'} was loaded before its settings "
            "could be applied; "
            f"set {numerics.REPRODUCIBLE_ENV}=1 in the environment before Python starts"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; always ends with ``SystemExit`` carrying the exit code."""
    from qdgap.core.common.errors import Interrupted, QdgapError

    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # QDGAP_REPRODUCIBLE=1 must reach the environment before torch loads; a real process may restart for it.
        _RESTART_ARGS[0] = args if argv is None else None
        _apply_numerics(restart_args=_RESTART_ARGS[0])
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
