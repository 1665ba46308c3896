"""``polyemb bench``, ``bench-memory`` and ``bench-store`` (``bench-join``: :mod:`polyemb.cli.bench_join`).

The work is done in :mod:`polyemb.bench`; here are the options and the printing.
"""

from __future__ import annotations

import argparse
import json
import math
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
    MODEL_HELP,
    Subparsers,
    bounded_float,
    comma_list,
    load_encoder,
    model_options,
    non_negative_int,
    positive_int,
    print_meta,
    print_progress,
)
from polyemb.errors import InvalidInputError
from polyemb.options import WEIGHT_PRECISIONS

__all__ = ["REAL_TEXTS", "add_parser", "add_texts_options"]

REAL_TEXTS = "real sentences (a glob of STS CSVs, a .txt, ...)"
_AGAINST = ("sentence-transformers",)
_PRECISIONS = ("fp32", "bf16", "int8")


def add_parser(commands: Subparsers) -> None:
    """Add ``bench``, ``bench-memory`` and ``bench-store`` to the ``commands`` subparsers."""
    _add_bench(commands)
    _add_bench_memory(commands)
    _add_bench_store(commands)


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
            "another precision; polars: Series.emb.encode(); duckdb: SELECT embed(t); spark: the UDF "
            "on local[2]"
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
    add_texts_options(bench, "texts file: header-less STS CSV, CSV/Parquet with --column, or one per line")
    bench.add_argument(
        "--scenarios",
        type=comma_list("--scenarios", tuple(SCENARIOS)),
        default=list(SCENARIOS),
        help=f"e.g. a,b (default {','.join(SCENARIOS)})",
    )
    bench.add_argument(
        "--size",
        type=positive_int,
        default=2000,
        help="rows per scenario (c uses size/10 paragraphs; default %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=positive_int,
        default=encode.DEFAULT_ROUNDS,
        help="alternating rounds (default %(default)s)",
    )
    bench.add_argument("--json", action="store_true", help="print a JSON report")
    bench.set_defaults(run=_bench)


