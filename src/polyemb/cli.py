"""The ``polyemb`` command: embed files, compare texts, and (with extras) run SQL."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polyemb import __version__
from polyemb.errors import InvalidInputError, PolyembError, SqlError
from polyemb.options import PRECISIONS, SCORES, WEIGHT_PRECISIONS

__all__ = ["main"]

_Command = Callable[[argparse.Namespace], int]


def _model_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        "--model",
        "-m",
        default=None,
        help="hub id or local folder (default: $POLYEMB_MODEL, else the multilingual default model)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="weight precision (default: fp32 on CPU, fp16 on GPU)",
    )
    group.add_argument(
        "--max-seq-length", type=int, default=None, help="tokens per text (default: the model's)"
    )
    group.add_argument("--revision", default=None, help="hub branch, tag or commit (e.g. refs/pr/3)")
    group.add_argument(
        "--batch-size", type=int, default=None, help="texts per forward pass (default: by token budget)"
    )
    return parent


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from polyemb.encoder import load

    return load(
        args.model,
        device=args.device,
        precision=args.precision,
        max_seq_length=args.max_seq_length,
        revision=args.revision,
    )


def _embed(args: argparse.Namespace) -> int:
    from polyemb.store import StoredEncoder, embedder_for, open_store
    from polyemb.tables import embed_file

    store = open_store(args.store) if args.store else None
    source = embedder_for(_load(args), store)
    report = embed_file(
        source,
        args.input,
        args.column,
        args.output,
        vector_column=args.vector_column,
        chunk_rows=args.chunk_rows,
        batch_size=args.batch_size,
        show_progress=False if args.no_progress else None,
    )
    print(
        f"wrote {report.rows} rows ({report.null_texts} NULL texts -> NULL vectors) "
        f"to {report.output} with {report.model}",
        file=sys.stderr,
    )
    if isinstance(source, StoredEncoder):
        stats = source.stats
        print(
            f"store {args.store}: {stats.looked_up} distinct texts, {stats.found} found, "
            f"{stats.embedded} embedded, {stats.written} written",
            file=sys.stderr,
        )
    return 0


def _similarity(args: argparse.Namespace) -> int:
    from polyemb.similarity import cosine

    encoder = _load(args)
    vectors = encoder.encode([args.text_a, args.text_b], batch_size=args.batch_size)
    score = float(cosine(vectors[0], vectors[1])[0])
    if args.json:
        print(json.dumps({"model": encoder.model_id, "similarity": score}))
    else:
        print(f"{score:.6f}")
    return 0


_ROW_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "CALL", "RELATION"}


def _sql(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.file is None):
        raise InvalidInputError("give a query or -f FILE (one of them)")
    text = args.query if args.query is not None else _read_sql(args.file)
    # polyemb.duckdb first: without duckdb installed it raises the error that says how to get it.
    from polyemb.duckdb import load_extension, register, register_index  # noqa: I001
    from polyemb.store import open_store
    import duckdb

    con = duckdb.connect(args.db or ":memory:")
    try:
        for extension in args.extension:
            load_extension(con, extension)
        store = open_store(args.store) if args.store else None
        encoder = _load(args)
        register(con, encoder, store=store, cache_mb=args.cache_mb, batch_size=args.batch_size)
        for name, query in args.index:
            columns = con.sql(query).columns
            if "key" not in columns or not {"text", "vector"} & set(columns):
                raise InvalidInputError(
                    f"--index {name}: the query must give the columns key and text (or vector), not {columns}"
                )
            column = "text" if "text" in columns else "vector"
            register_index(
                con,
                name,
                query,
                key="key",
                **{column: column},
                score=args.index_score,
                source=args.index_source,
                encoder=encoder,
                store=store,
                batch_size=args.batch_size,
            )
        try:
            statements = con.extract_statements(text)
        except duckdb.Error as exc:
            raise InvalidInputError(f"cannot parse the SQL: {exc}") from exc
        for statement in statements:
            kind = str(statement.type).rsplit(".", 1)[-1]
            try:
                if kind in _ROW_STATEMENTS:
                    _print_result(con.sql(statement.query), args)
                else:
                    con.execute(statement.query)
            except duckdb.Error as exc:
                raise SqlError(f"{exc}\n  in: {statement.query.strip()[:200]}") from exc
    finally:
        con.close()
    return 0


def _read_sql(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the SQL file {path!r}: {exc.strerror}") from exc


def _print_result(relation: Any, args: argparse.Namespace) -> None:
    if relation is None:
        return
    if args.format == "table":
        width = args.max_width or shutil.get_terminal_size(fallback=(120, 24)).columns
        relation.show(max_rows=args.max_rows, max_width=width)
        return
    columns = relation.columns
    rows = relation.fetchall()
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_plain(v) for v in row] for row in rows)
    else:
        print(
            json.dumps(
                [dict(zip(columns, row, strict=True)) for row in rows],
                default=_json_default,
                ensure_ascii=False,
            )
        )


def _plain(value: Any) -> Any:
    return json.dumps(value, default=_json_default) if isinstance(value, (list, tuple, dict)) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _bench(args: argparse.Namespace) -> int:
    from polyemb import bench, load

    encoder = _load(args)
    scenarios = {
        name: bench.make_scenario(name, args.texts, args.column, args.size) for name in args.scenarios
    }
    ours_name = f"polyemb-{encoder.precision}"
    extra: dict[str, Any] = {}
    sides: dict[str, bench.Side] = {}
    for name in args.against:
        if name == "sentence-transformers":
            sides[name] = bench.sentence_transformers_side(encoder)
        elif name == "duckdb":
            sides[name] = bench.duckdb_side(encoder, args.batch_size)
        elif name == "spark":
            sides[name], extra["spark"] = bench.spark_side(encoder, args.batch_size)
        elif name in bench.PEERS:
            timed = [text for texts in scenarios.values() for text in texts]
            calibration = bench.held_out(args.texts, args.column, timed, 300)
            sides[name], versions = bench.peer_side(encoder, name, args.peer_python, calibration)
            extra.setdefault("peers", {}).update(versions)
        elif name != ours_name:  # polyemb at another precision
            other = load(
                encoder.folder,
                device=encoder.device,
                precision=name.removeprefix("polyemb-"),
                max_seq_length=encoder.max_seq_length,
            )
            sides[name] = _encoding_side(other, args.batch_size)
    sides = {ours_name: _encoding_side(encoder, args.batch_size), **sides}

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    results = bench.run_bench(
        sides, scenarios, baseline=args.against[0], rounds=args.rounds, progress=progress
    )
    meta = {
        "cpu": bench.cpu_description(),
        "model": encoder.model_id,
        "device": str(encoder.device),
        "precision": encoder.precision,
        # sentence_transformers_side: fp32 on the CPU, the encoder's precision on a GPU.
        "reference_precision": "fp32" if encoder.device.type == "cpu" else encoder.precision,
        "against": args.against,
        "baseline": args.against[0],
        "rounds": args.rounds,
        "torch_threads": _torch_threads(),
        **extra,
    }
    if args.json:
        print(bench.to_json(meta, results))
    else:
        print(", ".join(f"{k}: {v}" for k, v in meta.items()))
        print(bench.format_table(results))
    return 0


def _encoding_side(encoder: Any, batch_size: int | None) -> Any:
    def run(texts: list[str]) -> Any:
        return encoder.encode(texts, batch_size=batch_size, show_progress=False)

    return run


def _eval_sts(args: argparse.Namespace) -> int:
    from polyemb import sts

    data = sts.read_sts(args.path)
    report = sts.evaluate(_load(args), data, batch_size=args.batch_size)
    print(sts.to_json(report) if args.json else sts.format_report(report))
    return 0


GATE_FAILED = 3
"""``polyemb check-precision``'s exit status when the precision fails the gate (1 is an error)."""


