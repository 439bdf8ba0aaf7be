"""Command-line entry points (passion-sr, passion-demo, ...), thin shells over passion_deploy.api.

Two things every command shares live here: `refusals`, the one place a command turns a refusal
(PassionError: a bad file, option or machine; OSError: a file that cannot be read or written)
into `prog: sentence` on stderr and exit status 2, and the generation of a target's flags from
its options dataclass (`add_options_arguments` / `options_from_args`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import types
import typing

from ..errors import PassionError

USAGE = 2  # the exit status of a refusal (argparse's own for a bad command line)


def refusals(prog: str):
    """Decorate a command's `main(argv) -> int`: a PassionError or OSError it raises is printed
    as `prog: sentence` and returns 2; any other exception is a bug and keeps its traceback."""

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except (PassionError, OSError) as e:
                print(f"{prog}: {e}", file=sys.stderr)
                return USAGE

        return run

    return wrap


# -- a target's options as flags ---------------------------------------------------------------
def _option_type(hint):
    """The argparse type of a field annotated `T` or `T | None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _dest(f: dataclasses.Field) -> str:
    return f.metadata["flag"].lstrip("-").replace("-", "_")


def add_options_arguments(parser: argparse.ArgumentParser, title: str, options: type) -> None:
    """One argument group of flags from an options dataclass: each field's metadata gives its
    `flag` and `help` (and `choices`, `metavar`); its annotation and default give the rest. A bool
    field whose default is True becomes a flag that turns it off (--no-engines)."""
    fields = [f for f in dataclasses.fields(options) if "flag" in f.metadata]
    if not fields:
        return
    hints = typing.get_type_hints(options)
    g = parser.add_argument_group(title)
    for f in fields:
        kind = _option_type(hints[f.name])
        kw = {"help": f.metadata.get("help"), "dest": _dest(f)}
        if kind is bool:
            g.add_argument(f.metadata["flag"], action="store_true", **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        g.add_argument(f.metadata["flag"], type=kind, default=f.default, **kw)


def options_from_args(args: argparse.Namespace, options: type):
    """The options dataclass from the flags add_options_arguments made."""
    values = {}
    for f in dataclasses.fields(options):
        if "flag" not in f.metadata:
            continue
        v = getattr(args, _dest(f))
        values[f.name] = (not v if f.default is True else v) if isinstance(f.default, bool) else v
    return options(**values)


__all__ = ["USAGE", "add_options_arguments", "options_from_args", "refusals"]
