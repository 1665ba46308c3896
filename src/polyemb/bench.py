"""Benchmarks: polyemb against references on the same texts, in the same run, in turns.

Every figure is a median over rounds; each round times every side on identical input, in a
rotating order so that no side always runs on a warmer machine. Ratios are against one
baseline side of the same run (sentence-transformers with torch fp32 by default).

Sides: polyemb at any precision; sentence-transformers with torch; sentence-transformers'
ONNX and OpenVINO backends, in fp32 and int8, run by :func:`peer_side` in a child process of
another Python if their extras do not install beside polyemb's; DuckDB's ``embed()``; the
Spark UDF.
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

from polyemb._platform import cpu_description
from polyemb.arrow import texts_from_arrow
from polyemb.encoder import Encoder
from polyemb.errors import InvalidInputError
from polyemb.similarity import cosine
from polyemb.tables import read_table, table_format
from polyemb.testing import SAMPLE_SENTENCES

__all__ = [
    "SCENARIOS",
    "cpu_description",
    "Measured",
    "ScenarioResult",
    "SideResult",
    "load_texts",
    "make_scenario",
    "run_bench",
    "scenario_texts",
]

SCENARIOS = {
    "a": "distinct real sentences of STS length",
    "b": "a column where each text appears 10 times, in random order",
    "c": "long paragraphs (truncated at max_seq_length)",
}


@dataclass
class SideResult:
    """One encoder's figures in one scenario: rates and ratios per round, quality, memory."""

    per_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    mean_row_cosine: float = float("nan")
    min_row_cosine: float = float("nan")
    peak_mib: float = float("nan")

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

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the scenario's facts and each side's summary."""
        return {
            "scenario": self.scenario,
            "description": self.description,
            "texts": self.texts,
            "distinct": self.distinct,
            "baseline": self.baseline,
            "sides": {name: side.summary() for name, side in self.sides.items()},
        }


@dataclass(frozen=True)
class Measured:
    """What a side that times itself returns (a child process): its vectors, seconds, peak MiB."""

    vectors: np.ndarray
    seconds: float
    peak_mib: float


Side = Callable[[list[str]], "np.ndarray | Measured"]


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


def held_out(texts_file: str | None, column: str | None, exclude: Sequence[str], count: int) -> list[str]:
    """Up to ``count`` texts of ``texts_file`` (or generated ones) that are not in ``exclude``.

    For calibrating a peer's int8 export on other texts than the ones it is timed and compared on.
    """
    used = set(exclude)
    pool = load_texts(texts_file, column) if texts_file else _generated_sentences(len(used) + count, 1)
    return [text for text in dict.fromkeys(pool) if text not in used][:count]


# ---------------------------------------------------------------------- measuring

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


def _timed(run: Side, texts: list[str]) -> tuple[float, np.ndarray, float]:
    gc.collect()
    _reset_peak()
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
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[ScenarioResult]:
    """Time every side on each scenario's texts, round after round, in a rotating order.

    Round r starts with side r (mod the number of sides), so that no side always runs first or
    last on a warmer or cooler machine. Each side encodes 32 texts first, untimed.
    """
    if baseline not in sides:
        raise InvalidInputError(f"the baseline {baseline!r} is not one of the sides {list(sides)}")
    results = []
    names = list(sides)
    for name, texts in scenarios.items():
        result = ScenarioResult(name, SCENARIOS.get(name, name), len(texts), len(set(texts)), baseline)
        result.sides = {side: SideResult() for side in names}
        warm = texts[: min(32, len(texts))]
        for run in sides.values():
            run(warm)
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


PEERS = {
    "st-onnx": ("onnx", "fp32"),
    "st-onnx-int8": ("onnx", "int8"),
    "st-openvino": ("openvino", "fp32"),
    "st-openvino-int8": ("openvino", "int8"),
}
"""sentence-transformers backends :func:`peer_side` runs: name -> (backend, precision)."""

# Runs in the peer Python (sentence-transformers with the onnx / openvino extras, no polyemb):
# argv = model folder, backend, precision. stdin: one JSON line of calibration texts, then one
# JSON line per request {"texts", "out"}; the answers go, one JSON line each, to the original
# stdout, while everything the libraries print goes to stderr.
_PEER_CHILD = r"""
import json, os, shutil, sys, tempfile, time
import numpy as np
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
folder, backend, precision = sys.argv[1:4]
calibration = json.loads(sys.stdin.readline())
from sentence_transformers import SentenceTransformer
import sentence_transformers
work = tempfile.mkdtemp(prefix="polyemb-peer-")
copy = os.path.join(work, "model")
shutil.copytree(folder, copy)  # exports are written into the copy, never into the user's folder
model = SentenceTransformer(copy, backend=backend, device="cpu")
if precision == "int8" and backend == "onnx":
    from sentence_transformers import export_dynamic_quantized_onnx_model
    export_dynamic_quantized_onnx_model(model, "avx512_vnni", copy)
    model = SentenceTransformer(copy, backend="onnx", device="cpu",
                                model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
elif precision == "int8":
    # Static int8 as sentence-transformers' export_static_quantized_openvino_model makes it (NNCF),
    # calibrated on the texts given here, since its own calibration set comes from the hub.
    import nncf, openvino
    ov = model.transformers_model
    batches = []
    for i in range(0, len(calibration), 32):
        tokens = model.tokenizer(calibration[i:i + 32], padding=True, truncation=True,
                                 max_length=model.max_seq_length, return_tensors="np")
        batches.append({name: tokens[name] for name in ov.input_names if name in tokens})
    quantized = nncf.quantize(ov.model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(batches))
    openvino.save_model(quantized, os.path.join(copy, "openvino", "openvino_model_qint8.xml"))
    model = SentenceTransformer(copy, backend="openvino", device="cpu",
                                model_kwargs={"file_name": "openvino/openvino_model_qint8.xml"})
answers.write(json.dumps({"sentence_transformers": sentence_transformers.__version__}) + "\n")
answers.flush()
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
for line in sys.stdin:
    request = json.loads(line)
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    started = time.perf_counter()
    vectors = model.encode(request["texts"], convert_to_numpy=True, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    np.save(request["out"], np.asarray(vectors, dtype=np.float32))
    answers.write(json.dumps({"seconds": seconds, "peak_mib": peak()}) + "\n")
    answers.flush()
shutil.rmtree(work, ignore_errors=True)
"""


def peer_side(
    encoder: Encoder, name: str, python: str, calibration: list[str]
) -> tuple[Side, dict[str, Any]]:
    """A sentence-transformers backend (a key of :data:`PEERS`) in a child process of ``python``.

    The child copies the model folder, exports it (int8: ONNX dynamic quantization for
    AVX-512 VNNI, or OpenVINO static quantization calibrated on ``calibration``), then encodes
    what it is sent and times itself. Returns the side and a dict with the child's versions.

    Raises:
        InvalidInputError: ``python`` cannot run the backend (the message has the child's last
            lines of output, and how to make such an environment).
    """
    import subprocess
    import tempfile

    backend, precision = PEERS[name]
    log = tempfile.NamedTemporaryFile(prefix=f"polyemb-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    child = subprocess.Popen(
        [python, "-c", _PEER_CHILD, str(encoder.folder), backend, precision],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    work = Path(tempfile.mkdtemp(prefix="polyemb-peer-out-"))

    def answer() -> dict[str, Any]:
        line = child.stdout.readline() if child.stdout else ""
        if not line:
            child.kill()
            tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-15:]
            raise InvalidInputError(
                f"{name} could not run in {python} (log: {log.name}):\n  " + "\n  ".join(tail) + "\n"
                "Make a Python for it with: python3 -m venv .venv-peers && .venv-peers/bin/pip install "
                "torch==2.13.0 'sentence-transformers[onnx,openvino]', then pass --peer-python "
                ".venv-peers/bin/python"
            )
        return dict(json.loads(line))

    def send(value: Any) -> None:
        try:
            assert child.stdin is not None
            child.stdin.write(json.dumps(value) + "\n")
            child.stdin.flush()
        except BrokenPipeError:  # the child has gone: answer() says why
            pass

    send(calibration)
    info = {name: answer()}

    def run(texts: list[str]) -> Measured:
        out = work / "vectors.npy"
        send({"texts": texts, "out": str(out)})
        figures = answer()
        return Measured(np.load(out), float(figures["seconds"]), float(figures["peak_mib"]))

    return run, info


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


def local_spark(app: str, conf: dict[str, str]) -> Any:
    """The benchmarks' Spark: ``local[2]``, no UI or progress bars, errors-only logs, plus ``conf``.

    Its Python workers run this Python (the one with polyemb), not whatever ``python3`` is first
    on PATH, as when ``.venv/bin/polyemb bench`` runs without the venv activated.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_side(
    encoder: Encoder, batch_size: int | None
) -> tuple[Callable[[list[str]], np.ndarray], dict[str, Any]]:
    """The Spark UDF on ``local[2]`` (model broadcast to the Python workers), same texts.

    Returns the run function and a dict that fills with the broadcast's size and time and the
    Python workers' peak memory.
    """
    from polyemb.arrow import vectors_from_arrow
    from polyemb.spark.delivery import model_source
    from polyemb.spark.udfs import embed_with

    session = local_spark("polyemb-bench", {"spark.python.worker.reuse": "true"})
    # What embed_udf does, kept in two steps so that the shipment's figures can be read.
    source = model_source(
        session,
        encoder.folder,
        delivery="broadcast",
        precision=encoder.precision,
        max_seq_length=encoder.max_seq_length,
        revision=None,
    )
    embed = embed_with(source, batch_size)
    info: dict[str, Any] = {"shipment": source.shipment}

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


# ---------------------------------------------------------------------- memory per precision

# One precision in a fresh process, as a Spark Python worker holds one model: argv = model,
# precision, texts JSON file. Prints one JSON line (or {"error"} if the precision cannot load).
_FOOTPRINT_CHILD = """
import json, sys, time
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")
before = status("VmRSS:")
import polyemb
from polyemb.errors import PolyembError
texts = json.load(open(sys.argv[3]))
started = time.perf_counter()
try:
    encoder = polyemb.load(sys.argv[1], precision=sys.argv[2], device="cpu")
except PolyembError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
load_s = time.perf_counter() - started
loaded = status("VmRSS:")
encoder.encode(texts[:32])
started = time.perf_counter()
encoder.encode(texts)
seconds = time.perf_counter() - started
print(json.dumps({"load_s": load_s, "per_s": len(texts) / seconds, "python_mib": before,
                  "loaded_mib": loaded, "peak_mib": status("VmHWM:")}))
"""


def footprints(
    model: str, precisions: Sequence[str], texts: list[str], *, rounds: int = 2
) -> dict[str, dict[str, Any]]:
    """Speed and memory of each precision, each in a process of its own (as a Spark worker).

    Rounds rotate the order of the precisions. Per precision: median texts/s, load seconds,
    and memory (MiB): resident after ``import`` of Python alone, after loading, and the peak
    while encoding. A precision that cannot load here gets ``{"error": message}``.
    """
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(texts, handle)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in precisions}
    try:
        for round_ in range(rounds):
            shift = round_ % len(precisions)
            for precision in [*precisions[shift:], *precisions[:shift]]:
                done = subprocess.run(
                    [sys.executable, "-c", _FOOTPRINT_CHILD, model, precision, handle.name],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                lines = done.stdout.strip().splitlines()
                if done.returncode or not lines:
                    raise InvalidInputError(f"measuring {precision} failed: {done.stderr.strip()[-2000:]}")
                runs[precision].append(json.loads(lines[-1]))
    finally:
        os.unlink(handle.name)
    out: dict[str, dict[str, Any]] = {}
    for precision, figures in runs.items():
        if "error" in figures[0]:
            out[precision] = {"error": figures[0]["error"]}
            continue
        out[precision] = {
            "per_s": statistics.median(f["per_s"] for f in figures),
            "load_s": statistics.median(f["load_s"] for f in figures),
            "loaded_mib": max(f["loaded_mib"] for f in figures),
            "peak_mib": max(f["peak_mib"] for f in figures),
            "python_mib": max(f["python_mib"] for f in figures),
        }
    return out


def format_table(results: list[ScenarioResult]) -> str:
    """A plain-text table of the medians: one line per scenario and side."""
    baseline = results[0].baseline if results else ""
    header = (
        f"{'scenario':<9}{'texts':>6}{'distinct':>9}  {'side':<26}{'texts/s':>9}"
        f"{'vs ' + baseline:>{max(10, len(baseline) + 5)}}{'mean cos':>10}{'min cos':>10}{'peak MiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        for side, figures in r.sides.items():
            summary = figures.summary()
            lines.append(
                f"{r.scenario:<9}{r.texts:>6}{r.distinct:>9}  {side:<26}{summary['median_per_s']:>9.1f}"
                f"{summary['ratio']:>{max(10, len(baseline) + 5) - 1}.2f}x{figures.mean_row_cosine:>10.5f}"
                f"{figures.min_row_cosine:>10.5f}{figures.peak_mib:>10.0f}"
            )
    return "\n".join(lines)


def to_json(meta: dict[str, Any], results: list[ScenarioResult]) -> str:
    """The report as one JSON object."""
    return json.dumps({**meta, "scenarios": {r.scenario: r.summary() for r in results}}, indent=2)
