"""``polyemb eval-sts`` (a model on STS data) and ``polyemb check-precision`` (the quality gate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from polyemb.cli.shared import Subparsers, bounded_float, load_encoder, model_options
from polyemb.errors import InvalidInputError
from polyemb.options import WEIGHT_PRECISIONS
from polyemb.sts import MAX_SPEARMAN_DROP, MIN_MEAN_COSINE

__all__ = ["GATE_FAILED", "add_parser"]

GATE_FAILED = 3
"""``polyemb check-precision``'s exit status when the precision fails the gate (1 is an error)."""


def add_parser(commands: Subparsers) -> None:
    """Add ``eval-sts`` and ``check-precision`` to the ``commands`` subparsers."""
    eval_sts = commands.add_parser(
        "eval-sts",
        parents=[model_options()],
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
        parents=[model_options()],
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
    check.add_argument("--reference", choices=WEIGHT_PRECISIONS, default="fp32", help="default %(default)s")
    check.add_argument(
        "--max-drop",
        type=bounded_float(0, 2),
        default=MAX_SPEARMAN_DROP,
        help="largest Spearman drop (%(default)s)",
    )
    check.add_argument(
        "--min-mean-cosine",
        type=bounded_float(-1, 1),
        default=MIN_MEAN_COSINE,
        help="smallest mean row cosine (%(default)s)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_check_precision)


def _eval_sts(args: argparse.Namespace) -> int:
    from polyemb import sts

    data = sts.read_sts(args.path)
    report = sts.evaluate(load_encoder(args), data, batch_size=args.batch_size)
    print(sts.to_json(report) if args.json else sts.format_report(report))
    return 0


def _check_precision(args: argparse.Namespace) -> int:
    from polyemb import sts
    from polyemb.encoder import load

    names = [Path(path).name for path in args.paths]
    if len(set(names)) < len(names):  # same names in different folders: show the paths
        names = list(args.paths)
    files = {name: sts.read_sts(path) for name, path in zip(names, args.paths, strict=True)}
    candidate = load_encoder(args)
    if candidate.precision == args.reference:
        raise InvalidInputError(
            f"--precision gives {candidate.precision}, the same as --reference: nothing to compare"
        )
    reference = load(
        candidate.folder,
        device=candidate.device,
        precision=args.reference,
        max_seq_length=candidate.max_seq_length,
        long_texts=candidate.long_texts,
        stride=candidate.stride,
    )
    report = sts.check_precision(
        candidate,
        reference,
        files,
        max_drop=args.max_drop,
        min_mean_cosine=args.min_mean_cosine,
        batch_size=args.batch_size,
    )
    print(sts.to_json(report) if args.json else sts.format_precision_check(report))
    return 0 if report["passed"] else GATE_FAILED
