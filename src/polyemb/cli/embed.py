"""``polyemb embed`` (a vector column for a file) and ``polyemb similarity`` (two texts)."""

from __future__ import annotations

import argparse
import json
import sys

from polyemb.cli.shared import (
    Subparsers,
    add_store_options,
    load_encoder,
    model_options,
    positive_int,
    store_of,
)
from polyemb.tables import CHUNK_ROWS

__all__ = ["add_parser"]


def add_parser(commands: Subparsers) -> None:
    """Add ``embed`` and ``similarity`` to the ``commands`` subparsers."""
    embed = commands.add_parser(
        "embed",
        parents=[model_options()],
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
        "--vector-column", default="embedding", help="name of the new column (default: %(default)s)"
    )
    embed.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=CHUNK_ROWS,
        help="rows read and encoded at a time (default: %(default)s)",
    )
    add_store_options(
        embed, "a vector store: texts it holds for this model are read, not embedded; new ones are added"
    )
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.set_defaults(run=_embed)

    similarity = commands.add_parser(
        "similarity",
        parents=[model_options()],
        help="cosine similarity of two texts",
        description="Print the cosine similarity of two texts (also across languages).",
    )
    similarity.add_argument("text_a")
    similarity.add_argument("text_b")
    similarity.add_argument("--json", action="store_true", help="print a JSON object")
    similarity.set_defaults(run=_similarity)


def _embed(args: argparse.Namespace) -> int:
    from polyemb.store import StoredEncoder, embedder_for
    from polyemb.tables import embed_file

    store = store_of(args)
    source = embedder_for(load_encoder(args), store)
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
        # Counted chunk by chunk: a text seen in an earlier chunk is looked up again, and found.
        chunked = report.rows > args.chunk_rows
        within = f" (distinct within each chunk of {args.chunk_rows} rows)" if chunked else ""
        print(
            f"store {args.store}: {stats.looked_up} texts looked up{within}, {stats.found} found, "
            f"{stats.embedded} embedded, {stats.written} written",
            file=sys.stderr,
        )
    return 0


def _similarity(args: argparse.Namespace) -> int:
    from polyemb.similarity import cosine

    encoder = load_encoder(args)
    vectors = encoder.encode([args.text_a, args.text_b], batch_size=args.batch_size)
    score = float(cosine(vectors[0], vectors[1])[0])
    if args.json:
        print(json.dumps({"model": encoder.model_id, "similarity": score}))
    else:
        print(f"{score:.6f}")
    return 0
