"""What the commands share: the model options, loading the model, and comma-separated choices."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from polyemb.options import LONG_TEXTS, PRECISIONS

if TYPE_CHECKING:
    from polyemb.encoder import Encoder
    from polyemb.store import VectorStore

__all__ = [
    "MODEL_HELP",
    "Command",
    "Subparsers",
    "add_store_options",
    "comma_list",
    "load_encoder",
    "bounded_float",
    "model_options",
    "non_negative_int",
    "positive_int",
    "print_meta",
    "print_progress",
    "store_of",
]

Command = Callable[[argparse.Namespace], int]
"""A command's handler: the parsed arguments in, the exit status out."""
# What add_subparsers returns, which argparse does not name publicly.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


MODEL_HELP = "hub id or local folder (default: $POLYEMB_MODEL, else the multilingual default model)"


def model_options() -> argparse.ArgumentParser:
    """A parent parser with the options of every command that loads a model."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        "--model",
        "-m",
        default=None,
        help=MODEL_HELP,
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="weight precision (default: fp32 on CPU, fp16 on GPU)",
    )
    group.add_argument(
        "--max-seq-length", type=positive_int, default=None, help="tokens per text (default: the model's)"
    )
    group.add_argument(
        "--long-texts",
        default="truncate",
        choices=LONG_TEXTS,
        help="a text over --max-seq-length tokens: truncate it, or the mean of its windows (%(default)s)",
    )
    group.add_argument(
        "--stride",
        type=int,
        default=None,
        help="tokens consecutive windows share (default: a quarter of the window)",
    )
    group.add_argument("--revision", default=None, help="hub branch, tag or commit (e.g. refs/pr/3)")
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="texts per forward pass (default: by token budget)",
    )
    return parent


def load_encoder(args: argparse.Namespace) -> Encoder:
    """The Encoder that :func:`model_options`' arguments name."""
    from polyemb.encoder import load

    return load(
        args.model,
        device=args.device,
        precision=args.precision,
        max_seq_length=args.max_seq_length,
        revision=args.revision,
        long_texts=args.long_texts,
        stride=args.stride,
    )


def add_store_options(parser: argparse.ArgumentParser, help: str) -> None:
    """``--store DIR`` (described by ``help``) and what to do when it cannot be written."""
    parser.add_argument("--store", metavar="DIR", help=help)
    parser.add_argument(
        "--store-on-write-error",
        choices=("raise", "warn"),
        default="raise",
        help="a store that cannot be written (a shared, read-only one): fail (raise, the default) or "
        "warn once and use it read-only, new vectors computed but not stored (warn)",
    )


def store_of(args: argparse.Namespace) -> VectorStore | None:
    """The store that ``--store`` names, opened as ``--store-on-write-error`` says; None without one."""
    from polyemb.store import open_store

    return open_store(args.store, on_write_error=args.store_on_write_error) if args.store else None


def positive_int(value: str) -> int:
    """An argparse ``type``: an int of at least 1 (a count or a size), else a usage error."""
    return _whole(value, 1, "a positive whole number")


def non_negative_int(value: str) -> int:
    """An argparse ``type``: an int of at least 0 (where 0 means none, all or the default)."""
    return _whole(value, 0, "a whole number of at least 0")


def _whole(value: str, least: int, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return number


def bounded_float(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``low`` to ``high`` (above ``low`` if ``low_open``)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        inside = (low < number if low_open else low <= number) and number <= high
        if not inside:  # NaN is never inside
            bound = f"above {low:g}" if low_open else f"from {low:g}"
            raise argparse.ArgumentTypeError(f"expected a number {bound} to {high:g}, got {value!r}")
        return number

    return parse


def comma_list(what: str, choices: Sequence[str], *, ordered: bool = False) -> Callable[[str], list[str]]:
    """An argparse ``type``: ``"a,b"`` -> ``["a", "b"]``, each one of ``choices``, each once.

    ``ordered`` says that the order means something (the error then asks for a list, not a
    subset).
    """
    kind = "list" if ordered else "subset"

    def parse(value: str) -> list[str]:
        names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        if not names or any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(
                f"{what} is a comma-separated {kind} of {','.join(choices)}; got {value!r}"
            )
        return names

    return parse


def print_progress(line: str) -> None:
    """A long command's progress, on stderr (stdout holds the report)."""
    print(line, file=sys.stderr)


def print_meta(meta: dict[str, Any]) -> None:
    """A report's facts on one line: ``key: value, ...``."""
    print(", ".join(f"{key}: {value}" for key, value in meta.items()))