def _check_precision(args: argparse.Namespace) -> int:
    from polyemb import load, sts

    names = [Path(path).name for path in args.paths]
    if len(set(names)) < len(names):  # same names in different folders: show the paths
        names = list(args.paths)
    files = {name: sts.read_sts(path) for name, path in zip(names, args.paths, strict=True)}
    candidate = _load(args)
    if candidate.precision == args.reference:
        raise InvalidInputError(
            f"--precision gives {candidate.precision}, the same as --reference: nothing to compare"
        )
    reference = load(
        candidate.folder,
        device=candidate.device,
        precision=args.reference,
        max_seq_length=candidate.max_seq_length,
    )
    report = sts.check_precision(
        candidate,
        reference,
        files,
        max_drop=args.max_drop,
        min_mean_cosine=args.min_mean_cosine,
        batch_size=args.batch_size,
    )
    print(json.dumps(report) if args.json else sts.format_precision_check(report))
    return 0 if report["passed"] else GATE_FAILED


def _store(args: argparse.Namespace) -> int:
    from polyemb.store import MARKER, VectorStore

    folder = Path(args.path)
    if not (folder / MARKER).is_file() and not any(folder.glob("model=*")):
        raise InvalidInputError(
            f"{args.path} is not a polyemb vector store (no {MARKER}, no model=* folders)"
        )
    store = VectorStore(args.path, read_only=args.action == "stats")
    if args.action == "stats":
        print(store.stats().format())
    elif args.action == "compact":
        report = store.compact()
        print(
            f"compacted {args.path}: {report.files_before} files -> {report.files_after}, "
            f"{report.duplicates_dropped} duplicate entries dropped, "
            f"{report.temporary_removed} stale temporary files removed"
        )
    else:
        gc = store.gc(args.keep_model)
        print(
            f"kept {len(gc.kept)} model(s) {gc.kept}, dropped {len(gc.dropped)} {gc.dropped}, "
            f"freed {gc.bytes_freed / 2**20:.1f} MiB"
        )
    return 0


