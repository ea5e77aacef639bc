"""The `qprof` command line: a click group whose subcommands load lazily (torch is slow to import)."""

from __future__ import annotations

import importlib
import sys

import click

from qprof.errors import QprofError

# name -> "module:attribute"; each module owns one command and its options.
COMMANDS: dict[str, str] = {
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


class QprofGroup(LazyGroup):
    """Turns QprofError (and Ctrl-C, and a broken pipe) into one line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
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
