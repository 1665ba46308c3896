"""``polyemb bench-join``: translation retrieval, joins in DuckDB and Spark, and the ivf method.

The work is done in :mod:`polyemb.bench.join` and :mod:`polyemb.bench.ivf`; here are the
options and the printing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from polyemb.cli.bench import REAL_TEXTS, add_texts_options
from polyemb.cli.shared import (
    Subparsers,
    add_store_options,
    bounded_float,
    load_encoder,
    model_options,
    non_negative_int,
    positive_int,
    print_meta,
    print_progress,
    store_of,
)
from polyemb.errors import InvalidInputError

__all__ = ["add_parser"]


def add_parser(commands: Subparsers) -> None:
    """Add ``bench-join`` to the ``commands`` subparsers."""
    bench_join = commands.add_parser(
        "bench-join",
        parents=[model_options()],
        help="translation retrieval P@1, join speed in DuckDB and Spark, and the ivf method against exact",
        description=(
            "retrieval: P@1 of translation retrieval on aligned stsb-<lang>-dev.csv files (--data), per "
            "direction, for cosine, margin and CSLS (and by the ivf method with --method ivf). duckdb: "
            "--size x --size rows, top -k, the index function against array_cosine_similarity's cross "
            "join (and the vss HNSW index with --vss). spark: --left x --right rows on local[2], "
            "semantic_join against Spark ML's LSH approxSimilarityJoin, with LSH's recall of the exact "
            "top-k. ivf: a top -k join of --queries rows (0: a self-join) against --rows rows in "
            "--engine, exact (timed on --exact-queries rows, scaled) against each --nprobe and --recall: "
            "time, speed-up, recall@k on --sample rows; --growth times the ivf self-join at each size. "
            "dedup: near-duplicate pairs at --threshold, exact (timed on --exact-rows rows, scaled) "
            "against ivf: time and the share of a --sample of rows' exact pairs found. Vectors come from "
            "--vectors (a Parquet vector column) or are embedded through --store."
        ),
    )
    bench_join.add_argument("kind", choices=["retrieval", "duckdb", "spark", "ivf", "dedup"])
    bench_join.add_argument("--data", help="retrieval: folder of stsb-<lang>-dev.csv files")
    bench_join.add_argument(
        "--pairs",
        default="en-de,en-es,en-fr,en-ru,en-zh,de-fr",
        help="retrieval: language pairs (%(default)s)",
    )
    add_texts_options(
        bench_join, "duckdb, spark: real sentences (as bench --texts); ivf, dedup: see --paired-texts"
    )
    bench_join.add_argument(
        "--size", type=positive_int, default=20_000, help="duckdb: rows a side (%(default)s)"
    )
    bench_join.add_argument(
        "--left", type=positive_int, default=200_000, help="spark: left rows (%(default)s)"
    )
    bench_join.add_argument(
        "--right", type=positive_int, default=50_000, help="spark: right rows (%(default)s)"
    )
    bench_join.add_argument("-k", type=positive_int, default=5, help="matches per left row (%(default)s)")
    add_store_options(bench_join, "a vector store for the texts' vectors")
    bench_join.add_argument("--vss", action="store_true", help="duckdb: also the vss HNSW index")
    bench_join.add_argument(
        "--lsh-tables", type=positive_int, default=3, help="spark: LSH hash tables (%(default)s)"
    )
    bench_join.add_argument(
        "--lsh-timeout",
        type=float,
        default=1800,
        help="spark: seconds before LSH's join is cancelled (%(default)s)",
    )
    _add_ivf_options(bench_join)
    bench_join.add_argument("--json", action="store_true", help="print a JSON report")
    bench_join.set_defaults(run=_bench_join)


def _add_ivf_options(parser: argparse.ArgumentParser) -> None:
    from polyemb.bench.ivf import ENGINES

    group = parser.add_argument_group("ivf and dedup")
    group.add_argument(
        "--vectors", metavar="FILE", help="a Parquet file with a vector column (--vector-column)"
    )
    group.add_argument("--vector-column", default="embedding", help="its vector column (%(default)s)")
    group.add_argument(
        "--paired-texts",
        type=positive_int,
        metavar="N",
        help="without --vectors: N texts, each two sentences of one --texts file joined (seeded), embedded",
    )
    group.add_argument("--engine", choices=ENGINES, default="core", help="where the joins run (%(default)s)")
    group.add_argument(
        "--rows", type=positive_int, default=200_000, help="right rows, or rows to dedup (%(default)s)"
    )
    group.add_argument(
        "--queries",
        type=non_negative_int,
        default=0,
        help="left rows after --rows; 0: a self-join (%(default)s)",
    )
    group.add_argument(
        "--nprobe",
        type=_int_list,
        help=(
            "nprobe values (ivf, dedup: default 16,32,64 without --recall; retrieval: the first one, "
            "default the join's own)"
        ),
    )
    group.add_argument("--recall", type=_float_list, default=[], help="recall targets, e.g. 0.9,0.95")
    group.add_argument(
        "--nlist",
        type=positive_int,
        help="lists (default: 4 x sqrt(rows), or rows / 128 beyond 262,144 rows)",
    )
    group.add_argument("--seed", type=int, default=0, help="the ivf seed (%(default)s)")
    group.add_argument(
        "--threshold", type=bounded_float(-1, 1), default=0.9, help="dedup: cosine (%(default)s)"
    )
    group.add_argument(
        "--sample", type=positive_int, default=2000, help="rows whose recall is measured (%(default)s)"
    )
    group.add_argument(
        "--exact-queries",
        type=positive_int,
        default=2000,
        help="ivf: left rows exact is timed on (%(default)s)",
    )
    group.add_argument(
        "--exact-rows", type=positive_int, default=50_000, help="dedup: rows exact is timed on (%(default)s)"
    )
    group.add_argument(
        "--growth", type=_int_list, default=[], help="sizes of the growth runs, e.g. 250000,500000"
    )
    group.add_argument("--method", choices=["exact", "ivf"], default="exact", help="retrieval: also ivf P@1")


# The nprobe values bench-join ivf and dedup time when --nprobe is not given.
_NPROBES = [16, 32, 64]


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a comma-separated list of integers, got {value!r}") from exc


def _float_list(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, got {value!r}") from exc


def _bench_join(args: argparse.Namespace) -> int:
    from polyemb._platform import cpu_description

    meta: dict[str, Any] = {"cpu": cpu_description(), "kind": args.kind}
    if args.kind in ("ivf", "dedup"):
        return _bench_ivf(args, meta)
    from polyemb.bench import join
    from polyemb.bench.texts import load_texts

    encoder = load_encoder(args)
    store = store_of(args)
    meta["model"] = encoder.provenance
    if args.kind == "retrieval":
        if not args.data:
            raise InvalidInputError("give --data: a folder of aligned stsb-<lang>-dev.csv files")
        method = _ivf_settings(args)[0] if args.method == "ivf" else None
        if method is not None:  # as asked; None: the method's own default
            meta["ivf"] = {"nlist": method.nlist, "nprobe": method.nprobe, "recall": method.recall}
        rows = join.retrieval(encoder, Path(args.data), join.parse_pairs(args.pairs), store, method)
        if args.json:
            print(json.dumps({**meta, "results": rows}, indent=2))
        else:
            print_meta(meta)
            print(join.format_retrieval(rows))
        return 0
    if not args.texts:
        raise InvalidInputError(f"give --texts: {REAL_TEXTS}")
    pool = load_texts(args.texts, args.column)
    if args.kind == "duckdb":
        report = join.duckdb_join(
            encoder, pool, args.size, args.k, store, vss=args.vss, progress=print_progress
        )
    else:
        report = join.spark_join(
            encoder,
            pool,
            args.left,
            args.right,
            args.k,
            store,
            lsh_tables=args.lsh_tables,
            lsh_timeout=args.lsh_timeout,
            progress=print_progress,
        )
    print(json.dumps({**meta, **report}, indent=2 if args.json else None))
    return 0


def _ivf_settings(args: argparse.Namespace) -> list[Any]:
    from polyemb.bench.ivf import parse_settings
    from polyemb.ivf import Ivf

    default = [] if args.kind == "retrieval" or args.recall else _NPROBES
    nprobes = args.nprobe if args.nprobe is not None else default
    settings = parse_settings(nprobes, args.recall, args.nlist, args.seed)
    return settings or [Ivf(nlist=args.nlist, seed=args.seed)]


def _bench_vectors(args: argparse.Namespace, count: int, meta: dict[str, Any]) -> Any:
    """``count`` vectors from --vectors, or of --paired-texts texts embedded through --store."""
    from polyemb.bench.ivf import load_vectors

    if args.vectors:
        meta["vectors"] = args.vectors
        return load_vectors(args.vectors, args.vector_column, count)
    if not (args.texts and args.paired_texts):
        raise InvalidInputError(
            "give --vectors FILE, or --texts GLOB --paired-texts N (embedded through --store)"
        )
    from polyemb.bench.texts import paired_texts
    from polyemb.store import embedder_for

    encoder = load_encoder(args)
    meta.update(model=encoder.provenance, texts=f"{args.paired_texts} paired texts of {args.texts}")
    texts = paired_texts(args.texts, args.paired_texts)[:count]
    store = store_of(args)
    return embedder_for(encoder, store).encode(texts, show_progress=True)


def _bench_ivf(args: argparse.Namespace, meta: dict[str, Any]) -> int:
    from polyemb.bench import ivf

    settings = _ivf_settings(args)
    if args.kind == "ivf":
        needed = max(args.rows + args.queries, *args.growth) if args.growth else args.rows + args.queries
        vectors = _bench_vectors(args, needed, meta)
        report = ivf.join_bench(
            vectors,
            rows=args.rows,
            queries=args.queries,
            k=args.k,
            settings=settings,
            engine=args.engine,
            exact_queries=args.exact_queries,
            sample=args.sample,
            growth=args.growth,
            progress=print_progress,
        )
    else:
        vectors = _bench_vectors(args, max(args.rows, *args.growth) if args.growth else args.rows, meta)
        report = ivf.dedup_bench(
            vectors,
            rows=args.rows,
            threshold=args.threshold,
            settings=settings,
            engine=args.engine,
            exact_rows=args.exact_rows,
            sample=args.sample,
            growth=args.growth,
            progress=print_progress,
        )
    if args.json:
        print(json.dumps({**meta, **report}, indent=2))
    else:
        print_meta({**meta, **{k: v for k, v in report.items() if not isinstance(v, (dict, list))}})
        print(ivf.format_settings(report))
    return 0