def _bench_memory(args: argparse.Namespace) -> int:
    from polyemb import bench
    from polyemb.loading import DEFAULT_MODEL, MODEL_ENV

    model = args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    texts = bench.make_scenario("a", args.texts, args.column, args.size)
    report = bench.footprints(model, args.precisions, texts, rounds=args.rounds)
    meta = {"cpu": bench.cpu_description(), "model": model, "texts": len(texts), "rounds": args.rounds}
    if args.json:
        print(json.dumps({**meta, "precisions": report}, indent=2))
        return 0
    print(", ".join(f"{k}: {v}" for k, v in meta.items()))
    print(f"{'precision':<10}{'texts/s':>9}{'load s':>8}{'MiB loaded':>12}{'MiB peak':>10}")
    for precision, figures in report.items():
        if "error" in figures:
            print(f"{precision:<10}  cannot run here: {figures['error']}")
            continue
        print(
            f"{precision:<10}{figures['per_s']:>9.1f}{figures['load_s']:>8.1f}"
            f"{figures['loaded_mib']:>12.0f}{figures['peak_mib']:>10.0f}"
        )
    return 0


def _bench_store(args: argparse.Namespace) -> int:
    from polyemb import bench, bench_store

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    meta: dict[str, Any] = {"cpu": bench.cpu_description(), "kind": args.kind}
    with tempfile.TemporaryDirectory(prefix="polyemb-bench-store-", dir=args.workdir) as workdir:
        if args.kind == "incremental":
            if not args.texts:
                raise InvalidInputError("give --texts: real sentences (a glob of STS CSVs, a .txt, ...)")
            from polyemb.encoder import load

            encoder = load(args.model, precision="fp32", device="cpu")  # resolves the default model once
            meta["model"] = encoder.provenance
            pool = bench.load_texts(args.texts, args.column)
            results = bench_store.incremental(
                str(encoder.folder),
                pool,
                rows=args.rows,
                edited=args.edited,
                appended=args.appended,
                engines=args.engines,
                workdir=Path(workdir),
                progress=progress,
            )
        else:
            results = bench_store.lookup(
                args.entries, args.keys, dim=args.dim, folder=Path(workdir), progress=progress
            )
    if args.json:
        print(json.dumps({**meta, "results": results}, indent=2))
    else:
        print(", ".join(f"{k}: {v}" for k, v in meta.items()))
        for result in results:
            print(json.dumps(result))
    return 0


