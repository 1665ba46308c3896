"""How the model gets to Spark's Python workers, and the one Encoder each worker keeps.

Driver side, :func:`model_source` decides from the session it is given how to ship the model:

- ``"broadcast"`` (classic Spark): the model's files in a Spark broadcast; each machine writes
  them once to local disk (``$POLYEMB_MODEL_CACHE``, default ``<tmp>/polyemb-models/``; workers
  racing on one machine are safe: atomic rename) and loads from there.
- ``"artifact"`` (Spark Connect, also classic): the files in one tar archive added to the
  session with ``spark.addArtifacts(..., archive=True)``; Spark unpacks it next to every Python
  worker of the session.
- ``"path"``: each worker loads the hub id, or a path every executor can read.
- ``"auto"``: broadcast on a classic session, artifact on a Spark Connect session.

Worker side, :func:`worker_encoder` loads the model at most once per Python process (keyed by
its fingerprint, device, precision and length) and reuses it for every Arrow batch, task and
query. A task Spark gave a GPU runs on it; a CPU task caps torch to the task's CPUs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from polyemb import loading
from polyemb.encoder import Encoder, cap_cpu_threads, load
from polyemb.errors import InvalidInputError
from polyemb.options import DELIVERIES, LONG_TEXTS, Delivery, LongTexts, Precision, check_choice

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["LOAD_LOG_ENV", "MODEL_CACHE_ENV", "ModelSource", "model_source", "worker_encoder", "worker_loads"]

LOAD_LOG_ENV = "POLYEMB_LOAD_LOG"
MODEL_CACHE_ENV = "POLYEMB_MODEL_CACHE"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """What a worker needs to get the model: picklable and small (a broadcast is a handle)."""

    model: str  # the hub id or folder the driver was given (the folder itself for "path")
    fingerprint: str
    delivery: Literal["broadcast", "artifact", "path"]
    precision: Precision
    max_seq_length: int | None
    revision: str | None = None
    broadcast: Any = None  # pyspark Broadcast of {relative path: bytes}
    artifact: str | None = None  # the archive's file name; Spark unpacks it into a folder so named
    # What shipping took on the driver ({"model", "delivery", "files", "mib", "seconds"}; None for
    # "path"), for benchmarks and logs. Left out of equality: it says nothing of what workers load.
    shipment: dict[str, Any] | None = field(default=None, compare=False)
    long_texts: LongTexts = "truncate"
    stride: int | None = None


# ---------------------------------------------------------------------- driver side


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext, no broadcast)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def active_session(spark: SparkSession | None) -> SparkSession:
    """``spark``, else the session PySpark calls active in this thread."""
    if spark is not None:
        return spark
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None:
        raise InvalidInputError(
            "there is no active SparkSession: create one first (SparkSession.builder...getOrCreate()) "
            "or pass spark="
        )
    return active


def model_source(
    spark: SparkSession | None,
    model: str | os.PathLike[str] | None,
    *,
    delivery: Delivery,
    precision: Precision,
    max_seq_length: int | None,
    revision: str | None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> ModelSource:
    """Ship the model to ``spark``'s executors as ``delivery`` says; the handle workers load from.

    ``long_texts`` and ``stride`` are the workers' ``load`` arguments (checked when they load).

    Raises:
        InvalidInputError: A bad delivery or precision, or a delivery the session cannot do.
        ModelNotFoundError: The model is neither a folder nor on the hub.
    """
    check_choice("delivery", delivery, DELIVERIES)
    check_choice("long_texts", long_texts, LONG_TEXTS)
    if stride is not None and (not isinstance(stride, int) or isinstance(stride, bool) or stride < 0):
        # The bound (below the window's text tokens) is checked where the model is loaded.
        raise InvalidInputError(f"stride must be None or an int >= 0, got {stride!r}")
    loading.resolve_dtype(precision, loading.resolve_device("cpu"))  # a bad precision fails here
    session = active_session(spark) if delivery != "path" else spark
    connect = session is not None and is_connect(session)
    chosen = ("artifact" if connect else "broadcast") if delivery == "auto" else delivery
    if chosen == "broadcast" and connect:
        raise InvalidInputError(
            "delivery='broadcast' needs a classic SparkContext, which a Spark Connect session does "
            "not have; use delivery='artifact' (or 'auto') to ship the model, or 'path' with a "
            "hub id or a path every executor can read"
        )
    files = loading.find_model(model, revision=revision)
    fingerprint = loading.fingerprint(files)
    base = ModelSource(
        files.model_id, fingerprint, "path", precision, max_seq_length, long_texts=long_texts, stride=stride
    )
    if chosen == "path":
        where = files.model_id if files.revision else str(files.folder)
        return replace(base, model=where, revision=files.revision)
    started = time.perf_counter()
    paths = loading.model_files(files.folder)
    if chosen == "broadcast":
        payload = {path.relative_to(files.folder).as_posix(): path.read_bytes() for path in paths}
        handle = session.sparkContext.broadcast(payload)  # type: ignore[union-attr]
        size = sum(len(data) for data in payload.values())
        source = replace(base, delivery="broadcast", broadcast=handle)
    else:
        archive = _archive(files.folder, paths, fingerprint)
        session.addArtifacts(str(archive), archive=True)  # type: ignore[union-attr]
        size = archive.stat().st_size
        source = replace(base, delivery="artifact", artifact=archive.name)
    shipment = {
        "model": files.model_id,
        "delivery": chosen,
        "files": len(paths),
        "mib": round(size / 2**20, 1),
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("shipped the model: %s", shipment)
    return replace(source, shipment=shipment)


def _archive(folder: Path, paths: list[Path], fingerprint: str) -> Path:
    """A tar of the model's files, made once per fingerprint on this machine (atomically).

    Named by the fingerprint, so a session that already has it is sent the same name again;
    Spark unpacks it into a folder of that name next to each Python worker.
    """
    root = Path(tempfile.gettempdir()) / "polyemb-archives"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"polyemb-model-{_safe(fingerprint)}.tar"
    if target.is_file():
        return target
    staging = root / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}"
    try:
        with tarfile.open(staging, "w") as tar:
            for path in paths:
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def _safe(fingerprint: str) -> str:
    return fingerprint.replace(":", "-").replace("/", "-")


# ---------------------------------------------------------------------- worker side

_encoders: dict[tuple[Any, ...], Encoder] = {}
_loads: list[dict[str, Any]] = []
_worker_lock = threading.Lock()


def worker_loads() -> list[dict[str, Any]]:
    """The model loads this Python process made (pid, fingerprint, seconds): for diagnostics."""
    with _worker_lock:
        return list(_loads)


def task_resources() -> tuple[str, int]:
    """The device and CPU count Spark gave the current task (CPU and 1 outside a task)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return "cpu", 1
    gpus = context.resources().get("gpu")
    if gpus is not None and gpus.addresses:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(gpus.addresses[0])}", context.cpus()
    return "cpu", context.cpus()


