"""Spark: pandas UDFs that get the model to every Python worker once.

``embed_udf()`` and ``similarity_udf()`` are pandas UDFs for the DataFrame API; ``register()``
makes them ``embed`` and ``semantic_similarity`` in Spark SQL.

How the model reaches the executors (``delivery``):

- ``"broadcast"``: the driver reads the model's files and ships them in a Spark broadcast; each
  worker writes them once to local disk (``$POLYEMB_MODEL_CACHE``, default
  ``<tmp>/polyemb-models/<fingerprint>``; concurrent workers on a node race safely, by atomic
  rename) and loads from there. For executors that reach neither the hub nor shared storage.
- ``"path"``: each worker loads the hub id or a path that every executor can read. The only
  choice under Spark Connect, which has no SparkContext.
- ``"auto"``: broadcast when a SparkContext is available, else path.

Each Python worker loads the model at most once and reuses it across Arrow batches, tasks and
queries (with ``spark.python.worker.reuse``, Spark's default); a per-process cache is keyed by
the model's fingerprint, device, precision and length. A task that Spark gave GPUs
(``TaskContext.resources()["gpu"]``) runs on that GPU in fp16; otherwise on the CPU with torch
threads capped to the task's CPUs (``spark.task.cpus``), so the workers on one machine do not
oversubscribe its cores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from polyemb import loading
from polyemb.arrow import texts_from_arrow
from polyemb.encoder import Encoder, load
from polyemb.errors import InvalidInputError, MissingDependencyError
from polyemb.similarity import paired_cosines

try:
    import pandas as pd
    from pyspark import TaskContext
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType
except ImportError as exc:  # pragma: no cover - exercised only without pyspark
    raise MissingDependencyError(
        "polyemb.spark needs pyspark and pandas: pip install 'polyemb[spark]'"
    ) from exc

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["embed_udf", "register", "similarity_udf", "worker_loads"]

Delivery = Literal["auto", "broadcast", "path"]
LOAD_LOG_ENV = "POLYEMB_LOAD_LOG"
MODEL_CACHE_ENV = "POLYEMB_MODEL_CACHE"

logger = logging.getLogger(__name__)

# The size and time of this driver's latest model broadcast (for benchmarks and logs).
last_broadcast: dict[str, Any] = {}


# ---------------------------------------------------------------------- driver side


@dataclass(frozen=True)
class ModelSource:
    """What a worker needs to get the model: picklable, small (a broadcast is a handle)."""

    model: str
    fingerprint: str
    delivery: Literal["broadcast", "path"]
    precision: str
    max_seq_length: int | None
    revision: str | None = None
    broadcast: Any = None  # pyspark Broadcast of {relative path: bytes}


def _spark_context() -> Any:
    from pyspark import SparkContext

    return SparkContext._active_spark_context


def _source(
    model: str | os.PathLike[str] | None,
    delivery: Delivery,
    precision: str,
    max_seq_length: int | None,
    revision: str | None,
) -> ModelSource:
    if delivery not in ("auto", "broadcast", "path"):
        raise InvalidInputError(f"delivery must be 'auto', 'broadcast' or 'path', got {delivery!r}")
    loading.resolve_dtype(precision, loading.resolve_device("cpu"))  # a bad precision fails here
    context = _spark_context()
    chosen = ("broadcast" if context is not None else "path") if delivery == "auto" else delivery
    if chosen == "broadcast" and context is None:
        raise InvalidInputError(
            "delivery='broadcast' needs a SparkContext, which Spark Connect does not have; "
            "use delivery='path' with a hub id or a path every executor can read"
        )
    files = loading.find_model(model, revision=revision)
    fingerprint = loading.fingerprint(files)
    if chosen == "path":
        where = files.model_id if files.revision else str(files.folder)
        return ModelSource(where, fingerprint, "path", precision, max_seq_length, revision=files.revision)
    started = time.perf_counter()
    payload = _read_model_files(files.folder)
    handle = context.broadcast(payload)
    size = sum(len(data) for data in payload.values())
    seconds = time.perf_counter() - started
    logger.info(
        "broadcast %s (%d files, %.1f MiB) in %.1fs", files.model_id, len(payload), size / 2**20, seconds
    )
    last_broadcast.update(
        model=files.model_id, files=len(payload), mib=round(size / 2**20, 1), seconds=round(seconds, 2)
    )
    return ModelSource(files.model_id, fingerprint, "broadcast", precision, max_seq_length, broadcast=handle)


def _read_model_files(folder: Path) -> dict[str, bytes]:
    """The files a model needs, by path relative to its folder."""
    wanted = (".json", ".safetensors", ".bin", ".model", ".txt")
    payload = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in wanted and path.name != "README.md":
            payload[path.relative_to(folder).as_posix()] = path.read_bytes()
    return payload


# ---------------------------------------------------------------------- worker side

_encoders: dict[tuple[Any, ...], Encoder] = {}
_loads: list[dict[str, Any]] = []
_worker_lock = threading.Lock()


def worker_loads() -> list[dict[str, Any]]:
    """The model loads this Python process made (pid, fingerprint, seconds): for diagnostics."""
    with _worker_lock:
        return list(_loads)


def _task_resources() -> tuple[str, int]:
    """The device and CPU count Spark gave the current task (CPU and 1 outside a task)."""
    context = TaskContext.get()
    if context is None:
        return "cpu", 1
    gpus = context.resources().get("gpu")
    if gpus is not None and gpus.addresses:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(gpus.addresses[0])}", context.cpus()
    return "cpu", context.cpus()


def _materialize(source: ModelSource) -> str:
    """A local folder holding the model: the broadcast's files written once per machine."""
    if source.delivery == "path":
        return source.model
    root = Path(os.environ.get(MODEL_CACHE_ENV) or Path(tempfile.gettempdir()) / "polyemb-models")
    target = root / source.fingerprint.replace(":", "-")
    if target.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}"
    payload: dict[str, bytes] = source.broadcast.value
    for relative, data in payload.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # Drop this worker's copy of the files' bytes: they are on disk now. (A later access would
    # read the broadcast again; the folder check above means there is none.)
    source.broadcast.__dict__.pop("_value", None)
    try:
        staging.rename(target)  # atomic: one worker wins, the others find the folder complete
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return str(target)


