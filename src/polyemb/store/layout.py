"""The store's folder layout, known here only: Python's writer, Spark's and the CLI import it.

::

    STORE/
      _polyemb_store.json                 marks the folder as a store (format and version)
      model=<key>/                        one folder per model key (VectorSpec.key)
        _model.json                       what the key stands for: provenance, dim, settings
        run=<run>/part-<n>.parquet        text_hash STRING, vector LIST<FLOAT>

The path builders take a :class:`~pathlib.Path` (a local store) or a string (any path Spark
reads and writes, ``s3a://...``) and give back the same kind.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from polyemb.arrow import vector_type
from polyemb.errors import StoreError

if TYPE_CHECKING:
    from polyemb.embedder import VectorSpec

__all__ = [
    "HASH_COLUMN",
    "MARKER",
    "MODEL_FILE",
    "QUARANTINE",
    "ROW_GROUP_ROWS",
    "STORE_VERSION",
    "VECTOR_COLUMN",
    "can_hold_new_store",
    "check_marker",
    "check_marker_text",
    "data_files",
    "description",
    "description_from_schema",
    "description_text",
    "is_data_name",
    "is_store",
    "local_folder",
    "marker_text",
    "model_descriptions",
    "model_dir",
    "parse_description",
    "part_name",
    "quarantine_dir",
    "read_description",
    "run_dir",
    "run_id",
    "store_schema",
]

MARKER = "_polyemb_store.json"
MODEL_FILE = "_model.json"
STORE_VERSION = 1
HASH_COLUMN = "text_hash"
VECTOR_COLUMN = "vector"
MODEL_PREFIX = "model="
RUN_PREFIX = "run="
QUARANTINE = "_quarantine"
# Rows per Parquet row group: a lookup reads whole row groups, so small ones waste less on
# scattered hits; 8,192 rows of 768 floats is 24 MiB.
ROW_GROUP_ROWS = 8_192

PathOrUrl = TypeVar("PathOrUrl", Path, str)


# --------------------------------------------------------------------------- paths


def _child(parent: PathOrUrl, name: str) -> PathOrUrl:
    if isinstance(parent, Path):
        return parent / name
    return f"{parent.rstrip('/')}/{name}"


def model_dir(root: PathOrUrl, key: str) -> PathOrUrl:
    """The folder of one model key's vectors.

    Example:
        >>> model_dir("s3a://lake/vectors/", "k0123")
        's3a://lake/vectors/model=k0123'
    """
    return _child(root, f"{MODEL_PREFIX}{key}")


def run_dir(model_folder: PathOrUrl, run: str) -> PathOrUrl:
    """The folder one writer fills (``run`` from :func:`run_id`), inside a model folder."""
    return _child(model_folder, f"{RUN_PREFIX}{run}")


def part_name(sequence: int) -> str:
    """The name of a run's ``sequence``-th data file."""
    return f"part-{sequence:05d}.parquet"


def run_id() -> str:
    """A new writer's run folder name: UTC time, process id and a random suffix (never reused)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def model_folders(root: Path) -> list[tuple[str, Path]]:
    """``(key, folder)`` of every model folder of a store, sorted by key."""
    if not root.is_dir():
        return []
    folders = sorted(root.glob(f"{MODEL_PREFIX}*"))
    return [(folder.name.removeprefix(MODEL_PREFIX), folder) for folder in folders if folder.is_dir()]


def run_folders(root: Path) -> Iterator[Path]:
    """Every run folder of every model of a store (a model folder removed meanwhile has none)."""
    for _, folder in model_folders(root):
        for run in _entries(folder, None):
            if run.name.startswith(RUN_PREFIX):
                yield run


def is_data_name(name: str) -> bool:
    """Whether a file or folder name is one of the store's (not hidden, temporary or ``_`` named).

    The rule Spark and DuckDB's Hive reader apply: names starting ``.`` or ``_`` are not data.
    """
    return not name.startswith((".", "_"))


def data_files(folder: Path, unlisted: list[tuple[Path, OSError]] | None = None) -> list[Path]:
    """The finished Parquet files under a model folder (no hidden, temporary or ``_`` files).

    A run folder removed while it is listed (compacted away) is skipped; one that cannot be
    listed (another user's permissions on shared storage) is skipped and added to ``unlisted``
    with its error. Nothing here raises for one folder.
    """
    files: list[Path] = []
    for run in _entries(folder, unlisted):
        if not is_data_name(run.name) or not run.is_dir():
            continue
        for path in _entries(run, unlisted):
            if path.suffix == ".parquet" and is_data_name(path.name) and path.is_file():
                files.append(path)
    return files


def _entries(folder: Path, unlisted: list[tuple[Path, OSError]] | None) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        if unlisted is not None:
            unlisted.append((folder, exc))
        return []


def quarantine_dir(model_folder: Path) -> Path:
    """Where a model's bad files are set aside: ``_`` named, so no reader (polyemb, Spark, DuckDB) looks."""
    return model_folder / QUARANTINE


def local_folder(path: str | os.PathLike[str]) -> Path:
    """The local folder of a store that Python opens.

    Raises:
        StoreError: ``path`` is a URL (other than ``file://``): only Spark writes stores there.
    """
    text = os.fspath(path)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text) and not text.startswith("file://"):
        raise StoreError(
            f"{text} is a URL: open_store reads and writes local folders (and mounts). For a store on "
            "a lake, use polyemb.spark.embed_incremental or the lake job's --store, which go through "
            "Spark's file systems; DuckDB reads it with read_parquet"
        )
    return Path(text.removeprefix("file://")).expanduser()


