"""The `qprof` command line: a click group whose subcommands load lazily (torch is slow to import)."""

from __future__ import annotations

import importlib
import sys

import click

from qprof.errors import QprofError

# name -> "module:attribute"; each module owns one command and its options.
COMMANDS: dict[str, str] = {
    "analyze": "qprof.commands.analyze:analyze",
    "bench": "qprof.commands.bench:bench",
    "profile": "qprof.commands.profile:profile",
    "check": "qprof.commands.check:check",
    "generate": "qprof.commands.generate:generate",
    "workloads": "qprof.commands.workloads:workloads",
    "compare": "qprof.commands.compare:compare",
    "doctor": "qprof.commands.doctor:doctor",
    "kernels": "qprof.commands.kernels:kernels",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


def usage_error_line(exc: click.ClickException) -> str:
    """click's usage error as one line: the command, the message, and where help is.

    click prints a usage block, a hint and the message on three lines; qprof prints every user
    error as one `qprof: error:` line, so the command path and the -h hint go on that line.
    """
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return f"qprof: error: {message}"
    names = []
    while ctx is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    names[-1] = "qprof"  # the root's info_name is the program name click detected (or CliRunner's)
    path = " ".join(reversed(names))
    where = f"{' '.join(path.split()[1:])}: " if len(names) > 1 else ""
    return f"qprof: error: {where}{message} (see '{path} -h')"


def _report_click_error(exc: click.ClickException) -> int:
    """Print a click error the qprof way; returns the exit code (0 for a bare group, which shows its help)."""
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
    if no_args and isinstance(exc, no_args) and exc.ctx is not None:  # `qprof`, `qprof workloads`: help, not an error
        click.echo(exc.ctx.get_help())
        return 0
    click.echo(usage_error_line(exc), err=True)
    return 2


class QprofGroup(LazyGroup):
    """Turns QprofError, click's usage errors (and Ctrl-C, and a broken pipe) into one line each."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # the group's own options and arguments: `qprof --bogus`
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:
            raise click.exceptions.Exit(_report_click_error(exc)) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:  # a subcommand's parse: `-o xml`, `-n abc`, an unexpected argument
            ctx.exit(_report_click_error(exc))
        except QprofError as exc:
            click.echo(f"qprof: error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("qprof: interrupted", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("qprof: error: out of host memory", err=True)
            ctx.exit(2)


@click.group(cls=QprofGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qprof")
def main() -> None:
    """Profile and benchmark quantized LLM inference (GGUF k-quants) on NVIDIA GPUs."""


if __name__ == "__main__":
    sys.exit(main())
