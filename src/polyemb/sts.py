"""Semantic textual similarity evaluation: Pearson and Spearman of cosine against gold scores."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.tables import read_table

if TYPE_CHECKING:
    # Typing only: the command line reads the gate's defaults for its help without importing torch.
    from polyemb.encoder import Encoder

__all__ = [
    "MAX_SPEARMAN_DROP",
    "MIN_MEAN_COSINE",
    "StsData",
    "TaskResult",
    "check_precision",
    "evaluate",
    "fisher_mean",
    "format_precision_check",
    "pearson",
    "read_sts",
    "spearman",
]


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
    undefined = np.flatnonzero(~np.isfinite(scores))
    if len(undefined):  # NaN ranks as the largest score: a made-up Spearman
        row = keep[int(undefined[0])]
        raise InvalidInputError(
            f"the score of pair {row + 1} in {os.fspath(path)!r} is {columns['score'][row]!r}, not a "
            f"finite number ({len(undefined)} such pairs); leave it empty to skip the pair"
        )
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
    """Spearman rank correlation: Pearson of the average ranks (NaN where either side holds NaN)."""
    if np.isnan(np.asarray(x, dtype=np.float64)).any() or np.isnan(np.asarray(y, dtype=np.float64)).any():
        return float("nan")
    return pearson(_ranks(x), _ranks(y))


def _has_spearman(data: StsData) -> bool:
    """Whether some task of ``data`` has 2 pairs or more and scores that are not all the same."""
    tasks = np.array(data.task, dtype=object)
    return any(np.ptp(data.score[tasks == task]) > 0 for task in set(data.task))


def fisher_mean(correlations: Sequence[float]) -> float:
    """Average correlations through Fisher's z: tanh(mean(arctanh(r))).

    Undefined correlations (NaN: a task of one pair, or of constant scores) are left out; NaN
    when none is defined.
    """
    values = np.asarray(correlations, dtype=np.float64)
    values = np.clip(values[np.isfinite(values)], -1 + 1e-12, 1 - 1e-12)
    return float(np.tanh(np.mean(np.arctanh(values)))) if values.size else float("nan")


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
    return {"model": encoder.model_id, **_correlate(vectors, data)}


def _correlate(vectors: np.ndarray, data: StsData) -> dict[str, Any]:
    """The report's figures from the vectors of ``[*sentence1, *sentence2]``."""
    from polyemb.similarity import cosine  # imports torch: see the TYPE_CHECKING import above

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
        "tasks": {
            name: {"pearson": r.pearson, "spearman": r.spearman, "n": r.n} for name, r in tasks.items()
        },
        "mean_spearman": fisher_mean([r.spearman for r in tasks.values()]),
    }


MAX_SPEARMAN_DROP = 0.005
"""The precision gate: no STS file's Spearman may fall further below the reference's."""
MIN_MEAN_COSINE = 0.99
"""The precision gate: the mean row cosine to the reference's vectors, over every file's sentences."""


