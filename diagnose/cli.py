"""The `diagnose` command line: flags -> Settings -> `diagnose.api.run_check` -> renderers -> exit code.

Thin on purpose: everything a library user also needs lives in the library. torch is imported only
by `check` (through `diagnose.api`), so `--help`, `--version`, `list` and `explain` stay fast.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, TextIO, TypeVar

import typer

from diagnose.config import OPTIONS, Settings, build_settings, validate_settings
from diagnose.errors import DiagnoseError
from diagnose.options import Option

if TYPE_CHECKING:
    from diagnose.report import Report

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_CANNOT_RUN = 2
# 128 + SIGINT, the shell's convention for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
# Terminal width when stdout is not a terminal (pipes, CI logs): wide enough for the layer table.
PIPE_WIDTH = 120
# Below this the report's lines are mostly indentation; narrower terminals get lines that run over.
MIN_WIDTH = 40

F = TypeVar("F", bound=Callable[..., None])

app = typer.Typer(
    name="diagnose",
    help="Tell why a PyTorch network will not train, and what to change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from diagnose.version import __version__

        typer.echo(f"diagnose {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Tell why a PyTorch network will not train, and what to change."""


# ---------------------------------------------------------------------------------------------
# Commands whose options are declared in diagnose.config.Settings


def _parameter(declared: Option, help_text: str | None = None) -> inspect.Parameter:
    """The typer parameter of a declared option (None when the command line was not given it)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    help_text = help_text or declared.help
    if declared.argument:
        annotation: Any = Annotated[str, typer.Argument(metavar=declared.metavar, help=help_text)]
        return inspect.Parameter(declared.name, kind, annotation=annotation)
    if declared.flag is None:
        raise ValueError(f"option {declared.name} has no command-line spelling")
    names = [f"{declared.flag}/--no-{declared.flag[2:]}" if declared.negatable else declared.flag]
    if declared.short:
        names.append(declared.short)
    # the command line gives strings to an option without a plain type (its convert parses them)
    value_type: Any = list[str] if declared.repeatable else declared.kind or str
    info = typer.Option(*names, metavar=declared.metavar, help=help_text)
    return inspect.Parameter(declared.name, kind, annotation=Annotated[Optional[value_type], info], default=None)


def _declared_options(layout: Sequence[str], help_texts: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Give a command the declared options named in `layout`, in that order, as typer parameters.

    The command takes them as `**flags` (name -> value, None when not given). A name in `layout`
    that is one of the command's own parameters (options only this command has) keeps that
    parameter there.
    """
    by_name = {declared.name: declared for declared in OPTIONS}
    help_texts = help_texts or {}

    def decorate(command: F) -> F:
        own = {p.name: p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD}
        missing = set(own) - set(layout)
        if missing:
            raise TypeError(f"{command.__name__}: own parameters not in its layout: {', '.join(sorted(missing))}")
        parameters = [own[name] if name in own else _parameter(by_name[name], help_texts.get(name))
                      for name in layout]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return command

    return decorate


# ---------------------------------------------------------------------------------------------
# check

# every declared option the command line spells
CHECK_LAYOUT = tuple(declared.name for declared in OPTIONS if declared.flag or declared.argument)


@app.command()
@_declared_options(CHECK_LAYOUT)
def check(**flags: Any) -> None:
    """Probe MODEL, find why it will not train, and recommend fixes."""

    def work() -> int:
        settings = validate_settings(build_settings(flags))
        if settings.select or settings.ignore or settings.thresholds or settings.per_layer_ignores:
            validate_settings(settings, known_check_ids(), known_threshold_names())
        _require_writable(settings)
        _require_plotting(settings)

        from diagnose import api  # imports torch: only here, never for --help/list/explain

        with _progress_display(settings):
            report = api.run_check(settings)
        _emit(report, settings)
        return report.exit_code(settings.fail_on)

    raise typer.Exit(_guarded(work, debug=bool(flags.get("debug"))))


@contextmanager
def _progress_display(settings: Settings) -> Iterator[None]:
    """Progress on stderr while the check runs: only on a terminal, and not with --quiet."""
    from diagnose.progress import listening

    if settings.quiet or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        yield
        return
    from diagnose.render.progress_display import ProgressDisplay

    with ProgressDisplay(sys.stderr) as display, listening(display):
        yield


def known_check_ids() -> tuple[str, ...]:
    from diagnose.checks import CHECKS

    return tuple(entry.id for entry in CHECKS)


def known_threshold_names() -> dict[str, tuple[str, ...]]:
    """Check id -> the names of its thresholds that `[tool.diagnose.thresholds.<id>]` may set."""
    from diagnose.checks import CHECKS

    return {entry.id: tuple(getattr(entry, "thresholds", None) or ()) for entry in CHECKS}