def _worker_encoder(source: ModelSource) -> Encoder:
    device, cpus = _task_resources()
    precision = source.precision
    key = (source.fingerprint, device, precision, source.max_seq_length)
    with _worker_lock:
        encoder = _encoders.get(key)
        if encoder is None:
            started = time.perf_counter()
            folder = _materialize(source)
            encoder = load(
                folder,
                device=device,
                precision=precision,  # type: ignore[arg-type]
                max_seq_length=source.max_seq_length,
                revision=source.revision,
            )
            _encoders[key] = encoder
            event = {
                "pid": os.getpid(),
                "fingerprint": source.fingerprint,
                "device": device,
                "delivery": source.delivery,
                "max_seq_length": source.max_seq_length,
                "seconds": round(time.perf_counter() - started, 3),
            }
            _loads.append(event)
            _log_load(event, source.model)
    if device == "cpu":
        import torch

        if torch.get_num_threads() != cpus:
            torch.set_num_threads(cpus)
    return encoder


def _log_load(event: dict[str, Any], model: str) -> None:
    print(
        f"polyemb: worker pid {event['pid']} loaded {model} ({event['delivery']}) on {event['device']} "
        f"in {event['seconds']:.2f}s",
        file=sys.stderr,
    )
    log_dir = os.environ.get(LOAD_LOG_ENV)
    if log_dir:
        with open(Path(log_dir) / f"loads-{event['pid']}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")


def _texts(series: pd.Series, column: str) -> list[str | None]:
    try:
        array = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(f"{column} holds non-text values: {exc}") from exc
    return texts_from_arrow(array, name=column)


def _list_series(vectors: np.ndarray, valid: np.ndarray) -> pd.Series:
    """Vectors as the object Series Spark turns into array<float>: row views, None where NULL."""
    rows: list[np.ndarray | None] = list(vectors)  # views into the matrix, no copies
    for position in np.flatnonzero(~valid).tolist():
        rows[position] = None
    return pd.Series(rows, dtype=object)


# ---------------------------------------------------------------------- the UDFs


def embed_udf(
    model: str | os.PathLike[str] | None = None,
    *,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: loading.Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
) -> Callable[..., Any]:
    """A pandas UDF ``embed(text) -> array<float>``: unit vectors, NULL in -> NULL out.

    Args:
        model: Hub id or folder; None: ``$POLYEMB_MODEL`` on the driver, else the default model.
        delivery: ``"auto"``, ``"broadcast"`` or ``"path"`` (see the module docs).
        batch_size: Texts per forward pass on the workers; None: by token budget.
        precision: ``"auto"`` (fp16 on GPU tasks, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        max_seq_length: Tokens per text; None: the model's.
        revision: Hub revision.

    Example:
        >>> from pyspark.sql import functions as F
        >>> embed = polyemb.spark.embed_udf("/models/mstsb")
        >>> df.withColumn("vector", embed(F.col("title")))
    """
    return _embed_with(_source(model, delivery, precision, max_seq_length, revision), batch_size)


