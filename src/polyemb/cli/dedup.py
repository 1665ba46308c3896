"""``polyemb dedup``: a table file without its near-duplicates, exact or by the ivf method."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from polyemb.cli.shared import Subparsers, add_store_options, load_encoder, model_options, store_of
from polyemb.options import METHODS
from polyemb.progress import progress_bar

if TYPE_CHECKING:
    from polyemb.embedder import Embedder

__all__ = ["add_parser", "ivf_options", "method_from"]

_KEEPS = ("first", "all")


def ivf_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--method`` and the ivf settings (:class:`polyemb.ivf.Ivf`'s fields) to ``parser``."""
    group = parser.add_argument_group("method")
    group.add_argument(
        "--method",
        choices=METHODS,
        default="exact",
        help="exact: every pair compared; ivf: each row against the rows of its nearest lists "
        "(default: exact)",
    )
    group.add_argument(
        "--nlist", type=int, help="ivf: lists (default: 4 x sqrt(rows), or rows / 128 beyond 262,144 rows)"
    )
    group.add_argument(
        "--nprobe",
        type=int,
        help="ivf: lists each row probes (default: 64 for joins, 16 for near-duplicates)",
    )
    group.add_argument(
        "--recall", type=float, help="ivf: choose nprobe to reach this recall, measured on a sample"
    )
    group.add_argument("--seed", type=int, default=0, help="ivf: seeds the sample and k-means (default: 0)")


def method_from(args: argparse.Namespace) -> Any:
    """The ``method=`` that :func:`ivf_options`' arguments name: ``"exact"`` or an Ivf."""
    if args.method == "exact":
        return "exact"
    from polyemb.ivf import Ivf

    return Ivf(nlist=args.nlist, nprobe=args.nprobe, recall=args.recall, seed=args.seed)


def add_parser(commands: Subparsers) -> None:
    """Add ``dedup`` to the ``commands`` subparsers."""
    dedup = commands.add_parser(
        "dedup",
        parents=[model_options()],
        help="drop near-duplicate rows of a CSV or Parquet file (semantic dedup), written as Parquet",
        description=(
            "Read INPUT, embed the text column (or read a vector column), find the pairs of rows whose "
            "cosine is at least --threshold, group rows linked by a chain of pairs, and write OUTPUT "
            "(Parquet) with only the first row of each group (--keep first), or every row and its "
            "group id (--keep all). Prints a summary: rows, groups, rows dropped."
        ),
    )
    dedup.add_argument("input", help="a .csv, .tsv, .parquet or .txt file")
    dedup.add_argument("--column", "-c", required=True, help="the text (or vector) column")
    dedup.add_argument("--output", "-o", required=True, help="the Parquet file to write")
    dedup.add_argument(
        "--threshold", type=float, default=0.9, help="cosine similarity (default: %(default)s)"
    )
    dedup.add_argument(
        "--keep", choices=_KEEPS, default="first", help="first (default) or all rows, with a group column"
    )
    dedup.add_argument("--group-column", default="group", help="--keep all: its name (default: %(default)s)")
    add_store_options(dedup, "a vector store for the texts' vectors")
    dedup.add_argument("--no-progress", action="store_true", help="no progress bars")
    ivf_options(dedup)
    dedup.set_defaults(run=_dedup)


def _dedup(args: argparse.Namespace) -> int:
    from polyemb.dedup import dedup_file
    from polyemb.ivf import IvfReport
    from polyemb.store import embedder_for

    def embedder() -> Embedder:
        return embedder_for(load_encoder(args), store_of(args))

    method, report = method_from(args), IvfReport()
    with progress_bar(desc="near-duplicates", unit="step", show=False if args.no_progress else None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = dedup_file(
            args.input,
            args.column,
            args.output,
            args.threshold,
            embedder=embedder,
            method=method,
            keep="first" if args.keep == "first" else None,
            group_column=args.group_column,
            show_progress=False if args.no_progress else None,
            progress=progress,
            report=report,
        )
    how = (
        f"ivf (nlist {report.nlist}, nprobe {report.nprobe}"
        + (f", calibrated recall {report.recall_estimate}" if report.recall_estimate is not None else "")
        + ")"
        if args.method == "ivf"
        else "exact"
    )
    print(
        f"{result.rows} rows ({result.null_values} NULL), {result.pairs} pairs >= {args.threshold}, "
        f"{result.groups} groups ({result.in_groups} rows), {result.dropped} rows dropped; "
        f"{how}, {result.seconds} s; wrote {result.output}",
        file=sys.stderr,
    )
    return 0