def materialize(source: ModelSource) -> str:
    """A local folder (or hub id) the worker loads the model from."""
    if source.delivery == "path":
        return source.model
    if source.delivery == "artifact":
        from pyspark import SparkFiles

        folder = Path(SparkFiles.getRootDirectory()) / str(source.artifact)
        if not folder.is_dir():
            raise InvalidInputError(
                f"the model archive {source.artifact} is not unpacked in this worker's session "
                f"folder {SparkFiles.getRootDirectory()}; was it added to another session?"
            )
        return str(folder)
    root = Path(os.environ.get(MODEL_CACHE_ENV) or Path(tempfile.gettempdir()) / "polyemb-models")
    target = root / _safe(source.fingerprint)
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


def worker_encoder(source: ModelSource) -> Encoder:
    """The Encoder of this Python worker for ``source``, loaded on first use."""
    device, cpus = task_resources()
    key = (
        source.fingerprint,
        device,
        source.precision,
        source.max_seq_length,
        source.long_texts,
        source.stride,
    )
    with _worker_lock:
        encoder = _encoders.get(key)
        if encoder is None:
            started = time.perf_counter()
            encoder = load(
                materialize(source),
                device=device,
                precision=source.precision,
                max_seq_length=source.max_seq_length,
                revision=source.revision,
                long_texts=source.long_texts,
                stride=source.stride,
            )
            if source.delivery == "path" and encoder.fingerprint != source.fingerprint:
                # A folder that differs on this executor would write another model's vectors
                # under the driver's key (a store's key) or mix models in one column.
                raise InvalidInputError(
                    f"the model at {source.model} on this executor is {encoder.fingerprint}, not the "
                    f"{source.fingerprint} the driver found: give every executor the same model folder, "
                    "or use delivery='auto' to ship it"
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
        cap_cpu_threads(cpus)
    return encoder


def _log_load(event: dict[str, Any], model: str) -> None:
    """Tell the worker's stderr (and ``$POLYEMB_LOAD_LOG``) about a load; never fails the task."""
    print(
        f"polyemb: worker pid {event['pid']} loaded {model} ({event['delivery']}) on {event['device']} "
        f"in {event['seconds']:.2f}s",
        file=sys.stderr,
    )
    log_dir = os.environ.get(LOAD_LOG_ENV)
    if log_dir:
        try:
            with open(Path(log_dir) / f"loads-{event['pid']}.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event) + "\n")
        except OSError as exc:
            logger.warning("cannot write the load log in %s: %s", log_dir, exc)
