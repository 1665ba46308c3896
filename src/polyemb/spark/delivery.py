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

Every shipment is named by the sha256 of the very bytes shipped (``ModelSource.content``), and
a worker checks what it is about to load against it (or, for ``"path"``, against the
fingerprint the driver found): a worker never computes vectors of another model than the one
the driver named, whatever happened to a folder or a hub branch in between.

Worker side, :func:`worker_encoder` loads the model at most once per Python process, keyed by
what decides its vectors (the model's content, the precision and length as resolved for this
worker's device and model, and the device), so two UDFs asking for the same model in other
words (``precision="auto"`` and ``"fp32"`` on a CPU; no length and the model's own) share one
copy. A task Spark gave a GPU runs on it; a CPU task caps torch to the task's CPUs.
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

from polyemb import finding, loading
from polyemb.embedder import VectorSpec
from polyemb.encoder import Encoder, cap_cpu_threads, describe, load
from polyemb.errors import InvalidInputError, ModelMismatchError
from polyemb.options import (
    DELIVERIES,
    LONG_TEXTS,
    Delivery,
    LongTexts,
    Precision,
    WeightPrecision,
    check_choice,
)

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
    fingerprint: str  # what the model is: the hub commit, or the sha256 of a folder's files
    delivery: Literal["broadcast", "artifact", "path"]
    precision: Precision
    max_seq_length: int | None
    revision: str | None = None  # the hub commit; None for a local folder
    broadcast: Any = None  # pyspark Broadcast of {relative path: bytes}
    artifact: str | None = None  # the archive's file name; Spark unpacks it into a folder so named
    content: str = ""  # sha256 of the files shipped (broadcast, artifact): what a worker must find
    long_texts: LongTexts = "truncate"  # the workers' load arguments (checked when they load)
    stride: int | None = None
    # What shipping took on the driver ({"model", "delivery", "files", "mib", "seconds"}; None for
    # "path"), for benchmarks and logs. Left out of equality: it says nothing of what workers load.
    shipment: dict[str, Any] | None = field(default=None, compare=False)


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
    fingerprint: str | None = None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> ModelSource:
    """Ship the model to ``spark``'s executors as ``delivery`` says; the handle workers load from.

    Args:
        spark: The session; None: the active one (not needed for ``"path"``).
        model: Hub id or folder; None: ``$POLYEMB_MODEL``, else the default model.
        delivery: ``"auto"``, ``"broadcast"``, ``"artifact"`` or ``"path"``.
        precision: As for :func:`polyemb.load`.
        max_seq_length: As for :func:`polyemb.load`.
        revision: Hub revision.
        fingerprint: The model content the caller's vectors must be of (a store key's): refuse
            any other.
        long_texts: As for :func:`polyemb.load` (checked when the workers load).
        stride: As for :func:`polyemb.load`.

    Raises:
        InvalidInputError: A bad delivery or precision, or a delivery the session cannot do.
        ModelNotFoundError: The model is neither a folder nor on the hub.
        ModelMismatchError: The model found is not ``fingerprint`` (it changed meanwhile).
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
    files = finding.find_model(model, revision=revision)
    base = ModelSource(
        files.model_id,
        "",
        "path",
        precision,
        max_seq_length,
        revision=files.revision,
        long_texts=long_texts,
        stride=stride,
    )
    if chosen == "path":
        where = files.model_id if files.revision else str(files.folder)
        source = replace(base, model=where, fingerprint=finding.fingerprint(files))
        _check_fingerprint(source, fingerprint)
        return source
    started = time.perf_counter()
    paths = finding.model_files(files.folder)
    if chosen == "broadcast":
        payload = {path.relative_to(files.folder).as_posix(): path.read_bytes() for path in paths}
        content = finding.ContentHash()
        for relative, data in payload.items():
            content.add(relative, data)
        size = sum(len(data) for data in payload.values())
        source = replace(base, delivery="broadcast", content=content.value())
    else:
        archive, digest = _archive(files.folder, paths)
        size = archive.stat().st_size
        source = replace(base, delivery="artifact", artifact=archive.name, content=digest)
    # A folder's fingerprint is the hash of its files: of the bytes shipped, read once.
    source = replace(source, fingerprint=files.revision or source.content)
    _check_fingerprint(source, fingerprint)
    if chosen == "broadcast":
        source = replace(source, broadcast=session.sparkContext.broadcast(payload))  # type: ignore[union-attr]
    else:
        session.addArtifacts(str(archive), archive=True)  # type: ignore[union-attr]
    shipment = {
        "model": files.model_id,
        "delivery": chosen,
        "files": len(paths),
        "mib": round(size / 2**20, 1),
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("shipped the model: %s", shipment)
    return replace(source, shipment=shipment)


def _check_fingerprint(source: ModelSource, expected: str | None) -> None:
    if expected is not None and source.fingerprint != expected:
        raise ModelMismatchError(
            f"the model {source.model} is {source.fingerprint} now, not the {expected} the vectors' key "
            "was made from: it changed (a hub branch moved, a folder was rewritten) while the job was "
            "being planned. Nothing was computed; run it again (or pin revision= to a commit)"
        )


class _Hashing:
    """A file object that hashes what is read from it: the archive's content id is of the bytes tarred."""

    def __init__(self, handle: Any, digest: finding.ContentHash) -> None:
        self._handle = handle
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._handle.read(size)
        self._digest.update(data)
        return data


# Archives made by this process: {(folder, every file's name, size and mtime): (archive, content)}.
_archives: dict[tuple[Any, ...], tuple[Path, str]] = {}


def _archive(folder: Path, paths: list[Path]) -> tuple[Path, str]:
    """A tar of the model's files and the sha256 of what it holds, made once per content (atomically).

    Named by that content, so a session that already has it is sent the same name again; Spark
    unpacks it into a folder of that name next to each Python worker.
    """
    stats = [(path.relative_to(folder).as_posix(), path.stat()) for path in paths]
    signature = (str(folder), *((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    made = _archives.get(signature)
    if made is not None and made[0].is_file():
        return made
    root = Path(tempfile.gettempdir()) / "polyemb-archives"
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".polyemb-model.{os.getpid()}.{uuid.uuid4().hex}.tar"
    digest = finding.ContentHash()
    try:
        with tarfile.open(staging, "w") as tar:
            for path in paths:
                relative = path.relative_to(folder).as_posix()
                with path.open("rb") as handle:
                    info = tar.gettarinfo(arcname=relative, fileobj=handle)
                    digest.add(relative)
                    tar.addfile(info, _Hashing(handle, digest))
        content = digest.value()
        target = root / f"polyemb-model-{_safe(content)}.tar"
        if not target.is_file():
            os.replace(staging, target)  # same name, same content: replacing one is harmless
    finally:
        staging.unlink(missing_ok=True)
    _archives[signature] = (target, content)
    return target, content


def _safe(fingerprint: str) -> str:
    return fingerprint.replace(":", "-").replace("/", "-")


# ---------------------------------------------------------------------- worker side

_encoders: dict[tuple[str, int | None, str], Encoder] = {}  # (VectorSpec.key, stride asked, device)
_resolved: dict[tuple[Any, ...], tuple[str, VectorSpec]] = {}  # what a ModelSource resolved to here
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
    target = root / _safe(source.content or source.fingerprint)
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


def _concrete_precision(precision: Precision, device: str) -> WeightPrecision:
    """The precision ``load`` gives on ``device``: ``"auto"`` is fp32 on a CPU, fp16 on a GPU."""
    if precision != "auto":
        return precision
    import torch

    return (
        "fp32" if loading.resolve_dtype("auto", loading.resolve_device(device)) == torch.float32 else "fp16"
    )


def _resolve(source: ModelSource, device: str) -> tuple[str, VectorSpec]:
    """Where to load ``source`` from on this worker, and what its vectors will be, checked.

    Reads the model's settings (not its weights) and hashes its files: what the worker is about
    to load must be the content the driver named.

    Raises:
        ModelMismatchError: It is another model (a folder that differs on this executor, a stale copy).
    """
    where = materialize(source)
    spec = describe(
        where,
        precision=_concrete_precision(source.precision, device),
        max_seq_length=source.max_seq_length,
        revision=source.revision if source.delivery == "path" else None,
        long_texts=source.long_texts,
        stride=source.stride,
    )
    # A shipped copy is a folder here, named by the hash of its files; "path" loads what the
    # driver named, a hub commit or a folder's hash.
    expected = (source.content or source.fingerprint) if source.delivery != "path" else source.fingerprint
    if spec.fingerprint != expected:
        hint = (
            "give every executor the same model folder, or use delivery='auto' to ship it"
            if source.delivery == "path"
            else "the copy on this machine is not what the driver shipped; remove it and run again"
        )
        raise ModelMismatchError(
            f"the model at {where} on this executor is {spec.fingerprint}, not the {expected} the "
            f"driver named: {hint}. Nothing was computed with it"
        )
    return where, spec


def worker_encoder(source: ModelSource) -> Encoder:
    """The Encoder of this Python worker for ``source``, loaded on first use.

    One Encoder per model content, resolved precision, resolved length, long-text setting and
    stride, and device, whichever UDF asks for it.
    """
    device, cpus = task_resources()
    request = (
        source.model,
        source.fingerprint,
        source.content,
        source.delivery,
        source.artifact,
        source.revision,
        source.precision,
        source.max_seq_length,
        source.long_texts,
        source.stride,
        device,
    )
    with _worker_lock:
        resolved = _resolved.get(request)
        if resolved is None:
            resolved = _resolved[request] = _resolve(source, device)
        where, spec = resolved
        # The store key leaves out the stride with "truncate" (it changes no vector), but
        # encode_chunks cuts windows by the encoder's stride: one Encoder per stride too.
        cached = (spec.key, source.stride, device)
        encoder = _encoders.get(cached)
        if encoder is None:
            started = time.perf_counter()
            encoder = load(
                where,
                device=device,
                precision=spec.precision,
                max_seq_length=spec.max_seq_length,
                revision=source.revision if source.delivery == "path" else None,
                long_texts=spec.long_texts,
                stride=source.stride,
            )
            _encoders[cached] = encoder
            event = {
                "pid": os.getpid(),
                "fingerprint": source.fingerprint,
                "device": device,
                "delivery": source.delivery,
                "precision": spec.precision,
                "max_seq_length": spec.max_seq_length,
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
