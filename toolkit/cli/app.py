"""The Typer application: one command per module, all registered here.

Errors the user can fix (``RtkError``) become one red line on stderr and their exit code;
a traceback is shown only with ``RTK_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import typer
from typer.core import TyperGroup

from toolkit import __version__
from toolkit.cli import analyze as analyze_cmd
from toolkit.cli import bench as bench_cmd
from toolkit.cli import data as data_cmd
from toolkit.cli import doctor as doctor_cmd
from toolkit.cli import export as export_cmd
from toolkit.cli import models as models_cmd
from toolkit.cli import reproduce as reproduce_cmd
from toolkit.cli import study as study_cmd
from toolkit.cli import train as train_cmd
from toolkit.cli.output import err_console, styled
from toolkit.errors import RtkError


def _debug() -> bool:
    return os.environ.get("RTK_DEBUG", "") not in ("", "0")


class RtkGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except RtkError as exc:
            if _debug():
                raise
            err_console.print(styled(("error:", "bold red"), f" {exc}"), soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if _debug():
                raise
            err_console.print("interrupted", style="yellow")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.BadParameter, typer.TyperException):
            raise
        except OSError as exc:  # the file system refused (full disk, permissions): not a bug
            if _debug():
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            err_console.print(
                styled(
                    ("error:", "bold red"),
                    f" {exc.strerror or exc}{where}; check the path, "
                    "its permissions and the free disk space",
                ),
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        except Exception as exc:  # a bug in rtk: one line, the traceback on request
            if _debug() or type(exc).__module__.startswith(("click", "typer")):
                raise
            err_console.print(
                styled(
                    ("internal error:", "bold red"),
                    f" {type(exc).__name__}: {exc} (a bug in "
                    "rtk; rerun with RTK_DEBUG=1 for the traceback and report it)",
                ),
                soft_wrap=True,
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=RtkGroup,
    name="rtk",
    help="rtk, the residual-learning toolkit: train, export, benchmark and analyse CIFAR CNNs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"rtk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """rtk, the residual-learning toolkit: train, export, benchmark and analyse CIFAR CNNs."""
    # Library warnings (torch, PIL, onnx) arrive as file:line noise the user cannot act on; rtk
    # reports every problem it can name as an error. RTK_DEBUG=1, -W or PYTHONWARNINGS show them.
    if not _debug() and not sys.warnoptions:
        warnings.simplefilter("ignore")
    # onnxscript warns on every export that it hands the opset conversion to the onnx C API;
    # that is expected here, and the CLI keeps the terminal for rtk's own output.
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    # torch.compile on a CPU-only machine says "No CUDA runtime is found" while it builds its
    # C++ kernels: true, expected, and not the user's concern.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


app.command("models")(models_cmd.models)
app.command("train")(train_cmd.train)
app.command("export")(export_cmd.export)
app.command("predict")(export_cmd.predict)
app.command("view")(export_cmd.view)
app.add_typer(bench_cmd.app, name="bench")
app.command("reproduce")(reproduce_cmd.reproduce)
app.add_typer(study_cmd.app, name="study")
app.command("doctor")(doctor_cmd.doctor)
app.add_typer(data_cmd.app, name="data")
app.add_typer(analyze_cmd.analyze_app, name="analyze")
app.add_typer(analyze_cmd.report_app, name="report")


def main() -> None:
    app(prog_name="rtk")