def add_texts_options(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Add ``--texts`` (with ``help_text``) and ``--column`` to ``parser``."""
    parser.add_argument("--texts", help=help_text)
    parser.add_argument("--column", help="the text column of --texts")


def _bench(args: argparse.Namespace) -> int:
    import torch

    from polyemb._platform import cpu_description
    from polyemb.bench.peak import annotate
    from polyemb.bench.sides import make_sides, side_precision
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
    peers = extra.get("peers")
    peak = annotate(results, scenarios, encoder, lambda name: side_precision(name, encoder, peers))
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
        "peak": peak,
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
            "memory after loading and at its peak, the medians over rounds in rotating order. With "
            "--polars-sink, each process streams that Parquet file's --column through Polars instead: "
            "scan_parquet(...).with_columns(pl.col(COLUMN).emb.encode()).sink_parquet(...)."
        ),
    )
    bench_memory.add_argument("--model", "-m", help=MODEL_HELP)
    bench_memory.add_argument(
        "--precisions",
        type=comma_list("--precisions", WEIGHT_PRECISIONS),
        default=list(_PRECISIONS),
        help=f"default {','.join(_PRECISIONS)}",
    )
    add_texts_options(bench_memory, "texts file (as bench --texts); default: generated sentences")
    bench_memory.add_argument("--size", type=positive_int, default=1000, help="texts encoded (%(default)s)")
    bench_memory.add_argument(
        "--polars-sink",
        metavar="PARQUET",
        help="stream this Parquet file's --column through a Polars query (needs polyemb[polars])",
    )
    bench_memory.add_argument(
        "--rows",
        type=non_negative_int,
        default=0,
        help="--polars-sink: the first ROWS rows (default, 0: every row)",
    )
    bench_memory.add_argument(
        "--chunk-rows",
        type=non_negative_int,
        default=0,
        help=(
            "--polars-sink: rows per streaming batch (pl.Config.set_streaming_chunk_size) and per "
            "output row group (default: Polars' own)"
        ),
    )
    bench_memory.add_argument(
        "--rounds", type=positive_int, default=memory.DEFAULT_ROUNDS, help="rounds (%(default)s)"
    )
    bench_memory.add_argument("--json", action="store_true", help="print a JSON report")
    bench_memory.set_defaults(run=_bench_memory)


def _bench_memory(args: argparse.Namespace) -> int:
    from polyemb._platform import cpu_description
    from polyemb.bench.texts import make_scenario
    from polyemb.finding import DEFAULT_MODEL, MODEL_ENV

    model = args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    meta: dict[str, Any] = {"cpu": cpu_description(), "model": model, "rounds": args.rounds}
    if args.polars_sink:
        if not args.column:
            raise InvalidInputError("--polars-sink needs --column: the text column of the Parquet file")
        from polyemb.tables import read_table_batches

        # A missing file or column: one line here, not a traceback from each child process.
        read_table_batches(args.polars_sink, [args.column])
        report = memory.sink_footprints(
            model,
            args.precisions,
            args.polars_sink,
            args.column,
            args.rows,
            chunk=args.chunk_rows,
            rounds=args.rounds,
        )
        meta |= {
            "polars_sink": args.polars_sink,
            "column": args.column,
            "chunk_rows": args.chunk_rows or "polars' default",
            "polars": _version("polars"),
        }
    else:
        texts = make_scenario("a", args.texts, args.column, args.size)
        report = memory.footprints(model, args.precisions, texts, rounds=args.rounds)
        meta["texts"] = len(texts)
    if args.json:
        print(json.dumps({**meta, "precisions": report}, indent=2))
    else:
        print_meta(meta)
        print(memory.format_footprints(report))
    # A report of failures alone measured nothing: not a success (each failure is shown above).
    return 1 if report and all("error" in figures for figures in report.values()) else 0


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


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
            "process (keys of one earlier run, and random keys), with keys/s and peak memory. "
            "torture: for --seconds, workers (--spawned, --forked) encode, read, compact and gc one "
            "store while this process kills them and damages files, then checks that nothing was "
            "lost or wrong; exit 1 if an invariant failed."
        ),
    )
    bench_store.add_argument("kind", choices=["incremental", "lookup", "torture"])
    add_texts_options(bench_store, "incremental: real sentences (as bench --texts)")
    bench_store.add_argument(
        "--rows", type=positive_int, default=200_000, help="incremental: rows a day (%(default)s)"
    )
    bench_store.add_argument(
        "--edited", type=bounded_float(0, 1), default=0.02, help="incremental: share edited (%(default)s)"
    )
    bench_store.add_argument(
        "--appended",
        type=bounded_float(0, 1),
        default=0.02,
        help="incremental: share appended (%(default)s)",
    )
    bench_store.add_argument(
        "--engines",
        type=comma_list("--engines", ENGINES),
        default=list(ENGINES),
        help=f"incremental: e.g. cli,duckdb (default {','.join(ENGINES)})",
    )
    bench_store.add_argument(
        "--entries", type=positive_int, default=5_000_000, help="lookup: store size (%(default)s)"
    )
    bench_store.add_argument(
        "--keys", type=positive_int, default=200_000, help="lookup: keys looked up (%(default)s)"
    )
    bench_store.add_argument(
        "--dim", type=positive_int, default=384, help="lookup: vector length (%(default)s)"
    )
    bench_store.add_argument(
        "--seconds",
        type=bounded_float(0, math.inf, low_open=True),
        default=60.0,
        help="torture: how long the workers run (%(default)s)",
    )
    bench_store.add_argument("--seed", type=int, default=0, help="torture: seeds every choice (%(default)s)")
    bench_store.add_argument(
        "--spawned",
        type=non_negative_int,
        default=2,
        help="torture: workers started as processes (%(default)s)",
    )
    bench_store.add_argument(
        "--forked",
        type=non_negative_int,
        default=2,
        help="torture: workers forked from a process holding the store (%(default)s)",
    )
    bench_store.add_argument(
        "--spark", action="store_true", help="torture: a Spark job (local[2], a tiny model) appends meanwhile"
    )
    bench_store.add_argument(
        "--workdir", help="an existing folder where the stores and files go (default: the temp folder)"
    )
    bench_store.add_argument("--json", action="store_true", help="print a JSON report")
    bench_store.set_defaults(run=_bench_store)


def _bench_store(args: argparse.Namespace) -> int:
    from polyemb._platform import cpu_description
    from polyemb.bench import store

    meta: dict[str, Any] = {"cpu": cpu_description(), "kind": args.kind}
    if args.workdir is not None and not Path(args.workdir).is_dir():
        raise InvalidInputError(f"--workdir {args.workdir!r} is not a folder")
    if args.kind == "lookup" and args.keys > args.entries:
        raise InvalidInputError(
            f"--keys ({args.keys}) cannot exceed --entries ({args.entries}): keys are drawn from them"
        )
    if args.kind == "torture" and not args.spawned + args.forked:
        raise InvalidInputError("torture needs at least one worker: --spawned or --forked")
    with tempfile.TemporaryDirectory(prefix="polyemb-bench-store-", dir=args.workdir) as workdir:
        if args.kind == "torture":
            return _torture(args, Path(workdir), meta)
        if args.kind == "incremental":
            results = _incremental(args, Path(workdir), meta)
        else:
            results = store.lookup(
                args.entries, args.keys, dim=args.dim, folder=Path(workdir), progress=print_progress
            )
    _print_results(args, meta, results)
    return 0


def _torture(args: argparse.Namespace, workdir: Path, meta: dict[str, Any]) -> int:
    """The torture run; exit status 1 if an invariant failed."""
    from dataclasses import asdict

    from polyemb.bench.torture import SparkSide, torture

    spark = None
    if args.spark:
        from polyemb.bench._spark import local_spark
        from polyemb.encoder import load
        from polyemb.testing import build_tiny_model

        model = build_tiny_model(workdir / "model")
        session = local_spark("polyemb-torture", {"spark.sql.shuffle.partitions": "4"})  # small runs
        spark = SparkSide(session, model, load(model, device="cpu"))
    report = torture(
        workdir / "torture",
        seconds=args.seconds,
        seed=args.seed,
        spawned=args.spawned,
        forked=args.forked,
        spark=spark,
        progress=print_progress,
    )
    if args.json:
        print(json.dumps({**meta, **asdict(report), "ok": report.ok}, indent=2))
    else:
        print_meta(meta)
        print(report.format())
    return 0 if report.ok else 1


def _incremental(args: argparse.Namespace, workdir: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    from polyemb.bench import store
    from polyemb.bench.texts import load_texts
    from polyemb.encoder import load

    if not args.texts:
        raise InvalidInputError(f"give --texts: {REAL_TEXTS}")
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
