"""The ``polyemb`` command: embed files, compare texts, run SQL, evaluate, benchmark, keep stores.

:func:`main` builds the top parser and dispatches. Each command group is a module that owns its
options next to its handler (``embed``, ``dedup``, ``sql``, ``evaluate``, ``bench``,
``bench_join``, ``bench_long``, ``store``); the options every model-loading command shares are in
:mod:`polyemb.cli.shared`. Importing the command line costs no torch: a command imports what it
needs when it runs, so ``polyemb --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from polyemb import __version__
from polyemb.cli import bench, bench_join, bench_long, dedup, embed, evaluate, sql, store
from polyemb.cli.shared import Command
from polyemb.errors import PolyembError

__all__ = ["build_parser", "main"]

# In the order the help lists them.
_GROUPS = (embed, dedup, sql, evaluate, bench, bench_join, bench_long, store)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed for documentation tools and tests."""
    parser = argparse.ArgumentParser(
        prog="polyemb",
        description="Multilingual sentence embeddings and semantic similarity for tabular data.",
    )
    parser.add_argument("--version", action="version", version=f"polyemb {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 ok, 1 error, 2 usage, 130 interrupted, 141 no reader.

    Example:
        >>> main(["similarity", "-m", "/models/mstsb", "The cat", "El gato"])  # prints the cosine
        0
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    run: Command = args.run
    try:
        status = run(args)
        sys.stdout.flush()  # a reader gone away shows here, not in Python's last flush at exit
        return status
    except PolyembError as exc:
        print(f"polyemb {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("polyemb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader stopped early (`polyemb sql --csv ... | head`): no traceback, and no
        # second error when Python flushes stdout at exit. The status of a program that SIGPIPE
        # stopped, as `pipefail` shells expect.
        _silence_stdout()
        return _STOPPED_BY_SIGPIPE


# 128 + SIGPIPE, what a shell reports for a program the signal stopped.
_STOPPED_BY_SIGPIPE = 141


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null; nothing to do where stdout is not a file (a test's capture)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
