"""Maintain a vector store on a lake with Spark: stats, compact (merge small files), gc (drop models).

    spark-submit udfs/spark/store_maintenance.py --store 's3a://lake/vectors/' stats
    spark-submit udfs/spark/store_maintenance.py --store 's3a://lake/vectors/' compact
    spark-submit udfs/spark/store_maintenance.py --store 's3a://lake/vectors/' gc \\
        --keep-model 'AIDA-UPM/mstsb-paraphrase-multilingual-mpnet-base-v2@<commit>'

What `polyemb store stats|compact|gc DIR` does for a local folder, for a store only Spark
reaches. compact and gc rename and delete files: run them from a classic session (spark-submit),
not Spark Connect. Safe beside jobs that read or append to the store (see docs/store.md); do not
gc a model a running job writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyspark.sql import SparkSession

import polyemb.spark
from polyemb.errors import PolyembError
from polyemb.store.maintenance import COMPACT_TARGET_MB


def build_parser() -> argparse.ArgumentParser:
    """The job's options."""
    parser = argparse.ArgumentParser(
        prog="store_maintenance.py",
        description="Stats, compaction and garbage collection of a polyemb vector store, through Spark.",
    )
    parser.add_argument("--store", required=True, help="the store's folder (any path Spark reads and writes)")
    parser.add_argument(
        "--target-mb",
        type=float,
        default=COMPACT_TARGET_MB,
        help="stats and compact: the size of a compacted file's vectors (default %(default)s)",
    )
    parser.add_argument("action", choices=["stats", "compact", "gc"])
    parser.add_argument(
        "--keep-model",
        nargs="+",
        metavar="PROVENANCE",
        help="gc: models to keep, provenances (id@fingerprint) or model keys; every other is dropped",
    )
    return parser


def run(spark: SparkSession, args: argparse.Namespace) -> str:
    """Do the action; what to print."""
    if args.action == "stats":
        return polyemb.spark.store_stats(spark, args.store, target_mb=args.target_mb).format()
    if args.action == "compact":
        report = polyemb.spark.compact_store(spark, args.store, target_mb=args.target_mb)
        return (
            f"compacted {args.store}: {report.files_before} files -> {report.files_after}, "
            f"{report.duplicates_dropped} duplicate entries dropped, {report.quarantined} bad files "
            f"set aside, {report.temporary_removed} stale temporary files removed"
        )
    gc = polyemb.spark.gc_store(spark, args.store, args.keep_model or [])
    return (
        f"kept {len(gc.kept)} model(s) {gc.kept}, dropped {len(gc.dropped)} {gc.dropped}, "
        f"freed {gc.bytes_freed / 2**20:.1f} MiB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns 0 on success, 2 on a polyemb error (printed)."""
    args = build_parser().parse_args(argv)
    if args.action == "gc" and not args.keep_model:
        print("store_maintenance: gc needs --keep-model (the models to keep)", file=sys.stderr)
        return 2
    spark = SparkSession.builder.appName("polyemb-store-maintenance").getOrCreate()
    try:
        print(run(spark, args))
    except PolyembError as exc:
        print(f"store_maintenance: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
