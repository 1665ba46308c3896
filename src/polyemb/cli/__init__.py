"""The ``polyemb`` command: embed files, compare texts, run SQL, evaluate, benchmark, keep stores.

:func:`main` builds the top parser and dispatches. Each command group is a module that owns its
options next to its handler (``embed``, ``dedup``, ``sql``, ``evaluate``, ``bench``,
``bench_join``, ``bench_long``, ``store``); the options every model-loading command shares are in
:mod:`polyemb.cli.shared`. Importing the command line costs no torch: a command imports what it
needs when it runs, so ``polyemb --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import select
import sys
from collections.abc import Sequence
from typing import TextIO

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
    if sys.stdout is None:  # closed by the shell (`>&-`): the output goes nowhere, as print's does
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # open for the process's life
    status = None
    try:
        status = _run(args)
        # Whatever the status: a reader gone or a full disk shows here, not in Python's last
        # flush at exit (a second error, exit 120).
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        if not _reader_gone(sys.stdout):
            raise  # another pipe (a child process, a socket): not for this quiet ending
        # The reader stopped early: no traceback, and nothing more written to stdout (nor to
        # stderr where it shares the pipe: `2>&1 | head`). The status of a program that SIGPIPE
        # stopped, as `pipefail` shells expect, unless the command had failed or been interrupted.
        _silence(sys.stdout)
        if _reader_gone(sys.stderr):
            _silence(sys.stderr)
        return status or _STOPPED_BY_SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C while the last output waits on a pipe nobody reads
        _silence(sys.stdout)
        return _interrupted()
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        # stdout, or a file the command writes: one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"polyemb {args.command}: error: cannot write: {exc.strerror}{where}", file=sys.stderr)
        try:
            sys.stdout.flush()
        except OSError:  # stdout was the one: its last flush at exit would fail again
            _silence(sys.stdout)
        return status or 1


# 128 + SIGPIPE, what a shell reports for a program the signal stopped.
_STOPPED_BY_SIGPIPE = 141
# A write refused for want of room: the disk, a quota, a file size limit.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _run(args: argparse.Namespace) -> int:
    """The command's own status; its errors as one line on stderr (1), Ctrl-C as 130."""
    run: Command = args.run
    try:
        return run(args)
    except PolyembError as exc:
        print(f"polyemb {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted()


def _interrupted() -> int:
    print("polyemb: interrupted", file=sys.stderr)
    return 130


def _reader_gone(stream: TextIO) -> bool:
    """Whether ``stream`` is a pipe or socket whose reader has gone (poll says POLLERR or POLLHUP).

    Where that cannot be asked (not a file, as a test's capture, or no ``poll``), a broken pipe
    is taken to be this stream's. A socket its peer only shut for reading shows neither: that
    one ends in the error.
    """
    fd = _descriptor(stream)
    if fd is None or not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null; nothing to do where it has none (a test's capture)."""
    fd = _descriptor(stream)
    if fd is None:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _descriptor(stream: TextIO) -> int | None:
    """The stream's file descriptor; None where it has none (a test's capture, a closed file)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