def check_precision(
    candidate: Encoder,
    reference: Encoder,
    files: dict[str, StsData],
    *,
    max_drop: float = MAX_SPEARMAN_DROP,
    min_mean_cosine: float = MIN_MEAN_COSINE,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The precision gate: does ``candidate`` (say int8) keep ``reference``'s (fp32) quality?

    On every file: the Spearman of both (Fisher-z mean over the file's tasks), and the cosine
    between the two encoders' vectors of each sentence. It passes when no file's Spearman drops
    by more than ``max_drop`` and the mean row cosine over all sentences is at least
    ``min_mean_cosine``.

    Returns:
        ``{"candidate", "reference", "files": {name: {"reference_spearman", "spearman", "drop",
        "mean_row_cosine", "min_row_cosine", "sentences"}}, "mean_row_cosine",
        "min_row_cosine", "max_drop", "min_mean_cosine", "passed", "failures"}``.
    """
    from polyemb.similarity import cosine  # imports torch: see the TYPE_CHECKING import above

    if not files:
        raise InvalidInputError("no STS files to check the precision on")
    rows: dict[str, dict[str, Any]] = {}
    all_cosines = []
    failures = []
    for name, data in files.items():
        if not data.score.size:
            raise InvalidInputError(f"{name}: no sentence pairs to evaluate")
        if not _has_spearman(data):  # the file's fault, not the precision's: no exit 3 for it
            raise InvalidInputError(
                f"{name}: no task has a defined Spearman (each has fewer than 2 pairs, or one score for all)"
            )
        texts = [*data.sentence1, *data.sentence2]
        ours = candidate.encode(texts, batch_size=batch_size)
        theirs = reference.encode(texts, batch_size=batch_size)
        distinct = np.unique(np.array(texts, dtype=object), return_index=True)[1]
        row_cosines = cosine(ours[distinct], theirs[distinct])
        all_cosines.append(row_cosines)
        spearman_ref = _correlate(theirs, data)["mean_spearman"]
        if math.isnan(spearman_ref):
            raise InvalidInputError(f"{name}: the {reference.precision} reference's Spearman is undefined")
        spearman_ours = _correlate(ours, data)["mean_spearman"]
        drop = spearman_ref - spearman_ours
        rows[name] = {
            "reference_spearman": spearman_ref,
            "spearman": spearman_ours,
            "drop": drop,
            "mean_row_cosine": float(row_cosines.mean()),
            "min_row_cosine": float(row_cosines.min()),
            "sentences": len(distinct),
        }
        if not drop <= max_drop:  # a NaN Spearman fails too
            failures.append(f"{name}: Spearman {spearman_ours:.4f} is {drop:.4f} below {spearman_ref:.4f}")
    cosines = np.concatenate(all_cosines)
    mean_cosine = float(cosines.mean())
    if not mean_cosine >= min_mean_cosine:
        failures.append(f"mean row cosine {mean_cosine:.5f} is below {min_mean_cosine}")
    return {
        "candidate": candidate.precision,
        "reference": reference.precision,
        "model": candidate.model_id,
        "files": rows,
        "mean_row_cosine": mean_cosine,
        "min_row_cosine": float(cosines.min()),
        "max_drop": max_drop,
        "min_mean_cosine": min_mean_cosine,
        "passed": not failures,
        "failures": failures,
    }


def format_precision_check(report: dict[str, Any]) -> str:
    """A readable table of :func:`check_precision`'s report, ending in PASSED or FAILED."""
    candidate, reference = report["candidate"], report["reference"]
    header = (
        f"{'file':<28}{'sentences':>10}{reference + ' spearman':>16}{candidate + ' spearman':>16}"
        f"{'drop':>9}{'mean cos':>10}{'min cos':>9}"
    )
    lines = [f"model: {report['model']}", header, "-" * len(header)]
    for name, r in report["files"].items():
        lines.append(
            f"{name[-28:]:<28}{r['sentences']:>10}{r['reference_spearman']:>16.4f}{r['spearman']:>16.4f}"
            f"{r['drop']:>9.4f}{r['mean_row_cosine']:>10.5f}{r['min_row_cosine']:>9.4f}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"all sentences: mean row cosine {report['mean_row_cosine']:.5f}, min {report['min_row_cosine']:.4f}"
    )
    gate = (
        f"(Spearman drop <= {report['max_drop']} on every file, "
        f"mean row cosine >= {report['min_mean_cosine']})"
    )
    if report["passed"]:
        lines.append(f"PASSED {gate}")
    else:
        lines.append(f"FAILED {gate}: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """A readable table of the report."""
    lines = [f"model: {report['model']}", f"{'task':<12}{'n':>7}{'pearson':>10}{'spearman':>10}", "-" * 39]
    for task, r in report["tasks"].items():
        lines.append(f"{task:<12}{r['n']:>7}{r['pearson']:>10.4f}{r['spearman']:>10.4f}")
    lines.append("-" * 39)
    lines.append(f"{'mean (Fisher z) spearman':<29}{report['mean_spearman']:>10.4f}")
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    """The report as the JSON object ``polyemb eval-sts --json`` prints: an undefined figure is null.

    (JSON has no NaN: Python's ``json`` would write one that strict parsers refuse.)
    """
    return json.dumps(_defined(report), allow_nan=False)


def _defined(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, as None."""
    if isinstance(value, dict):
        return {key: _defined(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_defined(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
