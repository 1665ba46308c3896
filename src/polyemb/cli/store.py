"""``polyemb store``: inspect and maintain a vector store (stats, compact, gc)."""

from __future__ import annotations

import argparse

from polyemb.cli.shared import Subparsers
from polyemb.errors import StoreError

__all__ = ["add_parser"]


def add_parser(commands: Subparsers) -> None:
    """Add ``store`` and its actions to the ``commands`` subparsers."""
    store = commands.add_parser(
        "store",
        help="inspect and maintain a vector store (stats, compact, gc)",
        description=(
            "A vector store is a folder of Parquet files (model=<key>/run=<run>/part-N.parquet, columns "
            "text_hash and vector) written by --store of embed and sql, by Python's polyemb.open_store, "
            "and by the Spark job."
        ),
    )
    actions = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    stats = actions.add_parser("stats", help="entries, files and sizes per model, and whether to compact")
    stats.add_argument("path", metavar="DIR")
    compact = actions.add_parser("compact", help="merge small files, one entry per text, set bad files aside")
    compact.add_argument("path", metavar="DIR")
    gc = actions.add_parser("gc", help="drop the vectors of every model but the ones kept")
    gc.add_argument("path", metavar="DIR")
    gc.add_argument(
        "--keep-model",
        nargs="+",
        required=True,
        metavar="PROVENANCE",
        help="models to keep: provenances (id@fingerprint, as embedding_model() prints) or model keys",
    )
    store.set_defaults(run=_store)


def _store(args: argparse.Namespace) -> int:
    from polyemb.store import open_store
    from polyemb.store.layout import MARKER, is_store, local_folder

    if not is_store(local_folder(args.path)):  # refused, never made into one
        raise StoreError(
            f"{args.path} is not a polyemb vector store (no {MARKER}, no model=* folders); "
            "the --store FOLDER of `polyemb embed` or `polyemb sql` makes one"
        )
    store = open_store(args.path, read_only=args.action == "stats", create=False)
    if args.action == "stats":
        print(store.stats().format())
    elif args.action == "compact":
        report = store.compact()
        print(
            f"compacted {args.path}: {report.files_before} files -> {report.files_after}, "
            f"{report.duplicates_dropped} duplicate entries dropped, {report.quarantined} bad files "
            f"set aside, {report.temporary_removed} stale temporary files removed"
        )
    else:
        gc = store.gc(args.keep_model)
        print(
            f"kept {len(gc.kept)} model(s) {gc.kept}, dropped {len(gc.dropped)} {gc.dropped}, "
            f"freed {gc.bytes_freed / 2**20:.1f} MiB"
        )
    return 0
