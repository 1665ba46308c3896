"""Benchmarks: polyemb against a reference on the same texts, in the same run, alternating.

Every figure is a median over rounds; each round times both sides on identical input, in
alternating order so that neither always runs on a warmer machine.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyemb.arrow import texts_from_arrow
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.similarity import cosine
from polyemb.tables import read_table, table_format
from polyemb.testing import SAMPLE_SENTENCES

__all__ = ["SCENARIOS", "ScenarioResult", "load_texts", "make_scenario", "run_bench", "scenario_texts"]

SCENARIOS = {
    "a": "distinct real sentences of STS length",
    "b": "a column where each text appears 10 times, in random order",
    "c": "long paragraphs (truncated at max_seq_length)",
}


@dataclass
class ScenarioResult:
    """Figures of one scenario."""

    scenario: str
    description: str
    texts: int
    distinct: int
    reference_per_s: list[float] = field(default_factory=list)
    polyemb_per_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    min_row_cosine: float = float("nan")
    mean_row_cosine: float = float("nan")
    peak_mib: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Median over rounds of reference time / polyemb time (> 1: polyemb is faster)."""
        return statistics.median(self.ratios)

    def summary(self) -> dict[str, Any]:
        """Medians and raw rounds, JSON-ready."""
        out = asdict(self)
        out["median_reference_per_s"] = statistics.median(self.reference_per_s)
        out["median_polyemb_per_s"] = statistics.median(self.polyemb_per_s)
        out["ratio"] = self.ratio
        return out


# ---------------------------------------------------------------------- texts


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
    """The input of one scenario, ``size`` texts long, drawn from ``pool``."""
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
        paragraphs = []
        for start in range(0, len(distinct), 12):
            paragraphs.append(" ".join(distinct[start : start + 12]))
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


# ---------------------------------------------------------------------- measuring

# CPU flags that decide which precisions are fast: bf16 and int8 matrix units.
_SPEED_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_description() -> str:
    """The CPU every speed figure was measured on, e.g. ``"AMD EPYC (family 26, model 2), 2 CPUs: ..."``.

    Names the model, family and model numbers (``lscpu`` shows the same), the CPUs this process
    may use, and the flags among ``amx_*``, ``avx512_bf16``, ``avx512_vnni``, ``avx_vnni``,
    ``avx512f`` and ``avx2`` that the CPU has. Never fails: unknown parts are left out.
    """
    import platform

    from polyemb.encoder import available_cpus

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    flags = set(fields.get("flags", "").split())
    present = [flag for flag in _SPEED_FLAGS if flag in flags]
    amx = "AMX" if any(flag.startswith("amx") for flag in flags) else "no AMX"
    shown = ", ".join(present) if present else "flags unknown"
    return f"{name}, {available_cpus()} CPUs: {shown}; {amx}"


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process.
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_mib() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(run: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[float, np.ndarray, float]:
    gc.collect()
    _reset_peak()
    start = time.perf_counter()
    vectors = run(texts)
    elapsed = time.perf_counter() - start
    return elapsed, vectors, _peak_mib()


def run_bench(
    polyemb_side: Callable[[list[str]], np.ndarray],
    reference_side: Callable[[list[str]], np.ndarray],
    scenarios: dict[str, list[str]],
    *,
    rounds: int = 3,
    reference_name: str = "reference",
    progress: Callable[[str], None] | None = None,
) -> list[ScenarioResult]:
    """Time both sides on each scenario's texts, alternating which goes first each round."""
    results = []
    for name, texts in scenarios.items():
        result = ScenarioResult(name, SCENARIOS.get(name, name), len(texts), len(set(texts)))
        warm = texts[: min(32, len(texts))]
        polyemb_side(warm)
        reference_side(warm)
        peaks: dict[str, list[float]] = {"polyemb": [], reference_name: []}
        ours = theirs = np.zeros((0, 0), dtype=np.float32)
        for round_ in range(rounds):
            order = [("polyemb", polyemb_side), (reference_name, reference_side)]
            if round_ % 2:
                order.reverse()
            times = {}
            for side, run in order:
                elapsed, vectors, peak = _timed(run, texts)
                times[side] = elapsed
                peaks[side].append(peak)
                if side == "polyemb":
                    ours = vectors
                else:
                    theirs = vectors
            result.polyemb_per_s.append(len(texts) / times["polyemb"])
            result.reference_per_s.append(len(texts) / times[reference_name])
            result.ratios.append(times[reference_name] / times["polyemb"])
            if progress:
                progress(
                    f"scenario {name} round {round_ + 1}/{rounds}: polyemb {result.polyemb_per_s[-1]:.0f}/s, "
                    f"{reference_name} {result.reference_per_s[-1]:.0f}/s"
                )
        cosines = cosine(ours, theirs)
        result.min_row_cosine = float(cosines.min()) if len(cosines) else float("nan")
        result.mean_row_cosine = float(cosines.mean()) if len(cosines) else float("nan")
        result.peak_mib = {side: max(values) for side, values in peaks.items()}
        results.append(result)
    return results


# ---------------------------------------------------------------------- references


def sentence_transformers_side(encoder: Encoder) -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers on the same model folder and device: the reference.

    On a GPU it runs in the encoder's half precision (as one would run it there); on the CPU
    always in fp32, so that a faster CPU precision of polyemb is measured against fp32.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(encoder.folder), device=str(encoder.device))
    if encoder.device.type != "cpu" and encoder.dtype != torch.float32:
        model = model.to(encoder.dtype)

    def run(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, convert_to_numpy=True, normalize_embeddings=True))

    return run


