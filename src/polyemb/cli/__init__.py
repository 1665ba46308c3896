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
import select
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
    """Run the command line; returns the exit status.

    0 ok, 1 error, 2 usage, 3 a failed quality gate (``check-precision``), 130 interrupted, 141
    stdout's reader gone (``polyemb sql --csv ... | head``).

    Example:
        >>> main(["similarity", "-m", "/models/mstsb", "The cat", "El gato"])  # prints the cosine
        0
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    status = None
    try:
        status = _run(args)
        # Whatever the status: a reader gone away shows here, not in Python's last flush at exit
        # (a second error, and exit 120).
        return status if _flush_stdout(args.command) else 1
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe (a child process, a socket): not for this quiet ending
        # The reader stopped early: no traceback, and nothing more written to stdout. The status
        # of a program that SIGPIPE stopped, as `pipefail` shells expect, unless the command had
        # already failed or been interrupted.
        _silence_stdout()
        return status or _STOPPED_BY_SIGPIPE


# 128 + SIGPIPE, what a shell reports for a program the signal stopped.
_STOPPED_BY_SIGPIPE = 141


def _run(args: argparse.Namespace) -> int:
    """The command's own status; its errors as one line on stderr (1), Ctrl-C as 130."""
    run: Command = args.run
    try:
        return run(args)
    except PolyembError as exc:
        print(f"polyemb {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("polyemb: interrupted", file=sys.stderr)
        return 130


def _flush_stdout(command: str) -> bool:
    """Flush stdout; False, with the error on stderr, where it cannot be written (a full disk).

    BrokenPipeError is left to the caller. stdout may be None (closed by the shell: ``>&-``).
    """
    if sys.stdout is None:
        return True
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"polyemb {command}: error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        _silence_stdout()
        return False
    return True


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll says POLLERR or POLLHUP).

    Where that cannot be asked (stdout not a file, as a test's capture, or no ``poll``), the
    broken pipe is taken to be stdout's.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null; nothing to do where stdout is not a file (a test's capture)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
