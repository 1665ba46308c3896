"""``polyemb bench``, ``bench-memory``, ``bench-store`` and ``bench-join``: the benchmark commands.

The work is done in :mod:`polyemb.bench`; here are the options and the printing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from polyemb.bench import encode, memory
from polyemb.bench.sides import BENCH_SIDES, PEER_SETUP
from polyemb.bench.store import ENGINES
from polyemb.bench.texts import SCENARIOS
from polyemb.cli.shared import (
    Subparsers,
    comma_list,
    load_encoder,
    model_options,
    print_meta,
    print_progress,
)
from polyemb.errors import InvalidInputError
from polyemb.options import WEIGHT_PRECISIONS

__all__ = ["add_parser"]

_REAL_TEXTS = "real sentences (a glob of STS CSVs, a .txt, ...)"
_AGAINST = ("sentence-transformers",)
_PRECISIONS = ("fp32", "bf16", "int8")


def add_parser(commands: Subparsers) -> None:
    """Add the four benchmark commands to the ``commands`` subparsers."""
    _add_bench(commands)
    _add_bench_memory(commands)
    _add_bench_store(commands)
    _add_bench_join(commands)


# ---------------------------------------------------------------------- bench


def _add_bench(commands: Subparsers) -> None:
    bench = commands.add_parser(
        "bench",
        parents=[model_options()],
        help="time polyemb against sentence-transformers (torch, ONNX, OpenVINO), DuckDB or Spark",
        description=(
            "Encode the same texts with polyemb and with each reference in one run, in rotating "
            "order, for several rounds; print texts/s for each, the median ratio against the "
            "first reference (its time / the side's time), the mean and smallest row cosine to "
            "the first reference's vectors, and peak memory. Scenarios: "
            + "; ".join(f"{name} = {text}" for name, text in SCENARIOS.items())
            + "."
        ),
    )
    bench.add_argument(
        "--against",
        type=comma_list("--against", BENCH_SIDES, ordered=True),
        default=list(_AGAINST),
        help=(
            f"comma-separated references of {', '.join(BENCH_SIDES)}; the first one is the baseline "
            f"of every ratio (default: {','.join(_AGAINST)}). sentence-transformers: torch, fp32 on the CPU; "
            "st-*: sentence-transformers' backends, run in --peer-python; polyemb-*: polyemb at "
            "another precision; duckdb: SELECT embed(t); spark: the UDF on local[2]"
        ),
    )
    bench.add_argument(
        "--peer-python",
        default=sys.executable,
        help=(
            "the Python that runs the st-* references (default: this one). Their extras need "
            f"sentence-transformers 5.x; make one with: {PEER_SETUP}"
        ),
    )
    _add_texts_options(bench, "texts file: header-less STS CSV, CSV/Parquet with --column, or one per line")
    bench.add_argument(
        "--scenarios",
        type=comma_list("--scenarios", tuple(SCENARIOS)),
        default=list(SCENARIOS),
        help=f"e.g. a,b (default {','.join(SCENARIOS)})",
    )
    bench.add_argument(
        "--size",
        type=int,
        default=2000,
        help="rows per scenario (c uses size/10 paragraphs; default %(default)s)",
    )
    bench.add_argument(
        "--rounds", type=int, default=encode.DEFAULT_ROUNDS, help="alternating rounds (default %(default)s)"
    )
    bench.add_argument("--json", action="store_true", help="print a JSON report")
    bench.set_defaults(run=_bench)


def _add_texts_options(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--texts", help=help_text)
    parser.add_argument("--column", help="the text column of --texts")


def _bench(args: argparse.Namespace) -> int:
    import torch

    from polyemb._platform import cpu_description
    from polyemb.bench.sides import make_sides
    from polyemb.bench.texts import make_scenario

    encoder = load_encoder(args)
    scenarios = {name: make_scenario(name, args.texts, args.column, args.size) for name in args.scenarios}
    sides, extra = make_sides(
        encoder,
        args.against,
        scenarios,
        batch_size=args.batch_size,
        peer_python=args.peer_python,
        texts_file=args.texts,
        column=args.column,
    )
    baseline = args.against[0]
    results = encode.run_bench(
        sides, scenarios, baseline=baseline, rounds=args.rounds, progress=print_progress
    )
    meta = {
        "cpu": cpu_description(),
        "model": encoder.model_id,
        "device": str(encoder.device),
        "precision": encoder.precision,
        # sentence_transformers_side: fp32 on the CPU, the encoder's precision on a GPU.
        "reference_precision": "fp32" if encoder.device.type == "cpu" else encoder.precision,
        "against": args.against,
        "baseline": baseline,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
    if args.json:
        print(encode.to_json(meta, results))
    else:
        print_meta(meta)
        print(encode.format_table(results))
    return 0


# ---------------------------------------------------------------------- bench-memory


def _add_bench_memory(commands: Subparsers) -> None:
    bench_memory = commands.add_parser(
        "bench-memory",
        help="speed and memory of each precision, each loaded in a process of its own",
        description=(
            "For each of --precisions, a fresh Python process (as a Spark Python worker) loads the "
            "model and encodes --size texts of scenario a; prints texts/s, load time, and resident "
            "memory after loading and at its peak, the medians over rounds in rotating order."
        ),
    )
    bench_memory.add_argument("--model", "-m", help="model folder or hub id (default: the default model)")
    bench_memory.add_argument(
        "--precisions",
        type=comma_list("--precisions", WEIGHT_PRECISIONS),
        default=list(_PRECISIONS),
        help=f"default {','.join(_PRECISIONS)}",
    )
    _add_texts_options(bench_memory, "texts file (as bench --texts); default: generated sentences")
    bench_memory.add_argument("--size", type=int, default=1000, help="texts encoded (%(default)s)")
    bench_memory.add_argument(
        "--rounds", type=int, default=memory.DEFAULT_ROUNDS, help="rounds (%(default)s)"
    )
    bench_memory.add_argument("--json", action="store_true", help="print a JSON report")
    bench_memory.set_defaults(run=_bench_memory)


def _bench_memory(args: argparse.Namespace) -> int:
    from polyemb._platform import cpu_description
    from polyemb.bench.texts import make_scenario
    from polyemb.loading import DEFAULT_MODEL, MODEL_ENV

    model = args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    texts = make_scenario("a", args.texts, args.column, args.size)
    report = memory.footprints(model, args.precisions, texts, rounds=args.rounds)
    meta = {"cpu": cpu_description(), "model": model, "texts": len(texts), "rounds": args.rounds}
    if args.json:
        print(json.dumps({**meta, "precisions": report}, indent=2))
    else:
        print_meta(meta)
        print(memory.format_footprints(report))
    return 0


# ---------------------------------------------------------------------- bench-store


def _add_bench_store(commands: Subparsers) -> None:
    bench_store = commands.add_parser(
        "bench-store",
        parents=[model_options()],
        help="time a daily re-run through the vector store, and lookups in a large store",
        description=(
            "incremental: a first run over --rows rows of real sentences into an empty store, then a "
            "re-run over the same rows with --edited of them changed and --appended added, per "
            "engine (cli, duckdb, spark on local[2]); prints each run's time and the re-run's share. "
            "lookup: a store of --entries random vectors, then lookups of --keys keys in a fresh "
            "process (keys of one earlier run, and random keys), with keys/s and peak memory."
        ),
    )
    bench_store.add_argument("kind", choices=["incremental", "lookup"])
    _add_texts_options(bench_store, "incremental: real sentences (as bench --texts)")
    bench_store.add_argument(
        "--rows", type=int, default=200_000, help="incremental: rows a day (%(default)s)"
    )
    bench_store.add_argument(
        "--edited", type=float, default=0.02, help="incremental: share edited (%(default)s)"
    )
    bench_store.add_argument(
        "--appended", type=float, default=0.02, help="incremental: share appended (%(default)s)"
    )
    bench_store.add_argument(
        "--engines",
        type=comma_list("--engines", ENGINES),
        default=list(ENGINES),
        help=f"incremental: e.g. cli,duckdb (default {','.join(ENGINES)})",
    )
    bench_store.add_argument(
        "--entries", type=int, default=5_000_000, help="lookup: store size (%(default)s)"
    )
    bench_store.add_argument("--keys", type=int, default=200_000, help="lookup: keys looked up (%(default)s)")
    bench_store.add_argument("--dim", type=int, default=384, help="lookup: vector length (%(default)s)")
    bench_store.add_argument("--workdir", help="where the stores and files go (default: the temp folder)")
    bench_store.add_argument("--json", action="store_true", help="print a JSON report")
    bench_store.set_defaults(run=_bench_store)


def _bench_store(args: argparse.Namespace) -> int:
    from polyemb._platform import cpu_description
    from polyemb.bench import store

    meta: dict[str, Any] = {"cpu": cpu_description(), "kind": args.kind}
    with tempfile.TemporaryDirectory(prefix="polyemb-bench-store-", dir=args.workdir) as workdir:
        if args.kind == "incremental":
            results = _incremental(args, Path(workdir), meta)
        else:
            results = store.lookup(
                args.entries, args.keys, dim=args.dim, folder=Path(workdir), progress=print_progress
            )
    _print_results(args, meta, results)
    return 0


def _incremental(args: argparse.Namespace, workdir: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    from polyemb.bench import store
    from polyemb.bench.texts import load_texts
    from polyemb.encoder import load

    if not args.texts:
        raise InvalidInputError(f"give --texts: {_REAL_TEXTS}")
    encoder = load(args.model, precision="fp32", device="cpu")  # resolves the default model once
    meta["model"] = encoder.provenance
    return store.incremental(
        str(encoder.folder),
        load_texts(args.texts, args.column),
        rows=args.rows,
        edited=args.edited,
        appended=args.appended,
        engines=args.engines,
        workdir=workdir,
        progress=print_progress,
    )


def _print_results(args: argparse.Namespace, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    if args.json:
        print(json.dumps({**meta, "results": results}, indent=2))
        return
    print_meta(meta)
    for result in results:
        print(json.dumps(result))


# ---------------------------------------------------------------------- bench-join


def _add_bench_join(commands: Subparsers) -> None:
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
    _add_texts_options(
        bench_join, "duckdb, spark: real sentences (as bench --texts); ivf, dedup: see --paired-texts"
    )
    bench_join.add_argument("--size", type=int, default=20_000, help="duckdb: rows a side (%(default)s)")
    bench_join.add_argument("--left", type=int, default=200_000, help="spark: left rows (%(default)s)")
    bench_join.add_argument("--right", type=int, default=50_000, help="spark: right rows (%(default)s)")
    bench_join.add_argument("-k", type=int, default=5, help="matches per left row (%(default)s)")
    bench_join.add_argument("--store", metavar="DIR", help="a vector store for the texts' vectors")
    bench_join.add_argument("--vss", action="store_true", help="duckdb: also the vss HNSW index")
    bench_join.add_argument("--lsh-tables", type=int, default=3, help="spark: LSH hash tables (%(default)s)")
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
        type=int,
        metavar="N",
        help="without --vectors: N texts, each two sentences of one --texts file joined (seeded), embedded",
    )
    group.add_argument("--engine", choices=ENGINES, default="core", help="where the joins run (%(default)s)")
    group.add_argument("--rows", type=int, default=200_000, help="right rows, or rows to dedup (%(default)s)")
    group.add_argument(
        "--queries", type=int, default=0, help="left rows after --rows; 0: a self-join (%(default)s)"
    )
    group.add_argument("--nprobe", type=_int_list, default=[16, 32, 64], help="nprobe values (%(default)s)")
    group.add_argument("--recall", type=_float_list, default=[], help="recall targets, e.g. 0.9,0.95")
    group.add_argument("--nlist", type=int, help="lists (default: 4 x sqrt(rows))")
    group.add_argument("--seed", type=int, default=0, help="the ivf seed (%(default)s)")
    group.add_argument("--threshold", type=float, default=0.9, help="dedup: cosine (%(default)s)")
    group.add_argument("--sample", type=int, default=2000, help="rows whose recall is measured (%(default)s)")
    group.add_argument(
        "--exact-queries", type=int, default=2000, help="ivf: left rows exact is timed on (%(default)s)"
    )
    group.add_argument(
        "--exact-rows", type=int, default=50_000, help="dedup: rows exact is timed on (%(default)s)"
    )
    group.add_argument(
        "--growth", type=_int_list, default=[], help="sizes of the growth runs, e.g. 250000,500000"
    )
    group.add_argument("--method", choices=["exact", "ivf"], default="exact", help="retrieval: also ivf P@1")


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
    from polyemb.store import open_store

    encoder = load_encoder(args)
    store = open_store(args.store) if args.store else None
    meta["model"] = encoder.provenance
    if args.kind == "retrieval":
        if not args.data:
            raise InvalidInputError("give --data: a folder of aligned stsb-<lang>-dev.csv files")
        method = _ivf_settings(args)[0] if args.method == "ivf" else None
        rows = join.retrieval(encoder, Path(args.data), join.parse_pairs(args.pairs), store, method)
        if args.json:
            print(json.dumps({**meta, "results": rows}, indent=2))
        else:
            print_meta(meta)
            print(join.format_retrieval(rows))
        return 0
    if not args.texts:
        raise InvalidInputError(f"give --texts: {_REAL_TEXTS}")
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

    settings = parse_settings(args.nprobe, args.recall, args.nlist, args.seed)
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
    from polyemb.store import embedder_for, open_store

    encoder = load_encoder(args)
    meta.update(model=encoder.provenance, texts=f"{args.paired_texts} paired texts of {args.texts}")
    texts = paired_texts(args.texts, args.paired_texts)[:count]
    store = open_store(args.store) if args.store else None
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
