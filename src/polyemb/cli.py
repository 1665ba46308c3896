"""The ``polyemb`` command: embed files, compare texts, and (with extras) run SQL."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from polyemb import __version__
from polyemb.errors import PolyembError

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
        choices=["auto", "fp32", "fp16", "bf16"],
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
    from polyemb.tables import embed_file

    encoder = _load(args)
    report = embed_file(
        encoder,
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
    return 0


def _similarity(args: argparse.Namespace) -> int:
    encoder = _load(args)
    vectors = encoder.encode([args.text_a, args.text_b], batch_size=args.batch_size)
    score = float(vectors[0] @ vectors[1])
    if args.json:
        print(json.dumps({"model": encoder.model_id, "similarity": score}))
    else:
        print(f"{score:.6f}")
    return 0


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
