"""Semantic textual similarity evaluation: Pearson and Spearman of cosine against gold scores."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyemb.encoder import Encoder
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.similarity import cosine
from polyemb.tables import read_table

__all__ = ["StsData", "TaskResult", "evaluate", "fisher_mean", "pearson", "read_sts", "spearman"]


@dataclass(frozen=True)
class StsData:
    """Sentence pairs with gold scores, and the task of each pair (``"all"`` without a task column)."""

    sentence1: list[str]
    sentence2: list[str]
    score: np.ndarray
    task: list[str]


@dataclass(frozen=True)
class TaskResult:
    """One task's correlations of cosine similarity with the gold scores."""

    pearson: float
    spearman: float
    n: int


_COLUMNS = ("sentence1", "sentence2", "score")


def read_sts(path: str | os.PathLike[str]) -> StsData:
    """Read STS pairs from CSV/TSV or Parquet (through :func:`polyemb.tables.read_table`).

    Columns ``sentence1``, ``sentence2``, ``score`` and an optional ``task`` (e.g. ``en;es``), or
    a header-less three-column CSV as in stsb-multi-mt (sentence1, sentence2, score). Scores may
    be on any scale. Rows with an empty sentence or score are dropped.

    Raises:
        InvalidInputError: Missing file or columns, or a score that is not a number.
    """
    try:
        table = read_table(path, _COLUMNS, headerless=_COLUMNS)
    except ColumnNotFoundError as exc:
        exc.add_context(
            after=" An STS file needs the columns sentence1, sentence2, score (and optionally task), "
            "or no header and exactly those three columns."
        )
        raise
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    n = table.num_rows
    tasks = columns.get("task") or ["all"] * n
    keep = [
        i
        for i in range(n)
        if columns["sentence1"][i] and columns["sentence2"][i] and columns["score"][i] not in (None, "")
    ]
    try:
        scores = np.array([float(columns["score"][i]) for i in keep], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"a score in {os.fspath(path)!r} is not a number: {exc}") from exc
    return StsData(
        sentence1=[str(columns["sentence1"][i]) for i in keep],
        sentence2=[str(columns["sentence2"][i]) for i in keep],
        score=scores,
        task=[str(tasks[i]) for i in keep],
    )


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (NaN when either side is constant)."""
    a = np.asarray(x, dtype=np.float64) - np.mean(x)
    b = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata's default)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    averages = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(averages, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks."""
    return pearson(_ranks(x), _ranks(y))


def fisher_mean(correlations: Sequence[float]) -> float:
    """Average correlations through Fisher's z: tanh(mean(arctanh(r)))."""
    values = np.clip(np.asarray(correlations, dtype=np.float64), -1 + 1e-12, 1 - 1e-12)
    return float(np.tanh(np.mean(np.arctanh(values))))


def evaluate(encoder: Encoder, data: StsData, *, batch_size: int | None = None) -> dict[str, Any]:
    """Correlate cosine similarity with the gold scores, per task and overall.

    Every distinct sentence is encoded once, across all tasks.

    Returns:
        ``{"model", "tasks": {task: {"pearson", "spearman", "n"}}, "mean_spearman"}``, where
        ``mean_spearman`` is the Fisher-z average of the per-task Spearman correlations.
    """
    if not data.score.size:
        raise InvalidInputError("no sentence pairs to evaluate")
    vectors = encoder.encode([*data.sentence1, *data.sentence2], batch_size=batch_size)
    n = len(data.sentence1)
    cosines = cosine(vectors[:n], vectors[n:]).astype(np.float64)
    tasks: dict[str, TaskResult] = {}
    task_of = np.array(data.task, dtype=object)
    for task in dict.fromkeys(data.task):
        rows = task_of == task
        tasks[task] = TaskResult(
            pearson(cosines[rows], data.score[rows]),
            spearman(cosines[rows], data.score[rows]),
            int(rows.sum()),
        )
    return {
        "model": encoder.model_id,
        "tasks": {
            name: {"pearson": r.pearson, "spearman": r.spearman, "n": r.n} for name, r in tasks.items()
        },
        "mean_spearman": fisher_mean([r.spearman for r in tasks.values()]),
    }


def format_report(report: dict[str, Any]) -> str:
    """A readable table of the report."""
    lines = [f"model: {report['model']}", f"{'task':<12}{'n':>7}{'pearson':>10}{'spearman':>10}", "-" * 39]
    for task, r in report["tasks"].items():
        lines.append(f"{task:<12}{r['n']:>7}{r['pearson']:>10.4f}{r['spearman']:>10.4f}")
    lines.append("-" * 39)
    lines.append(f"{'mean (Fisher z) spearman':<29}{report['mean_spearman']:>10.4f}")
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    """The report as the JSON object ``polyemb eval-sts --json`` prints."""
    return json.dumps(report)