def _indexed_table(texts: list[str]) -> Any:
    """Texts as an Arrow table with their position ``i``, so engine output can be put in order."""
    import pyarrow as pa

    return pa.table({"i": pa.array(range(len(texts)), pa.int64()), "t": pa.array(texts, pa.string())})


def duckdb_side(encoder: Encoder, batch_size: int | None) -> Callable[[list[str]], np.ndarray]:
    """``SELECT embed(t) FROM texts`` on DuckDB, with the embedding cache emptied each call."""
    import duckdb

    from polyemb.arrow import vectors_from_arrow
    from polyemb.duckdb import register

    con = duckdb.connect()
    cache = register(con, encoder, batch_size=batch_size)

    def run(texts: list[str]) -> np.ndarray:
        cache.clear()
        table = _indexed_table(texts)
        con.register("bench_texts", table)
        result = con.sql("SELECT embed(t) AS v FROM bench_texts ORDER BY i").to_arrow_table()
        con.unregister("bench_texts")
        return vectors_from_arrow(result.column("v"))[0]

    return run


def spark_side(
    encoder: Encoder, batch_size: int | None
) -> tuple[Callable[[list[str]], np.ndarray], dict[str, Any]]:
    """The Spark UDF on ``local[2]`` (model broadcast to the Python workers), same texts.

    Returns the run function and a dict that fills with the broadcast's size and time and the
    Python workers' peak memory.
    """
    from pyspark.sql import SparkSession

    from polyemb import spark as polyemb_spark
    from polyemb.spark.delivery import last_shipment

    # The local workers must run this Python (the one with polyemb), not whatever python3 is first
    # on PATH, as when `.venv/bin/polyemb bench` runs without the venv activated.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from polyemb.arrow import vectors_from_arrow

    session = (
        SparkSession.builder.master("local[2]")
        .appName("polyemb-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    embed = polyemb_spark.embed_udf(
        encoder.folder,
        spark=session,
        delivery="broadcast",
        batch_size=batch_size,
        precision=encoder.precision,
        max_seq_length=encoder.max_seq_length,
    )
    info: dict[str, Any] = {"shipment": dict(last_shipment)}

    def run(texts: list[str]) -> np.ndarray:
        table = _indexed_table(texts)
        frame = session.createDataFrame(table).repartition(2)
        result = frame.select("i", embed("t").alias("v")).toArrow().sort_by("i")
        info["worker_peak_mib"] = _python_worker_peaks()
        return vectors_from_arrow(result.column("v"))[0]

    return run, info


def _python_worker_peaks() -> list[float]:
    """Peak memory (MiB) of each running PySpark Python worker process on this machine."""
    peaks = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes()
            if b"pyspark.daemon" not in cmdline and b"pyspark.worker" not in cmdline:
                continue
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(round(int(line.split()[1]) / 1024, 1))
        except OSError:
            continue
    return sorted(peaks, reverse=True)


def format_table(results: list[ScenarioResult], reference_name: str) -> str:
    """A plain-text table of the medians."""
    header = (
        f"{'scenario':<9}{'texts':>7}{'distinct':>9}{reference_name + '/s':>26}{'polyemb/s':>11}"
        f"{'ratio':>8}{'min cos':>11}{'peak MiB (ref/polyemb)':>25}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        summary = r.summary()
        nan = float("nan")
        peak = f"{r.peak_mib.get(reference_name, nan):.0f}/{r.peak_mib.get('polyemb', nan):.0f}"
        lines.append(
            f"{r.scenario:<9}{r.texts:>7}{r.distinct:>9}{summary['median_reference_per_s']:>26.1f}"
            f"{summary['median_polyemb_per_s']:>11.1f}{r.ratio:>7.2f}x{r.min_row_cosine:>11.6f}{peak:>25}"
        )
    return "\n".join(lines)


def to_json(meta: dict[str, Any], results: list[ScenarioResult]) -> str:
    """The report as one JSON object."""
    return json.dumps({**meta, "scenarios": {r.scenario: r.summary() for r in results}}, indent=2)
