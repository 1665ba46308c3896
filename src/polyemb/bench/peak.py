"""How far an encoder runs from the CPU's limit: the model's FLOPs per token and the CPU's peak.

**The model's work per token** (a BERT-shaped encoder, from its ``config.json``): each layer
multiplies every token by the query, key, value and output matrices (``4 h^2`` multiply-adds)
and by the two feed-forward matrices (``2 h i``), and each token attends to every token of its
text twice (scores and weighted sum: ``2 h L``), so with 2 FLOPs per multiply-add::

    flops_per_token = 2 * layers * (4 h^2 + 2 h i + 2 h L)

with ``L`` the mean tokens per text. Padding, softmax, LayerNorm and pooling are not counted:
the figure is the useful work, so time spent on padding shows as lost efficiency.

**The CPU's peak**: physical cores x clock x FLOPs per core per cycle for the precision, from
the widest unit the CPU's flags offer it (2 FLOPs per multiply-add, two vector FMA units):

================  ========================================================================
precision         FLOPs per core per cycle
================  ========================================================================
fp32              64 with AVX-512 (32 on AMD family 25, Zen 3/4, which splits 512-bit
                  operations in two), 32 with AVX2, else 8
bf16, fp16        1024 with AMX (``amx_bf16``; fp16: ``amx_fp16``); else twice fp32 with
                  ``avx512_bf16`` (fp16: ``avx512_fp16``); else fp32's
int8              2048 with ``amx_int8``; else four times fp32 with ``avx512_vnni`` or
                  ``avx_vnni``; else twice fp32
================  ========================================================================

The clock is the CPU's maximum frequency where Linux gives one
(``/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq``), else ``cpu MHz`` of
``/proc/cpuinfo`` (a virtual machine's nominal clock); turbo and AVX-512 down-clocking are not
modelled, so the fraction is an estimate, comparable between sides of one run. Physical cores:
the CPUs this process may use, counted once per core (SMT siblings share the units).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyemb._platform import available_cpus, cpuinfo_field, hardware_flags

if TYPE_CHECKING:
    from polyemb.bench.encode import ScenarioResult
    from polyemb.encoder import Encoder

__all__ = [
    "PeakReport",
    "annotate",
    "clock_ghz",
    "flops_per_cycle",
    "flops_per_token",
    "peak_flops",
    "physical_cores",
]


def flops_per_token(config: dict[str, Any], mean_tokens: float) -> float:
    """FLOPs of one token's forward pass through a BERT-shaped encoder (see the module's note).

    Raises:
        KeyError: ``config`` lacks ``hidden_size``, ``intermediate_size`` or ``num_hidden_layers``.
    """
    h, i = float(config["hidden_size"]), float(config["intermediate_size"])
    layers = float(config["num_hidden_layers"])
    return 2.0 * layers * (4 * h * h + 2 * h * i + 2 * h * mean_tokens)


def _fp32_per_cycle(flags: frozenset[str]) -> int:
    if "avx512f" in flags:
        split = cpuinfo_field("vendor_id") == "AuthenticAMD" and cpuinfo_field("cpu family") == "25"
        return 32 if split else 64
    return 32 if "avx2" in flags else 8


def flops_per_cycle(precision: str, flags: frozenset[str] | None = None) -> int:
    """FLOPs per core per cycle for ``precision`` on a CPU with ``flags``.

    This CPU's own flags by default, whatever oneDNN's cap (``ONEDNN_MAX_CPU_ISA``): the peak
    is the CPU's, and not every side is capped (MKL and ONNX Runtime ignore the cap; torch's
    oneDNN and OpenVINO's take it).
    """
    flags = hardware_flags() if flags is None else flags
    fp32 = _fp32_per_cycle(flags)
    if precision in ("bf16", "fp16"):
        amx, vector = ("amx_bf16", "avx512_bf16") if precision == "bf16" else ("amx_fp16", "avx512_fp16")
        if amx in flags:
            return 1024
        return 2 * fp32 if vector in flags else fp32
    if precision == "int8":
        if "amx_int8" in flags:
            return 2048
        return 4 * fp32 if flags & {"avx512_vnni", "avx_vnni"} else 2 * fp32
    return fp32


def physical_cores() -> int:
    """The physical cores among the CPUs this process may use (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return available_cpus()
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text())
        except OSError:
            cores.add(str(cpu))
    return max(1, min(len(cores), available_cpus()))


def clock_ghz() -> float:
    """The CPU's maximum clock in GHz, else its reported one; 0.0 where neither is known."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(cpuinfo_field("cpu MHz") or 0) / 1e3
    except ValueError:
        return 0.0


def peak_flops(precision: str) -> float:
    """This machine's peak FLOP/s for ``precision`` (0.0 where the clock is unknown)."""
    return physical_cores() * clock_ghz() * 1e9 * flops_per_cycle(precision)


class PeakReport:
    """Tokens/s and the fraction of the CPU's peak of each side of a ``polyemb bench`` run."""

    def __init__(self, model_folder: Path) -> None:
        try:
            self.config: dict[str, Any] | None = json.loads((model_folder / "config.json").read_text())
        except (OSError, ValueError):
            self.config = None

    def fraction(self, texts_per_s: float, mean_tokens: float, precision: str) -> float | None:
        """The share of the peak that ``texts_per_s`` of ``mean_tokens`` each reaches; None if unknown."""
        peak = peak_flops(precision)
        if self.config is None or not peak:
            return None
        try:
            work = flops_per_token(self.config, mean_tokens)
        except KeyError:
            return None
        return texts_per_s * mean_tokens * work / peak

    def describe(self) -> dict[str, Any]:
        """What the peaks were computed from, for the report's header."""
        return {
            "physical_cores": physical_cores(),
            "ghz": round(clock_ghz(), 3),
            "flops_per_cycle": {p: flops_per_cycle(p) for p in ("fp32", "bf16", "fp16", "int8")},
            "how": "cores x GHz x FLOPs/cycle (polyemb.bench.peak)",
        }


def annotate(
    results: list[ScenarioResult],
    scenarios: dict[str, list[str]],
    encoder: Encoder,
    precision_of: Callable[[str], str],
) -> dict[str, Any]:
    """Fill in each scenario's mean tokens and each side's tokens/s and fraction of the peak.

    Of the distinct texts: a side that embeds a repeated text again does work no one needs.

    ``precision_of`` names the precision a side computes in. Returns :meth:`PeakReport.describe`.
    """
    peaks = PeakReport(encoder.folder)
    for result in results:
        texts = scenarios[result.scenario]
        if not texts:
            continue
        # The work there is to do: a text repeated in the column (scenario b) counts once.
        distinct = list(dict.fromkeys(texts))
        result.mean_tokens = float(encoder.token_counts(distinct).mean())
        for name, figures in result.sides.items():
            rate = statistics.median(figures.per_s) * len(distinct) / len(texts)  # distinct texts/s
            figures.tokens_per_s = rate * result.mean_tokens
            figures.peak_fraction = peaks.fraction(rate, result.mean_tokens, precision_of(name))
    return peaks.describe()
