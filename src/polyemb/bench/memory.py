"""``polyemb bench-memory``: speed and memory of each precision, each in a process of its own.

Each precision is loaded by :mod:`polyemb.bench._footprint_child` in a fresh Python, as a Spark
Python worker loads one model, so that one precision's memory never counts towards another's.
With ``--polars-sink``, the child is :mod:`polyemb.bench._sink_child`, which streams a Parquet
file through a Polars query (``scan_parquet -> .emb.encode() -> sink_parquet``) instead.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from polyemb.errors import InvalidInputError

__all__ = ["DEFAULT_ROUNDS", "footprints", "format_footprints", "sink_footprints"]

DEFAULT_ROUNDS = 2


def footprints(
    model: str, precisions: Sequence[str], texts: list[str], *, rounds: int = DEFAULT_ROUNDS
) -> dict[str, dict[str, Any]]:
    """Speed and memory of each precision, each in a process of its own (as a Spark worker).

    Rounds rotate the order of the precisions. Per precision: median texts/s, load seconds,
    and memory (MiB): resident after ``import`` of Python alone, after loading, and the peak
    while encoding. A precision that cannot load here gets ``{"error": message}``.

    Raises:
        InvalidInputError: A child process failed (its stderr is in the message).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(texts, handle)
    try:
        return _in_turns(
            precisions, rounds, lambda precision: ["_footprint_child", model, precision, handle.name]
        )
    finally:
        os.unlink(handle.name)


def sink_footprints(
    model: str,
    precisions: Sequence[str],
    parquet: str,
    column: str,
    rows: int,
    *,
    chunk: int = 0,
    rounds: int = DEFAULT_ROUNDS,
) -> dict[str, dict[str, Any]]:
    """Speed and memory of a streamed Polars query per precision, each in a process of its own.

    The query is ``pl.scan_parquet(parquet).head(rows).with_columns(pl.col(column).emb.encode())
    .sink_parquet(...)`` (``rows`` 0: every row). ``chunk`` rows, if not 0, are both the streaming
    engine's batch (``pl.Config.set_streaming_chunk_size``) and the output's row group; 0 keeps
    Polars' defaults. Per precision, as :func:`footprints`, with ``rows`` written; the peak is the
    whole process's, model included.

    Raises:
        InvalidInputError: A child process failed (its stderr is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="polyemb-sink-") as folder:
        out = os.path.join(folder, "out.parquet")
        return _in_turns(
            precisions,
            rounds,
            lambda precision: ["_sink_child", model, precision, parquet, column, str(rows), str(chunk), out],
        )


def _in_turns(
    precisions: Sequence[str], rounds: int, child: Callable[[str], list[str]]
) -> dict[str, dict[str, Any]]:
    """Each precision's figures, from ``child(precision)``: a child module of this package and its arguments.

    Each precision runs once a round; rounds rotate the order of the precisions.
    """
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in precisions}
    for round_ in range(rounds):
        shift = round_ % len(precisions)
        for precision in [*precisions[shift:], *precisions[:shift]]:
            runs[precision].append(_footprint(precision, child(precision)))
    return {precision: _summary(figures) for precision, figures in runs.items()}


def _footprint(precision: str, child: list[str]) -> dict[str, Any]:
    module, *arguments = child
    command = [sys.executable, "-m", f"polyemb.bench.{module}", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise InvalidInputError(f"measuring {precision} failed: {done.stderr.strip()[-2000:]}")
    return dict(json.loads(lines[-1]))


def _summary(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """One precision's rounds: the median speeds, the largest memory."""
    if "error" in figures[0]:
        return {"error": figures[0]["error"]}
    rows = {"rows": figures[0]["rows"]} if "rows" in figures[0] else {}
    return {
        **rows,
        "per_s": statistics.median(f["per_s"] for f in figures),
        "load_s": statistics.median(f["load_s"] for f in figures),
        "loaded_mib": max(f["loaded_mib"] for f in figures),
        "peak_mib": max(f["peak_mib"] for f in figures),
        "python_mib": max(f["python_mib"] for f in figures),
    }


def format_footprints(report: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of :func:`footprints`' report: one line per precision."""
    lines = [f"{'precision':<10}{'texts/s':>9}{'load s':>8}{'MiB loaded':>12}{'MiB peak':>10}"]
    for precision, figures in report.items():
        if "error" in figures:
            lines.append(f"{precision:<10}  cannot run here: {figures['error']}")
        else:
            lines.append(
                f"{precision:<10}{figures['per_s']:>9.1f}{figures['load_s']:>8.1f}"
                f"{figures['loaded_mib']:>12.0f}{figures['peak_mib']:>10.0f}"
            )
    return "\n".join(lines)