def similarity_udf(
    model: str | os.PathLike[str] | None = None,
    *,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: loading.Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
) -> Callable[..., Any]:
    """A pandas UDF ``semantic_similarity(a, b) -> float``: the cosine of two texts' vectors.

    Either argument may be a literal (``F.lit("query")``): it is encoded once per batch. NULL if
    either side is NULL. Arguments as for :func:`embed_udf`.
    """
    return _similarity_with(_source(model, delivery, precision, max_seq_length, revision), batch_size)


def register(
    spark: SparkSession,
    model: str | os.PathLike[str] | None = None,
    *,
    delivery: Delivery = "auto",
    batch_size: int | None = None,
    precision: loading.Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    prefix: str = "",
) -> None:
    """Register ``embed`` and ``semantic_similarity`` for Spark SQL (names behind ``prefix``).

    The model is delivered once for both functions (one broadcast). Arguments as for
    :func:`embed_udf`.

    Example:
        >>> polyemb.spark.register(spark, "/models/mstsb")
        >>> spark.sql("SELECT id, embed(title) AS v FROM articles")
    """
    if not prefix.replace("_", "a").isalnum() and prefix:
        raise InvalidInputError(f"prefix must be empty or an SQL identifier prefix, got {prefix!r}")
    source = _source(model, delivery, precision, max_seq_length, revision)
    spark.udf.register(f"{prefix}embed", _embed_with(source, batch_size))
    spark.udf.register(f"{prefix}semantic_similarity", _similarity_with(source, batch_size))


def _embed_with(source: ModelSource, batch_size: int | None) -> Callable[..., Any]:
    def make(labels: tuple[str, ...]) -> Callable[..., Any]:
        @pandas_udf(ArrayType(FloatType()))  # type: ignore[untyped-decorator]
        def embed(texts: pd.Series) -> pd.Series:
            encoder = _worker_encoder(source)
            items = _texts(texts, f"embed(): {labels[0]}")
            vectors, valid = encoder.encode_nullable(items, batch_size=batch_size, show_progress=False)
            return _list_series(vectors, valid)

        return embed  # type: ignore[no-any-return]

    return _naming_columns(make, 1)


def _similarity_with(source: ModelSource, batch_size: int | None) -> Callable[..., Any]:
    def make(labels: tuple[str, ...]) -> Callable[..., Any]:
        @pandas_udf(FloatType())  # type: ignore[untyped-decorator]
        def semantic_similarity(left: pd.Series, right: pd.Series) -> pd.Series:
            encoder = _worker_encoder(source)
            a = _texts(left, f"semantic_similarity(): {labels[0]}")
            b = _texts(right, f"semantic_similarity(): {labels[1]}")
            vectors, valid = encoder.encode_nullable(a + b, batch_size=batch_size, show_progress=False)
            scores, ok = paired_cosines(vectors, valid, len(a))
            return pd.Series(scores).where(ok)  # NaN, which Spark reads as NULL

        return semantic_similarity  # type: ignore[no-any-return]

    return _naming_columns(make, 2)


def _naming_columns(make: Callable[[tuple[str, ...]], Callable[..., Any]], arity: int) -> Callable[..., Any]:
    """A pandas UDF whose errors name the columns it was called on.

    Inside a pandas UDF a column arrives unnamed, so each call builds the UDF again with the
    names of its columns for the error messages. The result keeps the pandas UDF's attributes,
    so ``spark.udf.register`` takes it like any pandas UDF (SQL errors name the argument).
    """
    generic = make(tuple(f"argument {i + 1}" for i in range(arity)))

    def call(*columns: Any) -> Any:
        return make(tuple(_column_label(column) for column in columns))(*columns)

    for attribute in (
        "func",
        "returnType",
        "evalType",
        "deterministic",
        "asNondeterministic",
        "__name__",
        "__doc__",
    ):
        setattr(call, attribute, getattr(generic, attribute))
    return call


def _column_label(column: Any) -> str:
    if isinstance(column, str):
        return f"column {column!r}"
    text = str(column)  # Column<'title'> or an expression
    return f"column {text[7:-1]}" if text.startswith("Column<") else f"argument {text}"
