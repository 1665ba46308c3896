"""``polyemb bench-long``: long-document retrieval (truncate, mean, chunk max-sim) and the cost of chunks.

The work is done in :mod:`polyemb.bench.long`; here are the options and the printing.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from polyemb.cli.shared import (
    Subparsers,
    load_encoder,
    model_options,
    non_negative_int,
    positive_int,
    print_meta,
    print_progress,
)
from polyemb.errors import InvalidInputError

__all__ = ["add_parser"]


def add_parser(commands: Subparsers) -> None:
    """Add ``bench-long`` to the ``commands`` subparsers."""
    bench_long = commands.add_parser(
        "bench-long",
        parents=[model_options()],
        help="long-document retrieval recall of truncate, mean and chunk max-sim, and chunking's cost",
        description=(
            "Documents of 6 to 14 sentences of one language built from stsb-<lang>-<split>.csv in --data: "
            "each pair scored 4 or more puts its first sentence at a random position among others, and "
            "its second sentence is the query. Prints recall@1 and @10 of finding the document with "
            "truncate, mean (long_texts='mean') and max-sim over encode_chunks, split by whether the "
            "target lies inside the first window (max-seq-length tokens), across its end or beyond it; "
            "then the time per token of encode (mean) and encode_chunks against plain encoding of the "
            "same windows as short texts, in the same run."
        ),
    )
    bench_long.add_argument("--data", required=True, help="folder of stsb-<lang>-<split>.csv files")
    bench_long.add_argument("--langs", default="en,de,es,zh", help="languages (%(default)s)")
    bench_long.add_argument("--split", default="train", help="the files' split (%(default)s)")
    bench_long.add_argument(
        "--docs", type=positive_int, default=500, help="documents (and queries) a language (%(default)s)"
    )
    bench_long.add_argument(
        "--seed", type=int, default=0, help="where targets go, which sentences fill (%(default)s)"
    )
    bench_long.add_argument(
        "--cost-docs",
        type=non_negative_int,
        default=300,
        help="documents of the first language timed for the cost (%(default)s; 0: none)",
    )
    bench_long.add_argument(
        "--rounds", type=positive_int, default=3, help="cost: rounds in turns (%(default)s)"
    )
    bench_long.add_argument("--json", action="store_true", help="print a JSON report")
    bench_long.set_defaults(run=_bench_long)


def _bench_long(args: argparse.Namespace) -> int:
    import torch

    from polyemb._platform import cpu_description
    from polyemb.bench import long
    from polyemb.encoder import load

    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    if not langs or args.docs < 1:
        raise InvalidInputError("give --langs (e.g. en,de) and --docs of at least 1")
    truncate = load_encoder(argparse.Namespace(**{**vars(args), "long_texts": "truncate"}))
    mean = load(
        truncate.folder,
        device=truncate.device,
        precision=truncate.precision,
        max_seq_length=truncate.max_seq_length,
        long_texts="mean",
        stride=truncate.stride,
    )
    meta: dict[str, Any] = {
        "cpu": cpu_description(),
        "model": truncate.provenance,
        "max_seq_length": truncate.max_seq_length,
        "stride": truncate.stride,
        "device": str(truncate.device),
        "torch_threads": torch.get_num_threads(),
    }
    # Truncating is what the benchmark measures: no warning per call that texts were truncated
    # (for this command only: a caller's logging is left as it was).
    encoder_log = logging.getLogger("polyemb.encoder")
    level = encoder_log.level
    encoder_log.setLevel(logging.ERROR)
    try:
        rows: list[dict[str, Any]] = []
        first: list[str] = []
        for lang in langs:
            print_progress(f"bench-long: {lang}")
            documents = long.make_documents(
                Path(args.data) / f"stsb-{lang}-{args.split}.csv", lang, args.docs, args.seed
            )
            rows += long.retrieval(truncate, mean, documents)
            first = first or documents.docs
        cost = (
            long.chunk_cost(truncate, mean, first[: args.cost_docs], rounds=args.rounds)
            if args.cost_docs
            else None
        )
    finally:
        encoder_log.setLevel(level)
    if args.json:
        print(json.dumps({**meta, "retrieval": rows, "cost": cost}, indent=2))
        return 0
    print_meta(meta)
    print(long.format_retrieval(rows))
    if cost is not None:
        print(long.format_cost(cost))
    return 0
