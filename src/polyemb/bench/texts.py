"""The benchmarks' input: texts from files or generated, and the scenarios drawn from them."""

from __future__ import annotations

import glob
import os
import random
from collections.abc import Sequence
from pathlib import Path

from polyemb.arrow import texts_from_arrow
from polyemb.errors import InvalidInputError
from polyemb.tables import read_table, table_format
from polyemb.testing import SAMPLE_SENTENCES

__all__ = [
    "SCENARIOS",
    "held_out",
    "load_texts",
    "make_scenario",
    "paired_texts",
    "sample_texts",
    "scenario_texts",
]

SCENARIOS = {
    "a": "distinct real sentences of STS length",
    "b": "a column where each text appears 10 times, in random order",
    "c": "long paragraphs (truncated at max_seq_length)",
}


def load_texts(path: str | os.PathLike[str], column: str | None = None) -> list[str]:
    """Texts from table files (read by :func:`polyemb.tables.read_table`), NULL and blank ones dropped.

    ``column`` names the text column of a CSV, TSV or Parquet file. Without it: a ``.txt`` file
    gives its lines, and a CSV or TSV is read as an STS file (``sentence1``, ``sentence2``,
    ``score``, with or without a header) giving both sentences of each pair. ``path`` may be a
    glob pattern (``data/*-train.csv``): the files' texts are concatenated.

    Raises:
        InvalidInputError: No such file, an unknown format, or a missing column.
    """
    pattern = os.fspath(path)
    if any(char in pattern for char in "*?["):
        files = sorted(glob.glob(pattern))
        if not files:
            raise InvalidInputError(f"no file matches {pattern!r}")
        return [text for file in files for text in load_texts(file, column)]
    kind = table_format(Path(pattern))
    if column is not None:
        columns: tuple[str, ...] = (column,)
    elif kind == "parquet":
        raise InvalidInputError("--column is needed to read texts from Parquet")
    elif kind == "lines":
        columns = ("text",)
    else:
        columns = ("sentence1", "sentence2")
    table = read_table(path, columns, headerless=None if column else ("sentence1", "sentence2", "score"))
    texts = [texts_from_arrow(table.column(name), name=f"column {name!r}") for name in columns]
    # Row by row (sentence1, sentence2 of a pair together), as the STS layout is read.
    return [text for row in zip(*texts, strict=True) for text in row if text and text.strip()]


def _generated_sentences(count: int, seed: int) -> list[str]:
    """Distinct sentences of 8 to 20 words drawn from real multilingual sentences' words."""
    rng = random.Random(seed)
    words = [w for sentence in SAMPLE_SENTENCES for w in sentence.split()]
    out: dict[str, None] = {}
    while len(out) < count:
        out[" ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))] = None
    return list(out)


def scenario_texts(scenario: str, pool: Sequence[str], size: int, seed: int = 0) -> list[str]:
    """The input of one scenario, ``size`` texts long, drawn from ``pool``.

    Raises:
        InvalidInputError: An unknown scenario, or too few distinct texts in ``pool``.
    """
    rng = random.Random(seed)
    distinct = list(dict.fromkeys(pool))
    rng.shuffle(distinct)
    if scenario == "a":
        return _take(distinct, size)
    if scenario == "b":
        base = _take(distinct, max(1, size // 10))
        repeated = [text for text in base for _ in range(10)]
        rng.shuffle(repeated)
        return repeated
    if scenario == "c":
        paragraphs = [" ".join(distinct[start : start + 12]) for start in range(0, len(distinct), 12)]
        return _take(paragraphs, max(1, size // 10))
    raise InvalidInputError(f"unknown scenario {scenario!r}; choose from {sorted(SCENARIOS)}")


def _take(texts: list[str], size: int) -> list[str]:
    if len(texts) < size:
        raise InvalidInputError(
            f"the texts give {len(texts)} items, fewer than the {size} asked for; pass --size"
        )
    return texts[:size]


def make_scenario(scenario: str, texts_file: str | None, column: str | None, size: int) -> list[str]:
    """A scenario's texts from ``texts_file`` if given, else generated ones."""
    pool = (
        load_texts(texts_file, column)
        if texts_file
        else _generated_sentences(max(size, 12 * size // 10 + 12), 0)
    )
    return scenario_texts(scenario, pool, size)


def held_out(texts_file: str | None, column: str | None, exclude: Sequence[str], count: int) -> list[str]:
    """Up to ``count`` texts of ``texts_file`` (or generated ones) that are not in ``exclude``.

    For calibrating a peer's int8 export on other texts than the ones it is timed and compared on.
    """
    used = set(exclude)
    pool = load_texts(texts_file, column) if texts_file else _generated_sentences(len(used) + count, 1)
    return [text for text in dict.fromkeys(pool) if text not in used][:count]


def sample_texts(pool: Sequence[str], count: int, seed: int, *, distinct: bool) -> list[str]:
    """``count`` texts of ``pool`` drawn at random: each at most once if ``distinct``, else with repeats.

    Raises:
        InvalidInputError: ``distinct`` and fewer than ``count`` distinct texts in ``pool``.
    """
    texts = list(dict.fromkeys(pool))
    rng = random.Random(seed)
    if distinct:
        if len(texts) < count:
            raise InvalidInputError(f"the texts give {len(texts)} distinct sentences, fewer than {count}")
        return rng.sample(texts, count)
    return [rng.choice(texts) for _ in range(count)]


def paired_texts(pattern: str, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct texts, each two distinct sentences of one file joined by a space.

    Each text draws a file at random, then two of its distinct sentences (seeded), so the texts
    cluster by topic and language as real text does, unlike random vectors. With the STS files
    (``stsb-*-*.csv``) and seed 0 these are the million texts of the ivf figures in
    ``docs/joins.md``.

    Raises:
        InvalidInputError: No file matches, or the files cannot give ``count`` distinct texts.
    """
    files = sorted(glob.glob(pattern))
    if not files:
        raise InvalidInputError(f"no file matches {pattern!r}")
    pools = [list(dict.fromkeys(load_texts(file))) for file in files]
    pools = [pool for pool in pools if len(pool) >= 2]
    possible = sum(len(pool) * (len(pool) - 1) for pool in pools)
    if count > possible:  # "a b" and "b a" are two texts
        raise InvalidInputError(f"{pattern!r} gives too few sentence pairs for {count} distinct texts")
    rng = random.Random(seed)
    texts: dict[str, None] = {}
    while len(texts) < count:
        pool = pools[rng.randrange(len(pools))]
        first, second = rng.sample(range(len(pool)), 2)
        texts[f"{pool[first]} {pool[second]}"] = None
    return list(texts)