def _require_writable(settings: Settings) -> None:
    """Fail before the (possibly long) run when a report could not be written afterwards."""
    for flag, path in (("--json", settings.json_path), ("--markdown", settings.markdown_path), ("--junit", settings.junit_path),
                       ("--html", settings.html_path)):
        if path is None or (flag == "--json" and path == "-"):
            continue
        target = Path(path)
        if target.is_dir():
            raise DiagnoseError(f"cannot write the {flag} report to {path}: it is a directory; give a file name")
        parent = target.parent
        if not parent.is_dir():
            raise DiagnoseError(f"cannot write the {flag} report to {path}: directory {parent} does not exist; create it first")
    if settings.plot_dir is not None:
        from diagnose.render.figures import require_writable_directory

        require_writable_directory(Path(settings.plot_dir), "--plot")


def _require_plotting(settings: Settings) -> None:
    """--html and --plot draw with matplotlib (an extra): say how to install it before the run, not after."""
    for flag, wanted in (("--html", settings.html_path), ("--plot", settings.plot_dir)):
        if wanted is not None:
            from diagnose.render.figures import require_matplotlib

            require_matplotlib(flag)


def _emit(report: "Report", settings: Settings) -> None:
    from diagnose.render import render_json, render_junit, render_markdown, render_terminal

    human_stream = sys.stderr if settings.json_path == "-" else sys.stdout
    human_stream.write(_terminal_text(report, human_stream, render_terminal, verbose=settings.verbose))
    human_stream.flush()
    if settings.json_path == "-":
        sys.stdout.write(render_json(report))
        sys.stdout.flush()
    elif settings.json_path:
        _write("--json", settings.json_path, render_json(report))
    if settings.markdown_path:
        _write("--markdown", settings.markdown_path, render_markdown(report))
    if settings.junit_path:
        _write("--junit", settings.junit_path, render_junit(report, fail_on=settings.fail_on))
    if settings.html_path:
        from diagnose.render.html import render_html

        _write("--html", settings.html_path, render_html(report))
    if settings.plot_dir:
        from diagnose.render.figures import write_figures

        write_figures(report, settings.plot_dir)


def _terminal_text(report: "Report", stream: TextIO, render: Callable[..., str], *, verbose: bool = False) -> str:
    """Colour only on a real terminal without NO_COLOR; ASCII bars when the stream cannot encode blocks."""
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    color = is_tty and not os.environ.get("NO_COLOR")
    width = _report_width(stream, is_tty)
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower()
    ascii_only = not encoding.replace("-", "").startswith("utf")
    return render(report, width=width, color=color, ascii_only=ascii_only, verbose=verbose)


