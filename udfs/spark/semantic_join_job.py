"""Join two Parquet datasets by meaning with Spark: each left row's k best right rows, exactly.

    spark-submit udfs/spark/semantic_join_job.py \\
        --left 's3a://lake/orders/' --right 's3a://lake/products/' \\
        --left-on description --right-on name --k 3 --score margin \\
        --output 's3a://lake/order_matches/' [--threshold 0.5] [--store 's3a://lake/vectors/']

Key columns are texts (embedded once; through the vector store with --store) or vectors
(array<float>). See polyemb.spark.semantic_join for how it scales and how ties are broken.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import polyemb.spark
from polyemb.errors import PolyembError
from polyemb.options import DELIVERIES, JOIN_HOWS, PRECISIONS, SCORES
from polyemb.spark.datasets import check_output, job_session, read_parquet
from polyemb.spark.join import BLOCK_ROWS, BROADCAST_MB


def build_parser() -> argparse.ArgumentParser:
    """The job's options."""
    parser = argparse.ArgumentParser(
        prog="semantic_join_job.py",
        description="Join two Parquet datasets by meaning: each left row with its k best right rows.",
    )
    parser.add_argument("--left", required=True, help="left Parquet path, folder or glob")
    parser.add_argument("--right", required=True, help="right Parquet path, folder or glob")
    parser.add_argument("--left-on", required=True, help="the left key column (text or array<float>)")
    parser.add_argument("--right-on", help="the right key column (default: --left-on)")
    parser.add_argument("--output", required=True, help="where to write Parquet")
    parser.add_argument("--k", type=int, default=1, help="matches per left row (default 1)")
    parser.add_argument("--threshold", type=float, help="keep only matches scoring at least this")
    parser.add_argument("--score", choices=SCORES, default="cosine", help="cosine, margin or csls")
    parser.add_argument("--how", choices=JOIN_HOWS, default="inner", help="left keeps unmatched left rows")
    parser.add_argument("--model", help="hub id or path (default: $POLYEMB_MODEL, else the default model)")
    parser.add_argument("--store", help="a vector store folder: texts it holds are not embedded again")
    parser.add_argument("--delivery", choices=DELIVERIES, default="auto", help="how executors get the model")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument(
        "--block-rows",
        type=int,
        default=BLOCK_ROWS,
        help="rows per block of a large right side (%(default)s)",
    )
    parser.add_argument(
        "--broadcast-mb",
        type=float,
        default=BROADCAST_MB,
        help="ship a right side this small whole (%(default)s)",
    )
    parser.add_argument("--mode", choices=["errorifexists", "overwrite", "append"], default="errorifexists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    spark = job_session("polyemb-semantic-join")
    started = time.perf_counter()
    try:
        left, right = read_parquet(spark, args.left), read_parquet(spark, args.right)
        check_output(spark, args.output, args.mode, {args.left: left, args.right: right})
        joined = polyemb.spark.semantic_join(
            left,
            right,
            args.left_on,
            args.right_on,
            k=args.k,
            threshold=args.threshold,
            how=args.how,
            score=args.score,
            model=args.model,
            store=args.store,
            block_rows=args.block_rows,
            broadcast_mb=args.broadcast_mb,
            spark=spark,
            delivery=args.delivery,
            precision=args.precision,
        )
    except PolyembError as exc:
        print(f"semantic_join_job: {exc}", file=sys.stderr)
        return 2
    joined.write.mode(args.mode).parquet(args.output)
    print(f"semantic_join_job: wrote {args.output} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
