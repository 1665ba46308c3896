"""``polyemb bench``: polyemb against references on the same texts, in the same run, in turns.

Every figure is a median over rounds; each round times every side on identical input, in a
rotating order so that no side always runs on a warmer machine. Ratios are against one
baseline side of the same run (sentence-transformers with torch fp32 by default). The sides
themselves are made in :mod:`polyemb.bench.sides`.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polyemb._platform import process_mib, reset_peak_memory
from polyemb.bench.texts import SCENARIOS
from polyemb.errors import InvalidInputError

__all__ = [
    "DEFAULT_ROUNDS",
    "Measured",
    "ScenarioResult",
    "Side",
    "SideResult",
    "format_table",
    "run_bench",
    "to_json",
]

DEFAULT_ROUNDS = 3

# How many texts each side encodes, untimed, before a scenario's rounds.
_WARM_UP = 32


@dataclass
class SideResult:
    """One encoder's figures in one scenario: rates and ratios per round, quality, memory."""

    per_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    mean_row_cosine: float = float("nan")
    min_row_cosine: float = float("nan")
    peak_mib: float = float("nan")
    # Of the median rate: tokens/s, and the share of the CPU's peak for the side's precision
    # (:mod:`polyemb.bench.peak`); None where unknown.
    tokens_per_s: float | None = None
    peak_fraction: float | None = None

    def summary(self) -> dict[str, Any]:
        """Medians and raw rounds, JSON-ready."""
        return {
            **asdict(self),
            "median_per_s": statistics.median(self.per_s),
            "ratio": statistics.median(self.ratios),
        }


@dataclass
class ScenarioResult:
    """Figures of one scenario: every side's, each ratio against the ``baseline`` side.

    A ratio is baseline time / side time (above 1: the side is faster than the baseline), and
    the row cosines compare each side's vectors with the baseline's.
    """

    scenario: str
    description: str
    texts: int
    distinct: int
    baseline: str
    sides: dict[str, SideResult] = field(default_factory=dict)
    mean_tokens: float | None = None  # tokens the model reads per distinct text (Encoder.token_counts)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the scenario's facts and each side's summary."""
        return {
            "scenario": self.scenario,
            "description": self.description,
            "texts": self.texts,
            "distinct": self.distinct,
            "baseline": self.baseline,
            "mean_tokens": self.mean_tokens,
            "sides": {name: side.summary() for name, side in self.sides.items()},
        }


@dataclass(frozen=True)
class Measured:
    """What a side that times itself returns (a child process): its vectors, seconds, peak MiB."""

    vectors: np.ndarray
    seconds: float
    peak_mib: float


Side = Callable[[list[str]], "np.ndarray | Measured"]


# ---------------------------------------------------------------------- measuring


def _peak_mib() -> float:
    peak = process_mib("VmHWM")
    if math.isnan(peak):  # no /proc: the peak since the process started, as the OS keeps it
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def _timed(run: Side, texts: list[str]) -> tuple[float, np.ndarray, float]:
    gc.collect()
    reset_peak_memory()
    start = time.perf_counter()
    result = run(texts)
    elapsed = time.perf_counter() - start
    if isinstance(result, Measured):  # timed where it ran, without the trip between processes
        return result.seconds, result.vectors, result.peak_mib
    return elapsed, result, _peak_mib()


def run_bench(
    sides: dict[str, Side],
    scenarios: dict[str, list[str]],
    *,
    baseline: str,
    rounds: int = DEFAULT_ROUNDS,
    progress: Callable[[str], None] | None = None,
) -> list[ScenarioResult]:
    """Time every side on each scenario's texts, round after round, in a rotating order.

    Round r starts with side r (mod the number of sides), so that no side always runs first or
    last on a warmer or cooler machine. Each side encodes a few texts first, untimed.

    Raises:
        InvalidInputError: ``baseline`` is not one of ``sides``.
    """
    if baseline not in sides:
        raise InvalidInputError(f"the baseline {baseline!r} is not one of the sides {list(sides)}")
    return [
        _run_scenario(name, texts, sides, baseline=baseline, rounds=rounds, progress=progress)
        for name, texts in scenarios.items()
    ]


def _run_scenario(
    name: str,
    texts: list[str],
    sides: dict[str, Side],
    *,
    baseline: str,
    rounds: int,
    progress: Callable[[str], None] | None,
) -> ScenarioResult:
    # torch comes with the sides; importing cosine at the top would make the help pay for it.
    from polyemb.similarity import cosine

    names = list(sides)
    result = ScenarioResult(name, SCENARIOS.get(name, name), len(texts), len(set(texts)), baseline)
    result.sides = {side: SideResult() for side in names}
    for run in sides.values():
        run(texts[:_WARM_UP])
    vectors: dict[str, np.ndarray] = {}
    peaks: dict[str, list[float]] = {side: [] for side in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        times = {}
        for side in names[shift:] + names[:shift]:
            times[side], vectors[side], peak = _timed(sides[side], texts)
            peaks[side].append(peak)
        for side in names:
            result.sides[side].per_s.append(len(texts) / times[side])
            result.sides[side].ratios.append(times[baseline] / times[side])
        if progress:
            rates = ", ".join(f"{side} {result.sides[side].per_s[-1]:.0f}/s" for side in names)
            progress(f"scenario {name} round {round_ + 1}/{rounds}: {rates}")
    for side in names:
        cosines = cosine(vectors[side], vectors[baseline])
        figures = result.sides[side]
        figures.mean_row_cosine = float(cosines.mean()) if len(cosines) else float("nan")
        figures.min_row_cosine = float(cosines.min()) if len(cosines) else float("nan")
        figures.peak_mib = max(peaks[side])
    return result


# ---------------------------------------------------------------------- reports


def format_table(results: list[ScenarioResult]) -> str:
    """A plain-text table of the medians: one line per scenario and side."""
    baseline = results[0].baseline if results else ""
    header = (
        f"{'scenario':<9}{'texts':>6}{'distinct':>9}  {'side':<26}{'texts/s':>9}"
        f"{'vs ' + baseline:>{max(10, len(baseline) + 5)}}{'mean cos':>10}{'min cos':>10}{'peak MiB':>10}"
        f"{'tokens/s':>10}{'of peak':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        for side, figures in r.sides.items():
            summary = figures.summary()
            lines.append(
                f"{r.scenario:<9}{r.texts:>6}{r.distinct:>9}  {side:<26}{summary['median_per_s']:>9.1f}"
                f"{summary['ratio']:>{max(10, len(baseline) + 5) - 1}.2f}x{figures.mean_row_cosine:>10.5f}"
                f"{figures.min_row_cosine:>10.5f}{figures.peak_mib:>10.0f}"
                f"{_optional(figures.tokens_per_s, '.0f'):>10}{_optional(figures.peak_fraction, '.1%'):>9}"
            )
    return "\n".join(lines)


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def to_json(meta: dict[str, Any], results: list[ScenarioResult]) -> str:
    """The report as one JSON object."""
    return json.dumps({**meta, "scenarios": {r.scenario: r.summary() for r in results}}, indent=2)