def _report_width(stream: TextIO, is_tty: bool) -> int:
    """COLUMNS when set (the POSIX convention; CI systems and `COLUMNS=80 diagnose ... | less` use
    it), else the terminal's own width, else PIPE_WIDTH."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) >= MIN_WIDTH:
        return int(columns)
    if is_tty:
        try:
            return max(os.get_terminal_size(stream.fileno()).columns, MIN_WIDTH)
        except (OSError, ValueError):
            pass
    return PIPE_WIDTH


def _write(flag: str, path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DiagnoseError(f"cannot write the {flag} report to {path}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------
# lr-find


# check's model, input, loss, optimizer, seed and device options (CONTRACT), with the sweep's own
# options where they stood
LR_FIND_LAYOUT = (
    "model", "input_shapes", "inputs_path", "targets_path", "loss", "optimizer", "lr", "batch_size", "weights",
    "trust_pickle", "device", "seed", "min_lr", "max_lr", "sweep_steps", "verify_steps", "json_out", "plot_out",
    "config_path", "quiet", "debug",
)


@app.command("lr-find")
@_declared_options(LR_FIND_LAYOUT, {
    "lr": "Your current learning rate: verified beside the suggestion as the baseline (default 0.01).",
})
def lr_find(
    min_lr: Annotated[Optional[float], typer.Option("--min", metavar="X", help="The sweep's first learning rate (default 1e-7).")] = None,
    max_lr: Annotated[Optional[float], typer.Option("--max", metavar="X", help="The sweep's last learning rate (default 10).")] = None,
    sweep_steps: Annotated[Optional[int], typer.Option("--steps", metavar="N", help="Optimizer steps of the sweep, one per learning rate (default 100).")] = None,
    verify_steps: Annotated[Optional[int], typer.Option("--verify-steps", metavar="N", help="Steps of each verifying short run (default: check's short run, 20).")] = None,
    # not check's json_path: [tool.diagnose]'s json names check's report, not this command's
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="PATH", help="Write the JSON result here ('-' = stdout; the human report then goes to stderr).")] = None,
    # not check's plot_dir either, for the same reason
    plot_out: Annotated[Optional[str], typer.Option("--plot", metavar="DIR", help="Draw the curve, the runs and the LRs as DIR/lr_find.png (extra diagnose[plot]).")] = None,
    **flags: Any,
) -> None:
    """Learning-rate range test on a copy: the loss-vs-LR curve, a suggested LR, verified by short runs.

    Exit 0 with a suggestion, 1 when the loss never decreased over the sweep, 2 when it could not run.
    """

    def work() -> int:
        if verify_steps is not None and verify_steps < 1:
            raise DiagnoseError(f"--verify-steps must be 1 or more, not {verify_steps}")
        # check's short run is what verifies; --steps here is the sweep's
        settings = validate_settings(build_settings({**flags, "steps": verify_steps}))
        # check's report paths from [tool.diagnose] are not this command's: only --json and --plot are written
        _require_writable(replace(settings, json_path=json_out, markdown_path=None, junit_path=None, html_path=None,
                                  plot_dir=plot_out))
        _require_plotting(replace(settings, html_path=None, plot_dir=plot_out))

        from diagnose import range_test  # imports torch: only here
        from diagnose.render.lr_find import render_lr_find_json, render_lr_find_text

        with _progress_display(settings):
            result = range_test.run_lr_find(
                settings,
                min_lr=range_test.DEFAULT_MIN_LR if min_lr is None else min_lr,
                max_lr=range_test.DEFAULT_MAX_LR if max_lr is None else max_lr,
                sweep_steps=range_test.DEFAULT_SWEEP_STEPS if sweep_steps is None else sweep_steps,
            )
        human_stream = sys.stderr if json_out == "-" else sys.stdout
        human_stream.write(_terminal_text(result, human_stream, render_lr_find_text))
        human_stream.flush()
        if json_out == "-":
            sys.stdout.write(render_lr_find_json(result))
            sys.stdout.flush()
        elif json_out:
            _write("--json", json_out, render_lr_find_json(result))
        if plot_out:
            from diagnose.render.figures import write_lr_find_figure

            write_lr_find_figure(result, plot_out)
        return result.exit_code

    raise typer.Exit(_guarded(work, debug=bool(flags.get("debug"))))


# ---------------------------------------------------------------------------------------------
# list / explain


@app.command("list")
def list_rules() -> None:
    """Every check and every fix, with id, severity and one line each."""

    def work() -> int:
        from diagnose.checks import CHECKS
        from diagnose.fixes import FIXES

        fixes = list(FIXES.values())
        id_width = max([len(c.id) for c in CHECKS] + [len(f.id) for f in fixes], default=0)
        lines = ["Checks:"]
        for entry in CHECKS:
            severity = getattr(entry.severity, "value", entry.severity)
            lines.append(f"  {entry.id:<{id_width}}  {severity:<7}  {entry.summary}")
        lines += ["", "Fixes:"]
        for fix in fixes:
            # the summary is the one-line description; the title is a fallback for terse entries
            lines.append(f"  {fix.id:<{id_width}}  {'':<7}  {fix.summary or fix.title}")
        lines += ["", "diagnose explain ID shows what one of them means and how it is fixed."]
        typer.echo("\n".join(lines))
        return EXIT_OK

    raise typer.Exit(_guarded(work, debug=False))


@app.command()
def explain(
    rule_id: Annotated[str, typer.Argument(metavar="ID", help="A check id (e.g. dead-relu) or a fix id (e.g. he-init).")],
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """What a finding or fix means, why it happens, and how it is fixed."""

    def work() -> int:
        from diagnose.explain import render

        text = render(rule_id)  # DiagnoseError, listing the valid ids, for an unknown one
        if sys.stdout.isatty():
            _print_markdown(text)
        else:
            typer.echo(text.rstrip("\n"))  # piped or redirected: the Markdown itself, for a file or a pager
        return EXIT_OK

    raise typer.Exit(_guarded(work, debug=debug))


def _print_markdown(text: str) -> None:
    """A check's or fix's page rendered for a terminal: headings, lists and code blocks laid out."""
    from rich.console import Console
    from rich.markdown import Markdown

    Console(highlight=False, emoji=False, no_color=bool(os.environ.get("NO_COLOR"))).print(
        Markdown(text, code_theme="ansi_dark", inline_code_lexer=None))


# ---------------------------------------------------------------------------------------------
# the one error edge


def _guarded(work: Callable[[], int], *, debug: bool) -> int:
    """Run a command body; turn every failure into one line on stderr and an exit code."""
    try:
        return work()
    except DiagnoseError as exc:
        return _fail(f"error: {_one_line(str(exc))}", debug)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # the edge: anything else is a bug, said once, clearly
        return _fail(
            f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))} "
            "(a bug in diagnose or in the model's code; rerun with --debug for the traceback)",
            debug,
        )


def _fail(line: str, debug: bool) -> int:
    if debug:
        traceback.print_exc(file=sys.stderr)
    typer.echo(line, err=True)
    return EXIT_CANNOT_RUN


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (`diagnose = "diagnose.cli:main"`)."""
    app(args=list(argv) if argv is not None else None, prog_name="diagnose")
    raise SystemExit(EXIT_OK)  # typer's standalone mode exits itself; this keeps the type honest
