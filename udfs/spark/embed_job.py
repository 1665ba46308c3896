"""Embed a text column of a Parquet dataset on a data lake, with Spark.

Reads Parquet (a path or glob on any storage Spark reads: s3a://, abfss://, gs://, hdfs://,
file://), adds a vector column (and optionally similarity columns), and writes Parquet with
the input's columns and partitioning.

    spark-submit udfs/spark/embed_job.py \\
        --input 's3a://lake/articles/' --output 's3a://lake/articles_embedded/' \\
        --text-column title --model /models/mstsb [--store 's3a://lake/vectors/']

With --store, texts already embedded for this model (by any earlier run, job, or polyemb on a
laptop) are read from the store and only new or edited texts are embedded.

GPU clusters: see docs/spark.md for the executor, task and Arrow batch settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import polyemb.spark
from polyemb.cli.shared import positive_int
from polyemb.encoder import describe
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.options import DELIVERIES, PRECISIONS
from polyemb.spark.datasets import check_output, folder_keys, input_files, job_session, read_parquet
from polyemb.spark.udfs import col_named, name_fold


def build_parser() -> argparse.ArgumentParser:
    """The job's options."""
    parser = argparse.ArgumentParser(
        prog="embed_job.py",
        description="Add sentence-embedding vectors (and similarities) to a Parquet dataset with Spark.",
    )
    parser.add_argument(
        "--input", required=True, help="Parquet path, folder or glob (any storage Spark reads)"
    )
    parser.add_argument("--output", required=True, help="where to write Parquet")
    parser.add_argument("--text-column", required=True, help="the column to embed")
    parser.add_argument(
        "--vector-column", default="embedding", help="name of the vector column (default: embedding)"
    )
    parser.add_argument(
        "--no-vectors", action="store_true", help="write only the similarity columns, no vectors"
    )
    parser.add_argument("--similarity-query", help="also add the cosine similarity of the text to this query")
    parser.add_argument(
        "--similarity-column", default="similarity", help="name for --similarity-query's column"
    )
    parser.add_argument(
        "--pair-columns",
        nargs=2,
        metavar=("A", "B"),
        help="also add the cosine similarity between two text columns",
    )
    parser.add_argument(
        "--pair-similarity-column", default="pair_similarity", help="name for --pair-columns' column"
    )
    parser.add_argument(
        "--model", default=None, help="hub id or path (default: $POLYEMB_MODEL, else the default model)"
    )
    parser.add_argument(
        "--delivery",
        choices=DELIVERIES,
        default="auto",
        help="how executors get the model (auto: broadcast on classic Spark, artifact on Spark Connect)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="texts per forward pass on executors"
    )
    parser.add_argument(
        "--arrow-batch-rows",
        type=positive_int,
        default=None,
        help="spark.sql.execution.arrow.maxRecordsPerBatch",
    )
    parser.add_argument(
        "--repartition", type=positive_int, default=None, help="repartition the input into N partitions first"
    )
    parser.add_argument(
        "--partition-by",
        nargs="*",
        default=None,
        help="output partition columns (default: the input's own key=value partition columns)",
    )
    parser.add_argument("--mode", choices=["errorifexists", "overwrite", "append"], default="errorifexists")
    parser.add_argument(
        "--store",
        help=(
            "a vector store folder (any path Spark reads and writes): only texts it lacks for this "
            "model are embedded, and they are added to it (see polyemb.spark.embed_incremental)"
        ),
    )
    return parser


def input_partition_columns(df: DataFrame) -> list[str]:
    """The hive-style ``key=value`` folders every input file sits under, in folder order."""
    return [k for k in folder_keys(input_files(df)) if k in df.columns]