def _bench_join(args: argparse.Namespace) -> int:
    from polyemb import bench, bench_join
    from polyemb.store import open_store

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    encoder = _load(args)
    store = open_store(args.store) if args.store else None
    meta: dict[str, Any] = {"cpu": bench.cpu_description(), "kind": args.kind, "model": encoder.provenance}
    if args.kind == "retrieval":
        if not args.data:
            raise InvalidInputError("give --data: a folder of aligned stsb-<lang>-dev.csv files")
        pairs = bench_join.parse_pairs(args.pairs)
        rows = bench_join.retrieval(encoder, Path(args.data), pairs, store)
        if args.json:
            print(json.dumps({**meta, "results": rows}, indent=2))
        else:
            print(", ".join(f"{k}: {v}" for k, v in meta.items()))
            print(f"{'direction':<12}{'sentences':>10}{'cosine':>9}{'margin':>9}{'csls':>9}  (P@1)")
            for row in rows:
                print(
                    f"{row['direction']:<12}{row['sentences']:>10}{row['cosine']:>9.4f}"
                    f"{row['margin']:>9.4f}{row['csls']:>9.4f}"
                )
        return 0
    if not args.texts:
        raise InvalidInputError("give --texts: real sentences (a glob of STS CSVs, a .txt, ...)")
    pool = bench.load_texts(args.texts, args.column)
    if args.kind == "duckdb":
        report = bench_join.duckdb_join(
            encoder, pool, args.size, args.k, store, vss=args.vss, progress=progress
        )
    else:
        report = bench_join.spark_join(
            encoder,
            pool,
            args.left,
            args.right,
            args.k,
            store,
            lsh_tables=args.lsh_tables,
            lsh_timeout=args.lsh_timeout,
            progress=progress,
        )
    print(json.dumps({**meta, **report}, indent=2 if args.json else None))
    return 0


def _engine_list(value: str) -> list[str]:
    from polyemb.bench_store import ENGINES

    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names or any(n not in ENGINES for n in names):
        raise argparse.ArgumentTypeError(f"engines are a comma-separated subset of {','.join(ENGINES)}")
    return names


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


BENCH_SIDES = (
    "sentence-transformers",
    "st-onnx",
    "st-onnx-int8",
    "st-openvino",
    "st-openvino-int8",
    "polyemb-fp32",
    "polyemb-bf16",
    "polyemb-int8",
    "polyemb-fp16",
    "duckdb",
    "spark",
)


def _side_list(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in BENCH_SIDES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--against is a comma-separated list of {', '.join(BENCH_SIDES)}; got {value!r}"
        )
    return names