# --------------------------------------------------------------------------- the marker


def is_store(folder: Path) -> bool:
    """Whether ``folder`` holds a store: its marker, or model folders (Spark leaves no marker on a lake)."""
    return (folder / MARKER).is_file() or bool(model_folders(folder))


def can_hold_new_store(folder: Path) -> bool:
    """Whether a store may be created in ``folder``: it is new, or an empty folder.

    Hidden entries do not count: another process may be writing the marker this moment.
    """
    if not folder.exists():
        return True
    return folder.is_dir() and all(entry.name.startswith(".") for entry in folder.iterdir())


def check_marker(folder: Path) -> None:
    """Check a store's marker, where it has one.

    Raises:
        StoreError: The marker cannot be read, or is of a newer store version than this polyemb reads.
    """
    marker = folder / MARKER
    if not marker.is_file():
        return
    try:
        text = marker.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot read {marker}: {exc}") from exc
    check_marker_text(text, str(folder))


def check_marker_text(text: str, store: str) -> None:
    """Check the content of the marker of the store at ``store`` (read by Python, or by Spark on a lake).

    Raises:
        StoreError: It is not a polyemb marker, or is of a newer store version than this polyemb reads.
    """
    where = f"{store.rstrip('/')}/{MARKER}"
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"cannot read {where}: {exc}") from exc
    if not isinstance(info, dict):
        raise StoreError(f"{where} is not a polyemb store marker (not a JSON object)")
    version = info.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{where} is not a polyemb store marker: its version is {version!r}, not an integer")
    if version > STORE_VERSION:
        raise StoreError(
            f"{store} is a version {version} store; this polyemb reads up to "
            f"version {STORE_VERSION}: upgrade polyemb"
        )


def marker_text() -> str:
    """The content of a new store's marker."""
    content = {
        "format": "polyemb-store",
        "version": STORE_VERSION,
        "text_hash": "first 32 hex digits of SHA-256 of the UTF-8 text",
        "layout": f"{MODEL_PREFIX}<key>/{RUN_PREFIX}<run>/part-<n>.parquet with columns "
        f"{HASH_COLUMN}, {VECTOR_COLUMN}",
    }
    return _json_text(content)


# --------------------------------------------------------------------------- files and models


def store_schema(dim: int, about: dict[str, Any] | None) -> pa.Schema:
    """The Arrow schema of a store file: the hash, the vector, and what the model is in the metadata."""
    return pa.schema(
        [pa.field(HASH_COLUMN, pa.string()), pa.field(VECTOR_COLUMN, vector_type(dim))],
        metadata={b"polyemb": json.dumps(about).encode()} if about else None,
    )


def description(spec: VectorSpec) -> dict[str, Any]:
    """What a model key stands for, as ``_model.json`` and every file's metadata record it."""
    return {"key": spec.key, "provenance": spec.provenance, "model_id": spec.model_id, **spec.content()}


def description_text(spec: VectorSpec) -> str:
    """The content of a model folder's ``_model.json``."""
    return _json_text(description(spec))


def _json_text(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=2) + "\n"


def parse_description(text: str | bytes) -> dict[str, Any]:
    """A model description from its JSON text (``_model.json``, a file's metadata); ``{}`` if it is none."""
    try:
        content = json.loads(text)
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


def description_from_schema(schema: pa.Schema) -> dict[str, Any]:
    """The description a store file carries in its metadata: polyemb's, or Spark's field metadata."""
    metadata = schema.metadata or {}
    if b"polyemb" in metadata:
        return parse_description(metadata[b"polyemb"])
    spark_schema = metadata.get(b"org.apache.spark.sql.parquet.row.metadata")
    if spark_schema:
        fields = parse_description(spark_schema).get("fields", [])
        for column in fields if isinstance(fields, list) else []:
            about = column.get("metadata", {}) if isinstance(column, dict) else {}
            if column.get("name") == VECTOR_COLUMN and isinstance(about, dict) and "polyemb" in about:
                return parse_description(about["polyemb"])
    return {}


def read_description(folder: Path) -> dict[str, Any]:
    """A model folder's ``_model.json``, else the description in one of its files (Spark's too)."""
    try:
        found = parse_description((folder / MODEL_FILE).read_bytes())
    except OSError:
        found = {}
    if found:
        return found
    for path in data_files(folder):
        try:
            found = description_from_schema(pq.read_schema(path))
        except (OSError, pa.ArrowException, UnicodeDecodeError):  # a bad or vanished file: the next one
            continue
        if found:
            return found
    return {}


def model_descriptions(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(key, description)`` of every model folder of a store (``{}`` where none can be read)."""
    return [(key, read_description(folder)) for key, folder in model_folders(root)]