def add_columns(spark: SparkSession, df: DataFrame, args: argparse.Namespace) -> DataFrame:
    """``df`` with the vector column (through the store if given) and the similarity columns asked for."""
    if not args.no_vectors and args.store:
        # Only the texts the store lacks for this model are embedded; the rest are read.
        report = polyemb.spark.IncrementalReport()
        df = polyemb.spark.embed_incremental(
            df,
            args.text_column,
            args.store,
            args.model,
            spark=spark,
            vector_column=args.vector_column,
            delivery=args.delivery,
            batch_size=args.batch_size,
            precision=args.precision,
            report=report,
        )
        print(f"embed_job: store {args.store}: {report.embedded} new texts embedded", file=sys.stderr)
    if args.similarity_query or args.pair_columns or (not args.no_vectors and not args.store):
        # One registration: the model is delivered once for both functions.
        polyemb.spark.register(
            spark,
            args.model,
            delivery=args.delivery,
            batch_size=args.batch_size,
            precision=args.precision,
            prefix="polyemb_",
        )
    if not args.no_vectors and not args.store:
        provenance = describe(args.model).provenance
        vectors = F.call_function("polyemb_embed", col_named(args.text_column))
        df = df.withColumn(args.vector_column, vectors).withMetadata(
            args.vector_column, {"polyemb.model": provenance}
        )
    if args.similarity_query:
        query = F.lit(args.similarity_query)
        df = df.withColumn(
            args.similarity_column,
            F.call_function("polyemb_semantic_similarity", col_named(args.text_column), query),
        )
    if args.pair_columns:
        a, b = (col_named(name) for name in args.pair_columns)  # a dot is part of the name
        df = df.withColumn(args.pair_similarity_column, F.call_function("polyemb_semantic_similarity", a, b))
    return df


def _column_problem(df: DataFrame, args: argparse.Namespace) -> str | None:
    """Why the input's columns do not fit the job (a text column that is not text, an output name
    taken, nothing to add), or None: said before any work, as the job keeps every input column."""
    if args.no_vectors and not (args.similarity_query or args.pair_columns):
        return "--no-vectors leaves nothing to add: give --similarity-query or --pair-columns with it"
    for column in [args.text_column, *(args.pair_columns or [])]:
        kind = df.schema[column].dataType.simpleString()
        if kind != "string":
            return f"column {column!r} is {kind}: give a text (string) column"
    added = [
        (args.vector_column, "--vector-column", not args.no_vectors),
        (args.similarity_column, "--similarity-column", bool(args.similarity_query)),
        (args.pair_similarity_column, "--pair-similarity-column", bool(args.pair_columns)),
    ]
    fold = name_fold(df.sparkSession)  # Spark takes "Embedding" for "embedding" by default
    names = {fold(column) for column in df.columns}
    for name, option, used in added:
        if not used:
            continue
        if fold(name) in names:
            return f"{option} {name!r} is taken (the input's columns, or another new one): choose another"
        names.add(fold(name))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns 0 on success."""
    args = build_parser().parse_args(argv)
    spark = job_session("polyemb-embed")
    if args.arrow_batch_rows:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch_rows))
    try:
        df = read_parquet(spark, args.input)
        check_output(spark, args.output, args.mode, {args.input: df})
    except InvalidInputError as exc:
        print(f"embed_job: {exc}", file=sys.stderr)
        return 2
    partition_by = args.partition_by if args.partition_by is not None else input_partition_columns(df)
    for column in [args.text_column, *(args.pair_columns or []), *partition_by]:
        if column not in df.columns:
            print(
                f"embed_job: {ColumnNotFoundError.from_missing(column, df.columns, 'the input')}",
                file=sys.stderr,
            )
            return 2
    problem = _column_problem(df, args)
    if problem:
        print(f"embed_job: {problem}", file=sys.stderr)
        return 2
    if args.repartition:
        df = df.repartition(args.repartition)
    df = add_columns(spark, df, args)
    started = time.perf_counter()
    writer = df.write.mode(args.mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(args.output)
    print(f"embed_job: wrote {args.output} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