def _precision_list(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names or any(n not in WEIGHT_PRECISIONS for n in names):
        raise argparse.ArgumentTypeError(
            f"precisions are a comma-separated subset of {','.join(WEIGHT_PRECISIONS)}"
        )
    return names


def _scenario_list(value: str) -> list[str]:
    from polyemb.bench import SCENARIOS

    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are a comma-separated subset of {','.join(SCENARIOS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed for documentation tools and tests."""
    parser = argparse.ArgumentParser(
        prog="polyemb",
        description="Multilingual sentence embeddings and semantic similarity for tabular data.",
    )
    parser.add_argument("--version", action="version", version=f"polyemb {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    model = _model_options()

    embed = commands.add_parser(
        "embed",
        parents=[model],
        help="add a vector column to a CSV or Parquet file, written as Parquet",
        description=(
            "Read INPUT (CSV, TSV or Parquet) in chunks, encode the text column, and write every "
            "input column plus a fixed-size float32 vector column to OUTPUT (Parquet). NULL texts "
            "(empty unquoted CSV cells) get NULL vectors. OUTPUT appears only when complete."
        ),
    )
    embed.add_argument("input", help="a .csv, .tsv or .parquet file (compressed CSV works too)")
    embed.add_argument("--column", "-c", required=True, help="the text column to encode")
    embed.add_argument("--output", "-o", required=True, help="the Parquet file to write")
    embed.add_argument(
        "--vector-column", default="embedding", help="name of the new column (default: embedding)"
    )
    embed.add_argument("--chunk-rows", type=int, default=16_384, help="rows read and encoded at a time")
    embed.add_argument(
        "--store",
        metavar="DIR",
        help="a vector store: texts it holds for this model are read, not embedded; new ones are added",
    )
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.set_defaults(run=_embed)

    similarity = commands.add_parser(
        "similarity",
        parents=[model],
        help="cosine similarity of two texts",
        description="Print the cosine similarity of two texts (also across languages).",
    )
    similarity.add_argument("text_a")
    similarity.add_argument("text_b")
    similarity.add_argument("--json", action="store_true", help="print a JSON object")
    similarity.set_defaults(run=_similarity)

    sql = commands.add_parser(
        "sql",
        parents=[model],
        help="run SQL on embedded DuckDB with embed() and semantic_similarity()",
        description=(
            "Run SQL on an embedded DuckDB (in memory, or --db FILE) with polyemb's functions "
            "registered: embed(text) -> FLOAT[dim], semantic_similarity(a, b), embedding_model(), "
            "embedding_cache_stats(), embedding_cache_clear(). Files named in the query are read by "
            "DuckDB itself ('data.csv', read_parquet('*.parquet')). Each statement that returns rows "
            "is printed."
        ),
    )
    sql.add_argument("query", nargs="?", help="the SQL (or use -f)")
    sql.add_argument("-f", "--file", help="read the SQL from this file")
    sql.add_argument("--db", help="a DuckDB database file (default: in memory)")
    out = sql.add_mutually_exclusive_group()
    out.add_argument("--csv", dest="format", action="store_const", const="csv", help="print CSV")
    out.add_argument(
        "--json", dest="format", action="store_const", const="json", help="print a JSON array of rows"
    )
    sql.set_defaults(format="table")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown in table output (default 40)")
    sql.add_argument(
        "--max-width", type=int, default=None, help="table width in characters (default: the terminal's)"
    )
    sql.add_argument(
        "--extension",
        action="append",
        default=[],
        metavar="NAME",
        help="load a DuckDB extension first, e.g. --extension vss (repeatable)",
    )
    sql.add_argument("--cache-mb", type=float, default=None, help="embedding cache size in MiB (default 256)")
    sql.add_argument(
        "--store", metavar="DIR", help="a vector store behind embed(): embeds only texts it lacks"
    )
    sql.add_argument(
        "--index",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "QUERY"),
        help=(
            "hold QUERY's rows (columns key, and text or vector) as vectors and register "
            "NAME_nearest(text, k) -> STRUCT(key, score)[], for semantic joins (repeatable)"
        ),
    )
    sql.add_argument(
        "--index-score", choices=SCORES, default="cosine", help="how --index scores pairs (default cosine)"
    )
    sql.add_argument(
        "--index-source",
        metavar="QUERY",
        help="margin/csls: SQL giving the texts that will be matched against --index",
    )
    sql.set_defaults(run=_sql)

    bench = commands.add_parser(
        "bench",
        parents=[model],
        help="time polyemb against sentence-transformers (torch, ONNX, OpenVINO), DuckDB or Spark",
        description=(
            "Encode the same texts with polyemb and with each reference in one run, in rotating "
            "order, for several rounds; print texts/s for each, the median ratio against the "
            "first reference (its time / the side's time), the mean and smallest row cosine to "
            "the first reference's vectors, and peak memory. Scenarios: a = distinct sentences, "
            "b = each text 10 times in random order, c = long paragraphs."
        ),
    )
    bench.add_argument(
        "--against",
        type=_side_list,
        default=["sentence-transformers"],
        help=(
            "comma-separated references, the first one the baseline of every ratio: "
            "sentence-transformers (torch, fp32 on the CPU; the default), st-onnx, st-onnx-int8, "
            "st-openvino, st-openvino-int8 (sentence-transformers' backends, run in --peer-python), "
            "polyemb-fp32, polyemb-bf16, polyemb-int8, polyemb-fp16 (polyemb at another precision), "
            "duckdb (SELECT embed(t)), spark (the UDF on local[2])"
        ),
    )
    bench.add_argument(
        "--peer-python",
        default=sys.executable,
        help=(
            "the Python that runs the st-* references (default: this one). Their extras need "
            "sentence-transformers 5.x; make one with: python3 -m venv .venv-peers && "
            ".venv-peers/bin/pip install torch==2.13.0 'sentence-transformers[onnx,openvino]'"
        ),
    )
    bench.add_argument(
        "--texts", help="texts file: header-less STS CSV, CSV/Parquet with --column, or one per line"
    )
    bench.add_argument("--column", help="the text column of --texts")
    bench.add_argument(
        "--scenarios", type=_scenario_list, default=["a", "b", "c"], help="e.g. a,b (default a,b,c)"
    )
    bench.add_argument("--size", type=int, default=2000, help="rows per scenario (c uses size/10 paragraphs)")
    bench.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    bench.add_argument("--json", action="store_true", help="print a JSON report")
    bench.set_defaults(run=_bench)

    eval_sts = commands.add_parser(
        "eval-sts",
        parents=[model],
        help="Pearson and Spearman of cosine similarity against gold STS scores",
        description=(
            "Evaluate a model on STS data: per task, the Pearson and Spearman correlation of the "
            "cosine similarity with the gold score, and the Fisher-z mean of the per-task Spearman. "
            "PATH is CSV or Parquet with columns sentence1, sentence2, score and an optional task "
            "(e.g. en;es), or a header-less three-column CSV. Scores may be on any scale."
        ),
    )
    eval_sts.add_argument("path", help="the STS file")
    eval_sts.add_argument(
        "--json",
        action="store_true",
        help='print {"model", "tasks": {task: {pearson, spearman, n}}, "mean_spearman"}',
    )
    eval_sts.set_defaults(run=_eval_sts)

    check = commands.add_parser(
        "check-precision",
        parents=[model],
        help="the quality gate of a faster precision (int8, bf16) against fp32 on STS files",
        description=(
            "Encode every STS file with --precision and with --reference (fp32), and compare: "
            "each file's Spearman (it may drop by at most --max-drop) and the cosine between the "
            "two vectors of each sentence (the mean over all files' sentences must be at least "
            f"--min-mean-cosine). Prints a table ending in PASSED or FAILED; exits {GATE_FAILED} "
            "when the precision fails the gate, 1 on an error."
        ),
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="STS files, as eval-sts reads them")
    check.add_argument("--reference", choices=WEIGHT_PRECISIONS, default="fp32", help="default fp32")
    check.add_argument("--max-drop", type=float, default=0.005, help="largest Spearman drop (0.005)")
    check.add_argument("--min-mean-cosine", type=float, default=0.99, help="smallest mean row cosine (0.99)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_check_precision)

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
        "--precisions", type=_precision_list, default=["fp32", "bf16", "int8"], help="default fp32,bf16,int8"
    )
    bench_memory.add_argument("--texts", help="texts file (as bench --texts); default: generated sentences")
    bench_memory.add_argument("--column", help="the text column of --texts")
    bench_memory.add_argument("--size", type=int, default=1000, help="texts encoded (1,000)")
    bench_memory.add_argument("--rounds", type=int, default=2, help="rounds (2)")
    bench_memory.add_argument("--json", action="store_true", help="print a JSON report")
    bench_memory.set_defaults(run=_bench_memory)

    bench_store = commands.add_parser(
        "bench-store",
        parents=[model],
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
    bench_store.add_argument("--texts", help="incremental: real sentences (as bench --texts)")
    bench_store.add_argument("--column", help="the text column of --texts")
    bench_store.add_argument("--rows", type=int, default=200_000, help="incremental: rows a day (200,000)")
    bench_store.add_argument("--edited", type=float, default=0.02, help="incremental: share edited (0.02)")
    bench_store.add_argument(
        "--appended", type=float, default=0.02, help="incremental: share appended (0.02)"
    )
    bench_store.add_argument(
        "--engines",
        type=_engine_list,
        default=["cli", "duckdb", "spark"],
        help="incremental: e.g. cli,duckdb",
    )
    bench_store.add_argument("--entries", type=int, default=5_000_000, help="lookup: store size (5,000,000)")
    bench_store.add_argument("--keys", type=int, default=200_000, help="lookup: keys looked up (200,000)")
    bench_store.add_argument("--dim", type=int, default=384, help="lookup: vector length (384)")
    bench_store.add_argument("--workdir", help="where the stores and files go (default: the temp folder)")
    bench_store.add_argument("--json", action="store_true", help="print a JSON report")
    bench_store.set_defaults(run=_bench_store)

    bench_join = commands.add_parser(
        "bench-join",
        parents=[model],
        help="translation retrieval P@1 (cosine, margin, CSLS), and join speed in DuckDB and Spark",
        description=(
            "retrieval: P@1 of translation retrieval on aligned stsb-<lang>-dev.csv files (--data), per "
            "direction, for cosine, margin and CSLS. duckdb: --size x --size rows, top -k, the index "
            "function against array_cosine_similarity's cross join (and the vss HNSW index with --vss). "
            "spark: --left x --right rows on local[2], semantic_join against Spark ML's LSH "
            "approxSimilarityJoin, with LSH's recall of the exact top-k. Vectors go through --store."
        ),
    )
    bench_join.add_argument("kind", choices=["retrieval", "duckdb", "spark"])
    bench_join.add_argument("--data", help="retrieval: folder of stsb-<lang>-dev.csv files")
    bench_join.add_argument(
        "--pairs", default="en-de,en-es,en-fr,en-ru,en-zh,de-fr", help="retrieval: language pairs"
    )
    bench_join.add_argument("--texts", help="duckdb, spark: real sentences (as bench --texts)")
    bench_join.add_argument("--column", help="the text column of --texts")
    bench_join.add_argument("--size", type=int, default=20_000, help="duckdb: rows a side (20,000)")
    bench_join.add_argument("--left", type=int, default=200_000, help="spark: left rows (200,000)")
    bench_join.add_argument("--right", type=int, default=50_000, help="spark: right rows (50,000)")
    bench_join.add_argument("-k", type=int, default=5, help="matches per left row (5)")
    bench_join.add_argument("--store", metavar="DIR", help="a vector store for the texts' vectors")
    bench_join.add_argument("--vss", action="store_true", help="duckdb: also the vss HNSW index")
    bench_join.add_argument("--lsh-tables", type=int, default=3, help="spark: LSH hash tables (3)")
    bench_join.add_argument(
        "--lsh-timeout", type=float, default=1800, help="spark: seconds before LSH's join is cancelled (1800)"
    )
    bench_join.add_argument("--json", action="store_true", help="print a JSON report")
    bench_join.set_defaults(run=_bench_join)

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
    stats = actions.add_parser("stats", help="entries per model and size on disk")
    stats.add_argument("path", metavar="DIR")
    compact = actions.add_parser("compact", help="merge small files, one entry per text")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    run: _Command = args.run
    try:
        return run(args)
    except PolyembError as exc:
        print(f"polyemb {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("polyemb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
