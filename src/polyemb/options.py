"""The choices polyemb's functions take, as types, and the checks of names users give.

Each set of choices is one ``Literal``: the type checker, the CLI's ``choices``, the lake jobs'
options and the error messages all read it, so they cannot drift apart. Nothing here imports
torch or an engine, so ``polyemb --help`` stays fast.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Literal, get_args

from polyemb.errors import InvalidInputError

__all__ = [
    "DELIVERIES",
    "JOIN_HOWS",
    "KEEPS",
    "LONG_TEXTS",
    "METHODS",
    "PRECISIONS",
    "SCORES",
    "WEIGHT_PRECISIONS",
    "Delivery",
    "JoinHow",
    "Keep",
    "LongTexts",
    "Method",
    "Precision",
    "Score",
    "WeightPrecision",
    "check_choice",
    "check_keep",
    "check_mib",
    "check_positive_int",
    "check_sql_name",
    "check_sql_prefix",
]

WeightPrecision = Literal["fp32", "fp16", "bf16", "int8"]
"""What the weights of a loaded model are computed in (``Encoder.precision``)."""
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
"""What ``load`` takes: a weight precision, or ``"auto"`` (fp32 on CPU, fp16 on GPUs)."""
Delivery = Literal["auto", "broadcast", "artifact", "path"]
"""How Spark executors get the model (see :mod:`polyemb.spark`)."""
Score = Literal["cosine", "margin", "csls"]
"""How a join scores a pair: plain cosine, or relative to both sides' neighbourhoods."""
JoinHow = Literal["inner", "left"]
"""Which left rows a join keeps: only matched ones, or every one (unmatched with NULLs)."""
LongTexts = Literal["truncate", "mean"]
"""What a text longer than ``max_seq_length`` tokens becomes: its first window's vector, or the
token-weighted mean of all its windows' vectors (see :mod:`polyemb.windows`)."""
Method = Literal["exact", "ivf"]
"""How a join or near-duplicate search finds neighbours: every pair scored, or inverted lists
(approximate; its settings are :class:`polyemb.ivf.Ivf`)."""
Keep = Literal["first"]
"""Which row of a group of near-duplicates is kept when the others are dropped."""

WEIGHT_PRECISIONS: tuple[WeightPrecision, ...] = get_args(WeightPrecision)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
DELIVERIES: tuple[Delivery, ...] = get_args(Delivery)
SCORES: tuple[Score, ...] = get_args(Score)
JOIN_HOWS: tuple[JoinHow, ...] = get_args(JoinHow)
LONG_TEXTS: tuple[LongTexts, ...] = get_args(LongTexts)
METHODS: tuple[Method, ...] = get_args(Method)
KEEPS: tuple[Keep, ...] = get_args(Keep)

_SQL_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise an error that lists them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_keep(keep: Any) -> Keep:
    """Return ``keep`` if it is one of :data:`KEEPS`, else raise an error that lists them."""
    chosen: Keep = check_choice("keep", keep, KEEPS)
    return chosen


def is_int(value: Any) -> bool:
    """Whether ``value`` is a whole number: an int or a numpy integer (as read from a frame), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is a whole number >= 1 (:func:`is_int`), else an error naming ``name``."""
    if not is_int(value) or value < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_mib(name: str, value: Any, *, zero: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number of MiB above 0 (or 0, where ``zero``).

    A size that means nothing (a string, NaN, a negative) is an error here, not a TypeError
    deep in the work or a setting that silently does nothing.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = "a number of MiB, 0 or more" if zero else "a number of MiB above 0"
        raise InvalidInputError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def check_sql_name(what: str, name: Any) -> str:
    """Check a name that becomes part of SQL function names: an SQL identifier (as for prefixes)."""
    if not isinstance(name, str) or not _SQL_PREFIX.fullmatch(name):
        raise InvalidInputError(
            f"{what} must be an SQL identifier (an ASCII letter or _, then ASCII letters, digits or _), "
            f"got {name!r}"
        )
    return name


def check_sql_prefix(prefix: Any) -> str:
    """Check a prefix put before SQL function names: empty, or the start of an SQL identifier.

    The same rule for DuckDB and Spark SQL: an ASCII letter or ``_``, then ASCII letters, digits
    or ``_``, so every prefixed name can be written without quotes in either engine.
    """
    if not isinstance(prefix, str) or (prefix and not _SQL_PREFIX.fullmatch(prefix)):
        raise InvalidInputError(
            f"prefix must be empty or start an SQL identifier (an ASCII letter or _, then ASCII "
            f"letters, digits or _), got {prefix!r}"
        )
    return prefix
