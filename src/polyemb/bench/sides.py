"""The sides ``polyemb bench`` times: polyemb and the references it is measured against.

polyemb at any precision; sentence-transformers with torch; sentence-transformers' ONNX and
OpenVINO backends, in fp32 and int8, run by :func:`peer_side` in a child process of another
Python if their extras do not install beside polyemb's; Polars' ``Series.emb.encode()``;
DuckDB's ``embed()``; the Spark UDF.

Importing this module costs no torch (the command line reads :data:`BENCH_SIDES` for its
help); what a side needs is imported when the side is made.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np

from polyemb.bench._spark import local_spark, python_worker_peaks
from polyemb.bench.encode import Measured, Side
from polyemb.bench.texts import held_out
from polyemb.errors import InvalidInputError
from polyemb.options import WEIGHT_PRECISIONS

if TYPE_CHECKING:
    from polyemb.encoder import Encoder
    from polyemb.options import WeightPrecision

__all__ = [
    "BENCH_SIDES",
    "PEERS",
    "PEER_SETUP",
    "duckdb_side",
    "make_sides",
    "peer_side",
    "polars_side",
    "polyemb_side",
    "sentence_transformers_side",
    "side_precision",
    "spark_side",
]

PEERS = {
    "st-onnx": ("onnx", "fp32"),
    "st-onnx-int8": ("onnx", "int8"),
    "st-openvino": ("openvino", "fp32"),
    "st-openvino-int8": ("openvino", "int8"),
}
"""sentence-transformers backends :func:`peer_side` runs: name -> (backend, precision)."""

BENCH_SIDES = (
    "sentence-transformers",
    *PEERS,
    *(f"polyemb-{precision}" for precision in WEIGHT_PRECISIONS),
    "polars",
    "duckdb",
    "spark",
)
"""Every side ``polyemb bench --against`` knows."""

PEER_SETUP = (
    "python3 -m venv .venv-peers && "
    ".venv-peers/bin/pip install torch==2.13.0 'sentence-transformers[onnx,openvino]'"
)
"""How to make a Python for the peers (sentence-transformers 5.x with its ONNX and OpenVINO extras)."""

# How many held-out texts calibrate a peer's static int8 export.
_CALIBRATION_TEXTS = 300


def side_precision(name: str, encoder: Encoder, peers: dict[str, Any] | None = None) -> str:
    """The precision side ``name`` computes in (the reference: fp32 on a CPU, as ``encoder`` on a GPU).

    ``peers``: what the peers reported (:func:`peer_side`); OpenVINO computes in bf16 where the
    CPU has bf16 units, though it is asked for fp32.
    """
    if name in PEERS:
        reported = (peers or {}).get(name, {}).get("computes_in")
        return str(reported) if reported else PEERS[name][1]
    if name.startswith("polyemb-"):
        return name.removeprefix("polyemb-")
    if name == "sentence-transformers" and encoder.device.type == "cpu":
        return "fp32"
    return encoder.precision


def make_sides(
    encoder: Encoder,
    against: Sequence[str],
    scenarios: dict[str, list[str]],
    *,
    batch_size: int | None,
    peer_python: str,
    texts_file: str | None = None,
    column: str | None = None,
) -> tuple[dict[str, Side], dict[str, Any]]:
    """``encoder``'s side first, then each of ``against`` (names of :data:`BENCH_SIDES`), once.

    Peers are calibrated on texts of ``texts_file`` (else generated ones) that no scenario
    times. Returns the sides and what they report of themselves (Spark's shipment, peers'
    versions).

    Raises:
        InvalidInputError: A name that is not a side.
    """
    from polyemb.encoder import load

    unknown = [name for name in against if name not in BENCH_SIDES]
    if unknown:
        raise InvalidInputError(f"unknown sides {unknown}; choose from {', '.join(BENCH_SIDES)}")
    ours = f"polyemb-{encoder.precision}"
    sides: dict[str, Side] = {ours: polyemb_side(encoder, batch_size)}
    extra: dict[str, Any] = {}
    for name in against:
        if name == "sentence-transformers":
            sides[name] = sentence_transformers_side(encoder)
        elif name == "polars":
            sides[name] = polars_side(encoder, batch_size)
        elif name == "duckdb":
            sides[name] = duckdb_side(encoder, batch_size)
        elif name == "spark":
            sides[name], extra["spark"] = spark_side(encoder, batch_size)
        elif name in PEERS:
            timed = [text for texts in scenarios.values() for text in texts]
            calibration = held_out(texts_file, column, timed, _CALIBRATION_TEXTS)
            sides[name], versions = peer_side(encoder, name, peer_python, calibration)
            extra.setdefault("peers", {}).update(versions)
        elif name != ours:  # polyemb at another precision
            other = load(
                encoder.folder,
                device=encoder.device,
                precision=cast("WeightPrecision", name.removeprefix("polyemb-")),  # a side, checked above
                max_seq_length=encoder.max_seq_length,
            )
            sides[name] = polyemb_side(other, batch_size)
    return sides, extra


def polyemb_side(encoder: Encoder, batch_size: int | None) -> Callable[[list[str]], np.ndarray]:
    """``encoder.encode`` itself, without a progress bar."""

    def run(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, batch_size=batch_size, show_progress=False)

    return run


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


@dataclass(frozen=True)
class _Peer:
    """A peer child process: one JSON line in, one JSON line out."""

    name: str
    python: str
    log: Path
    process: subprocess.Popen[str]

    def send(self, value: Any) -> None:
        stdin = cast(IO[str], self.process.stdin)  # a PIPE: never None
        try:
            stdin.write(json.dumps(value) + "\n")
            stdin.flush()
        except BrokenPipeError:  # the child has gone: answer() says why
            pass

    def answer(self) -> dict[str, Any]:
        line = cast(IO[str], self.process.stdout).readline()
        if not line:
            self.process.kill()
            tail = "\n  ".join(self.log.read_text(errors="replace").strip().splitlines()[-15:])
            raise InvalidInputError(
                f"{self.name} could not run in {self.python} (log: {self.log}):\n  {tail}\n"
                f"Make a Python for it with: {PEER_SETUP}, then pass --peer-python .venv-peers/bin/python"
            )
        return dict(json.loads(line))


def peer_side(
    encoder: Encoder, name: str, python: str, calibration: list[str]
) -> tuple[Side, dict[str, Any]]:
    """A sentence-transformers backend (a key of :data:`PEERS`) in a child process of ``python``.

    The child (:mod:`polyemb.bench._peer_child`, run by its path since ``python`` need not have
    polyemb) copies the model folder, exports it (int8: ONNX dynamic quantization for
    AVX-512 VNNI, or OpenVINO static quantization calibrated on ``calibration``), then encodes
    what it is sent and times itself. Returns the side and a dict with the child's versions and
    the precision it computes in.

    Raises:
        InvalidInputError: ``python`` cannot run the backend (the message has the child's last
            lines of output, and how to make such an environment).
    """
    backend, precision = PEERS[name]
    program = Path(__file__).with_name("_peer_child.py")
    with tempfile.NamedTemporaryFile(prefix=f"polyemb-{name}-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [python, str(program), str(encoder.folder), backend, precision],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    peer = _Peer(name, python, Path(log.name), process)
    peer.send(calibration)
    info = {name: peer.answer()}
    out = Path(tempfile.mkdtemp(prefix="polyemb-peer-out-")) / "vectors.npy"

    def run(texts: list[str]) -> Measured:
        peer.send({"texts": texts, "out": str(out)})
        figures = peer.answer()
        return Measured(np.load(out), float(figures["seconds"]), float(figures["peak_mib"]))

    return run, info


def _indexed_table(texts: list[str]) -> Any:
    """Texts as an Arrow table with their position ``i``, so engine output can be put in order."""
    import pyarrow as pa

    return pa.table({"i": pa.array(range(len(texts)), pa.int64()), "t": pa.array(texts, pa.string())})


def polars_side(encoder: Encoder, batch_size: int | None) -> Callable[[list[str]], np.ndarray]:
    """``Series.emb.encode()`` on a Polars Series of the texts, built inside the timing."""
    import polars as pl

    from polyemb.polars import EmbSeriesNamespace  # what Series.emb is, as the type checker sees it

    def run(texts: list[str]) -> np.ndarray:
        series = pl.Series("t", texts, dtype=pl.String)
        vectors = EmbSeriesNamespace(series).encode(
            encoder=encoder, batch_size=batch_size, show_progress=False
        )
        return EmbSeriesNamespace(vectors).to_numpy()

    return run


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
    """The Spark ``embed`` UDF on ``local[2]`` (model broadcast to the Python workers), same texts.

    Returns the run function and a dict with the broadcast's size and time, which fills with the
    Python workers' peak memory as the side runs.
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
        frame = session.createDataFrame(_indexed_table(texts)).repartition(2)
        result = frame.select("i", embed("t").alias("v")).toArrow().sort_by("i")
        info["worker_peak_mib"] = python_worker_peaks()
        return vectors_from_arrow(result.column("v"))[0]

    return run, info
