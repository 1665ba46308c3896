"""``polyemb bench-long``: long-document retrieval by truncate, mean and chunk max-sim; the cost of chunks.

**Retrieval.** From an STS file of one language (``stsb-<lang>-<split>.csv``), each pair scored at
least 4 gives a query (its second sentence) and a target (its first), placed at a random position
among 5 to 13 other sentences of the file (longer than its median sentence): a document of 6 to
14 sentences, 150 to 450 tokens in most languages (fewer in English, whose words are whole
tokens). Every query is ranked against all the language's documents by

- ``truncate``: the document's vector from its first ``max_seq_length`` tokens;
- ``mean``: the token-weighted mean of all its windows' vectors (``long_texts="mean"``);
- ``max-sim``: its best window (:meth:`Encoder.encode_chunks`, :func:`polyemb.maxsim.top_chunk_pairs`).

Recall@1 and @10 (the document found among the first 1 or 10) are split by where the target lies:
``inside`` the first window (it ends there), ``beyond`` it (it starts after), or ``across`` its end.

**Cost.** The documents' windows encoded three ways in turns: as short texts (each window's text,
plain ``encode``), as ``mean`` vectors and as chunks. Time per token (of the windows, special
tokens included) and its ratio to the plain encoding of the same windows.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from polyemb.chunks import chunks_of_table
from polyemb.errors import InvalidInputError
from polyemb.maxsim import top_chunk_pairs
from polyemb.similarity import top_k
from polyemb.sts import read_sts

if TYPE_CHECKING:
    from polyemb.encoder import Encoder

__all__ = [
    "GROUPS",
    "METHODS",
    "Documents",
    "chunk_cost",
    "format_cost",
    "format_retrieval",
    "make_documents",
    "retrieval",
]

METHODS = ("truncate", "mean", "max-sim")
GROUPS = ("inside", "across", "beyond")
MIN_SCORE = 4.0
SENTENCES = (6, 14)  # sentences per document, target included


@dataclass(frozen=True)
class Documents:
    """One language's documents, each with the query that should find it.

    Attributes:
        lang: The language.
        docs: The documents.
        queries: ``queries[i]`` paraphrases a sentence of ``docs[i]``.
        targets: ``(start, end)`` of that sentence in ``docs[i]`` (characters).
    """

    lang: str
    docs: list[str]
    queries: list[str]
    targets: list[tuple[int, int]]


def make_documents(path: Path, lang: str, count: int, seed: int = 0) -> Documents:
    """Up to ``count`` documents from the STS pairs of ``path`` scored at least :data:`MIN_SCORE`.

    Raises:
        InvalidInputError: The file has no pair scored that high.
    """
    data = read_sts(path)
    rng = random.Random(seed)
    chosen = [i for i in range(len(data.score)) if data.score[i] >= MIN_SCORE]
    rng.shuffle(chosen)
    chosen = chosen[:count]
    if not chosen:
        raise InvalidInputError(f"{path} has no pair scored {MIN_SCORE} or more")
    targets = set(chosen)
    # Fillers: first sentences of the other pairs (never a target's pair), of more than the
    # median length: article and ticket sentences rather than captions, so that documents of
    # 6 to 14 sentences run to a few hundred tokens.
    median = statistics.median(len(text) for text in data.sentence1)
    fillers = [
        data.sentence1[i]
        for i in range(len(data.score))
        if i not in targets and len(data.sentence1[i]) > median
    ]
    if len(fillers) < SENTENCES[1] - 1:
        raise InvalidInputError(
            f"{lang}: {len(fillers)} sentences to fill documents with, fewer than the {SENTENCES[1] - 1} "
            "a document may take: give a larger split"
        )
    docs, queries, spans = [], [], []
    for i in chosen:
        sentences = rng.sample(fillers, rng.randint(*SENTENCES) - 1)
        position = rng.randint(0, len(sentences))
        before = " ".join(sentences[:position])
        start = len(before) + (1 if before else 0)
        sentences.insert(position, data.sentence1[i])
        docs.append(" ".join(sentences))
        queries.append(data.sentence2[i])
        spans.append((start, start + len(data.sentence1[i])))
    return Documents(lang, docs, queries, spans)


def retrieval(
    truncate: Encoder, mean: Encoder, documents: Documents, *, stride: int | None = None
) -> list[dict[str, Any]]:
    """Recall@1 and @10 of each method, per group of targets: one row per (method, group)."""
    table = truncate.encode_chunks(documents.docs, stride=stride)
    chunks = chunks_of_table(table)
    first_end = chunks.end[np.concatenate([[True], np.diff(chunks.row) > 0])]
    groups = np.array(
        [_group(span, int(end)) for span, end in zip(documents.targets, first_end, strict=True)]
    )
    queries = truncate.encode(documents.queries)
    k = min(10, len(documents.docs))
    ranked = {
        "truncate": top_k(queries, truncate.encode(documents.docs), k)[0],
        "mean": top_k(queries, mean.encode(documents.docs), k)[0],
        "max-sim": _by_rows(top_chunk_pairs(queries, chunks.vectors, k, corpus_rows=chunks.row).corpus, k),
    }
    truth = np.arange(len(documents.docs))[:, None]
    windows = round(len(chunks.row) / len(documents.docs), 2)
    rows = []
    for method, found in ranked.items():
        hits = found == truth
        for group in GROUPS:
            mine = groups == group
            rows.append(
                {
                    "lang": documents.lang,
                    "method": method,
                    "group": group,
                    "n": int(mine.sum()),
                    "windows_per_document": windows,
                    "recall@1": float(hits[mine, 0].mean()) if mine.any() else None,
                    "recall@10": float(hits[mine].any(axis=1).mean()) if mine.any() else None,
                }
            )
    return rows


def _group(target: tuple[int, int], first_window_end: int) -> str:
    if target[1] <= first_window_end:
        return "inside"
    return "beyond" if target[0] >= first_window_end else "across"


def _by_rows(corpus: np.ndarray, k: int) -> np.ndarray:
    return corpus.reshape(-1, k)


def format_retrieval(rows: list[dict[str, Any]]) -> str:
    """The recall table: a line per language and method, recall@1 / @10 per group."""
    header = f"{'lang':<5} {'method':<9}" + "".join(f" {group + ' (n)':>22}" for group in GROUPS)
    lines = [header]
    keyed = {(r["lang"], r["method"], r["group"]): r for r in rows}
    for lang in dict.fromkeys(r["lang"] for r in rows):
        for method in METHODS:
            cells = []
            for group in GROUPS:
                row = keyed[(lang, method, group)]
                if row["n"]:
                    cells.append(f"{row['recall@1']:.2f} / {row['recall@10']:.2f} ({row['n']})")
                else:
                    cells.append("- (0)")
            lines.append(f"{lang:<5} {method:<9}" + "".join(f" {cell:>22}" for cell in cells))
    lines.append(
        "(recall@1 / recall@10 (queries), by where the target is: in the first window, across its end, after)"
    )
    return "\n".join(lines)


def chunk_cost(truncate: Encoder, mean: Encoder, docs: list[str], *, rounds: int = 3) -> dict[str, Any]:
    """Time per window token of plain encoding, ``mean`` and ``encode_chunks`` on the same windows.

    ``plain`` encodes each window's text as a short text (``docs[row][start:end]``): the same
    tokens through the model, give or take a token where a window's text re-tokenizes at its
    edges (then truncated to ``max_seq_length``). After one untimed call each, the three run in
    turns, ``rounds`` times; the medians count.
    """
    table = truncate.encode_chunks(docs)  # also a warm-up
    chunks = chunks_of_table(table)
    windows = [
        docs[row][start:end] for row, start, end in zip(chunks.row, chunks.start, chunks.end, strict=True)
    ]
    tokens = int(np.sum(table.column("tokens").to_numpy()))
    sides: dict[str, Callable[[], object]] = {
        "plain": lambda: truncate.encode(windows),
        "mean": lambda: mean.encode(docs),
        "chunks": lambda: truncate.encode_chunks(docs),
    }
    for side in sides.values():  # each side's batch shapes once before timing
        side()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for turn in range(rounds):
        for name in order[turn % len(order) :] + order[: turn % len(order)]:
            started = time.perf_counter()
            sides[name]()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "documents": len(docs),
        "windows": len(windows),
        "window_tokens": tokens,
        "rounds": rounds,
        "seconds": median,
        "tokens_per_s": {name: round(tokens / value) for name, value in median.items()},
        "ratio_to_plain": {name: round(value / median["plain"], 3) for name, value in median.items()},
    }


def format_cost(cost: dict[str, Any]) -> str:
    """The cost lines: tokens/s of each side and its time per token against plain encoding."""
    lines = [
        f"cost: {cost['documents']} documents, {cost['windows']} windows, {cost['window_tokens']} window "
        f"tokens, median of {cost['rounds']} rounds"
    ]
    for name, ratio in cost["ratio_to_plain"].items():
        lines.append(
            f"  {name:<7} {cost['tokens_per_s'][name]:>9} tokens/s   time per token {ratio:.3f}x plain"
        )
    return "\n".join(lines)
