"""A persistent vector store: each text is embedded once per model, ever.

An on-disk, content-addressed map from (model key, text hash) to a float32 vector, laid out as a
folder of Parquet files that DuckDB, Spark and pandas read with their own readers::

    STORE/
      _polyemb_store.json                 marks the folder as a store (format and version)
      model=<key>/                        one folder per model key (VectorSpec.key)
        _model.json                       what the key stands for: provenance, dim, settings
        run=<run>/part-<n>.parquet        text_hash STRING, vector LIST<FLOAT>

- The **model key** is 16 hex digits of a SHA-256 over everything that decides a vector: the
  model's content (hub commit or a hash of its files), max_seq_length, precision, normalization,
  pooling and polyemb's vector format (:class:`polyemb.encoder.VectorSpec`). Change any of them
  and the vectors land under another key: a store is never read for another model.
- The **text hash** is the first 32 hex digits (128 bits) of the SHA-256 of the text's UTF-8
  bytes, lone surrogates read as U+FFFD as the encoder reads them. The same in SQL: DuckDB
  ``left(sha256(text), 32)``, Spark ``substr(sha2(text, 256), 1, 32)``.
- Every writer (a process, or a Spark job) writes its own ``run=`` folder, and every file
  appears by an atomic rename when complete. So concurrent writers never touch each other's
  files, a killed writer leaves every file it had finished (and at most a hidden ``.tmp``), and
  readers see whole files only. The same text written twice is harmless: readers take either
  copy (they are the same vector) and ``compact`` keeps one.

Example:
    >>> store = polyemb.open_store("vectors/")
    >>> vectors = store.encode(["a text", "another"], encoder=encoder)   # embeds only what is new
    >>> store.stats()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from polyemb.arrow import vector_type, vectors_from_arrow
from polyemb.embedder import Embedder, VectorSpec, check_texts, place_nulls, replace_surrogates
from polyemb.errors import InvalidInputError, StoreError

if TYPE_CHECKING:
    from polyemb.encoder import Encoder

__all__ = [
    "CompactReport",
    "GcReport",
    "ModelStats",
    "StoreStats",
    "StoredEncoder",
    "VectorStore",
    "open_store",
    "text_hashes",
]

logger = logging.getLogger(__name__)

MARKER = "_polyemb_store.json"
MODEL_FILE = "_model.json"
STORE_VERSION = 1
HASH_COLUMN = "text_hash"
VECTOR_COLUMN = "vector"
# Rows per Parquet row group: a lookup reads whole row groups, so small ones waste less on
# scattered hits; 8,192 rows of 768 floats is 24 MiB.
ROW_GROUP_ROWS = 8_192
# New vectors per file: a writer killed mid-run keeps every file it finished.
WRITE_ROWS = 16_384
# Decoded row groups kept in memory for repeated lookups (DuckDB asks 2,048 rows at a time).
CACHE_MB = 128.0
# A compacted file holds at most this many bytes of vectors.
COMPACT_TARGET_MB = 256.0
# Hidden temporary files older than this are a killed writer's: compact and gc remove them.
STALE_SECONDS = 3_600

WriteErrors = Literal["raise", "warn"]


# --------------------------------------------------------------------------- keys


def text_hashes(texts: Iterable[str]) -> list[str]:
    """The store key of each text: 32 hex digits (128 bits) of the SHA-256 of its UTF-8 bytes.

    Lone surrogates (which UTF-8 cannot hold) are read as U+FFFD, as the encoder reads them.

    Example:
        >>> text_hashes(["hello"])
        ['2cf24dba5fb0a30e26e83b2ac5b9e29e']
    """
    return [digest.hex() for digest in _digests(texts)]


def _digests(texts: Iterable[str]) -> list[bytes]:
    """The first 16 bytes of each text's SHA-256: :func:`text_hashes` before the hex."""
    out = []
    for text in texts:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            data = replace_surrogates(text).encode("utf-8")
        out.append(hashlib.sha256(data).digest()[:16])
    return out


def _digest_words(digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """16-byte digests as (high, low) uint64 words, as :func:`_hash_words` reads their hex."""
    words = np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy()


def _hash_words(
    hashes: pa.Array | pa.ChunkedArray | Sequence[str], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """32-hex-digit hashes as two uint64 words each (high, low), vectorized."""
    array = pa.array(hashes, pa.string()) if not isinstance(hashes, (pa.Array, pa.ChunkedArray)) else hashes
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type != pa.string():
        array = array.cast(pa.string())
    n = len(array)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=n + 1, offset=array.offset * 4)
    if array.null_count or not np.array_equal(np.diff(offsets), np.full(n, 32, dtype=np.int32)):
        raise StoreError(f"{source}: the {HASH_COLUMN} column must hold 32 hex digits in every row")
    raw = array.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[0]) + 32 * n]
    try:
        packed = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        packed = b""
    if len(packed) != 16 * n:  # fromhex skips whitespace: a short result is a malformed hash
        raise StoreError(f"{source}: the {HASH_COLUMN} column holds a value that is not 32 hex digits")
    words = np.frombuffer(packed, dtype=">u8").reshape(n, 2).astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy()


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ModelStats:
    """One model key of a store."""

    key: str
    provenance: str
    dim: int | None
    entries: int  # rows in its files, a text written twice counted twice
    distinct: int
    files: int
    bytes: int


@dataclass(frozen=True)
class StoreStats:
    """What :meth:`VectorStore.stats` found."""

    path: Path
    models: list[ModelStats]
    bytes: int  # every file of the store, temporary ones included

    def format(self) -> str:
        """A readable table (what ``polyemb store stats`` prints)."""
        lines = [
            f"store: {self.path} ({_size(self.bytes)} on disk)",
            f"{'model key':<18}{'entries':>11}{'distinct':>11}{'files':>7}{'size':>12}  provenance",
        ]
        for m in self.models:
            lines.append(
                f"{m.key:<18}{m.entries:>11,}{m.distinct:>11,}{m.files:>7}{_size(m.bytes):>12}  "
                f"{m.provenance} (dim {m.dim})"
            )
        if not self.models:
            lines.append("(no vectors yet)")
        return "\n".join(lines)


@dataclass(frozen=True)
class CompactReport:
    """What :meth:`VectorStore.compact` did."""

    files_before: int
    files_after: int
    entries: int  # rows kept in the merged files
    duplicates_dropped: int
    temporary_removed: int


@dataclass(frozen=True)
class GcReport:
    """What :meth:`VectorStore.gc` did."""

    kept: list[str]  # model keys
    dropped: list[str]
    bytes_freed: int


@dataclass
class RunStats:
    """Counters of a :class:`StoredEncoder`: distinct texts looked up, found, embedded, written."""

    looked_up: int = 0
    found: int = 0
    embedded: int = 0
    written: int = 0
    files_written: int = 0


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return ""  # pragma: no cover


# --------------------------------------------------------------------------- one model's index


@dataclass
class _Segment:
    """One Parquet file of a model: its hashes sorted, and where each row sits."""

    path: Path
    hi: np.ndarray  # sorted high words
    lo: np.ndarray  # low words, in the same order
    rows: np.ndarray  # int32: the file row of each sorted hash
    group_starts: np.ndarray  # first row of each row group, and the total at the end

    @classmethod
    def read(cls, path: Path) -> _Segment:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        if HASH_COLUMN not in names or VECTOR_COLUMN not in names:
            raise StoreError(
                f"{path} is not a store file: it needs the columns {HASH_COLUMN} and {VECTOR_COLUMN}"
            )
        hashes = parquet.read(columns=[HASH_COLUMN]).column(0)
        hi, lo = _hash_words(hashes, str(path))
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        return cls.from_words(path, hi, lo, np.cumsum([0, *sizes]))

    @classmethod
    def from_words(cls, path: Path, hi: np.ndarray, lo: np.ndarray, group_starts: np.ndarray) -> _Segment:
        if len(hi) > 1 and not (hi[1:] >= hi[:-1]).all():  # polyemb writes sorted; Spark does not
            order = np.argsort(hi, kind="stable")
            hi, lo, rows = hi[order], lo[order], order.astype(np.int32)
        else:
            rows = np.arange(len(hi), dtype=np.int32)
        return cls(path, hi, lo, rows, np.asarray(group_starts, dtype=np.int64))

    def find(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, file rows)`` of the wanted hashes (rows meaningful where found).

        Matches on all 128 bits. Two stored hashes sharing the high word (odds ~1e-7 at 5M
        entries) can hide one another: the hidden one reads as missing and is embedded again,
        never as another text's vector.
        """
        if not len(self.hi):
            return np.zeros(len(hi), dtype=bool), np.zeros(len(hi), dtype=np.int64)
        at = np.minimum(np.searchsorted(self.hi, hi), len(self.hi) - 1)
        found = (self.hi[at] == hi) & (self.lo[at] == lo)
        return found, self.rows[at]


class _RowGroupCache:
    """Decoded vector row groups, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[tuple[Path, int], np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, path: Path, group: int, dim: int) -> np.ndarray:
        key = (path, group)
        matrix = self._items.get(key)
        if matrix is not None:
            self._items.move_to_end(key)
            return matrix
        # One thread: pyarrow's thread pool costs more than it saves on a 10 MB row group.
        column = (
            pq.ParquetFile(path).read_row_group(group, columns=[VECTOR_COLUMN], use_threads=False).column(0)
        )
        try:
            matrix, valid = vectors_from_arrow(column, name=f"{path}")
        except InvalidInputError as exc:
            raise StoreError(f"{path} holds a malformed vector: {exc}") from exc
        if not valid.all() or matrix.shape[1] != dim:
            raise StoreError(
                f"{path} holds a NULL vector or vectors of dimension {matrix.shape[1]}, not {dim}"
            )
        if matrix.nbytes <= self.max_bytes:
            self._items[key] = matrix
            self._bytes += matrix.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
        return matrix

    def forget(self, paths: set[Path] | None = None) -> None:
        """Drop the row groups of ``paths`` (None: all)."""
        for key in [k for k in self._items if paths is None or k[0] in paths]:
            self._bytes -= self._items.pop(key).nbytes


class _Shard:
    """The files of one model key, indexed in memory by hash.

    Most files sit in one merged index (a single binary search finds a hash in any of them);
    files added since the last merge (a writer's own, or other writers') are searched one by
    one until there are ``PENDING_FILES`` of them, then merged in.
    """

    PENDING_FILES = 16

    def __init__(self, folder: Path, spec: VectorSpec) -> None:
        self.folder = folder
        self.spec = spec
        self.segments: dict[Path, _Segment] = {}
        self.unreadable: set[Path] = set()
        self._merged: list[_Segment] = []
        self._pending: list[_Segment] = []
        self._hi = self._lo = np.zeros(0, dtype=np.uint64)
        self._file = self._row = np.zeros(0, dtype=np.int32)

    def add(self, segment: _Segment) -> None:
        """Index one more file."""
        if segment.path in self.segments:
            return
        self.segments[segment.path] = segment
        self._pending.append(segment)
        if len(self._pending) > self.PENDING_FILES:
            self._merge()

    def reset(self) -> None:
        """Forget every file (they are indexed again by the next refresh)."""
        self.segments.clear()
        self._merged, self._pending = [], []
        self._hi = self._lo = np.zeros(0, dtype=np.uint64)
        self._file = self._row = np.zeros(0, dtype=np.int32)

    def _merge(self) -> None:
        first = len(self._merged)
        hi = np.concatenate([self._hi, *(s.hi for s in self._pending)])
        order = np.argsort(hi, kind="stable")  # sorted runs: a merge, in linear time
        self._hi = hi[order]
        self._lo = np.concatenate([self._lo, *(s.lo for s in self._pending)])[order]
        files = [np.full(len(s.hi), first + i, dtype=np.int32) for i, s in enumerate(self._pending)]
        self._file = np.concatenate([self._file, *files])[order]
        self._row = np.concatenate([self._row, *(s.rows for s in self._pending)])[order]
        for segment in self._pending:  # their hashes live in the merged arrays now
            segment.hi = segment.lo = np.zeros(0, dtype=np.uint64)
            segment.rows = np.zeros(0, dtype=np.int32)
        self._merged += self._pending
        self._pending = []

    def refresh(self) -> bool:
        """Index files that appeared since the last look, forget vanished ones; True if any changed."""
        present = set(_data_files(self.folder))
        vanished = set(self.segments) - present
        if vanished:  # compacted away: index what is there again
            self.reset()
        added = False
        for path in sorted(present - set(self.segments) - self.unreadable):
            try:
                self.add(_Segment.read(path))
            except FileNotFoundError:  # compacted away between listing and reading
                continue
            except (StoreError, pa.ArrowException, OSError) as exc:
                # One bad file (truncated, foreign) must not stop every lookup: skip it, say so once.
                self.unreadable.add(path)
                warnings.warn(
                    f"skipping {path}: not a readable store file ({exc}); its texts are embedded "
                    "again. Remove it, or run polyemb store compact",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            added = True
        if len(self._pending) > 1:
            self._merge()
        return added or bool(vanished)

    def lookup(self, hi: np.ndarray, lo: np.ndarray, out: np.ndarray, cache: _RowGroupCache) -> np.ndarray:
        """Fill ``out`` rows of the hashes found; return the found mask."""
        found = np.zeros(len(hi), dtype=bool)
        files = np.zeros(len(hi), dtype=np.int32)
        rows = np.zeros(len(hi), dtype=np.int64)
        if len(self._hi):
            at = np.minimum(np.searchsorted(self._hi, hi), len(self._hi) - 1)
            found = (self._hi[at] == hi) & (self._lo[at] == lo)
            files[found], rows[found] = self._file[at[found]], self._row[at[found]]
        for offset, segment in enumerate(self._pending, start=len(self._merged)):
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            hit, where = segment.find(hi[todo], lo[todo])
            found[todo[hit]], files[todo[hit]], rows[todo[hit]] = True, offset, where[hit]
        everything = self._merged + self._pending
        for file in np.unique(files[found]).tolist():
            segment = everything[file]
            targets = np.flatnonzero(found & (files == file))
            groups = np.searchsorted(segment.group_starts, rows[targets], side="right") - 1
            for group in np.unique(groups).tolist():
                in_group = targets[groups == group]
                matrix = cache.get(segment.path, group, self.spec.dim)
                out[in_group] = matrix[rows[in_group] - segment.group_starts[group]]
        return found


def _data_files(folder: Path) -> Iterator[Path]:
    """The finished Parquet files under a model folder (no hidden, temporary or ``_`` files)."""
    if not folder.is_dir():
        return
    for run in folder.iterdir():
        if not run.is_dir() or run.name.startswith((".", "_")):
            continue
        for path in run.iterdir():
            if path.suffix == ".parquet" and not path.name.startswith((".", "_")) and path.is_file():
                yield path


def run_id() -> str:
    """A new writer's run folder name: UTC time, process id and a random suffix (never reused)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the store


class VectorStore:
    """A folder of Parquet files mapping (model key, text hash) to float32 vectors.

    Open one with :func:`open_store`. Safe to share between threads; several processes (and
    Spark jobs) may read and write one store at once. See the module documentation for the
    layout.

    Attributes:
        path: The store's folder.
        read_only: Never write (lookups only; new texts are embedded but not stored).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        on_write_error: WriteErrors = "raise",
        cache_mb: float = CACHE_MB,
    ) -> None:
        if on_write_error not in ("raise", "warn"):
            raise InvalidInputError(f"on_write_error must be 'raise' or 'warn', got {on_write_error!r}")
        text = os.fspath(path)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text) and not text.startswith("file://"):
            raise StoreError(
                f"{text} is a URL: open_store reads and writes local folders (and mounts). For a store on "
                "a lake, use polyemb.spark.embed_incremental or the lake job's --store, which go through "
                "Spark's file systems; DuckDB reads it with read_parquet"
            )
        self.path = Path(text.removeprefix("file://")).expanduser()
        self.read_only = read_only
        self.on_write_error: WriteErrors = on_write_error
        self._lock = threading.RLock()
        self._shards: dict[str, _Shard] = {}
        self._cache = _RowGroupCache(cache_mb)
        self._run = run_id()
        self._sequence = 0
        self._writes_failed = False
        self._open()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"VectorStore({str(self.path)!r}, {mode})"

    def _open(self) -> None:
        marker = self.path / MARKER
        if marker.is_file():
            try:
                info = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot read {marker}: {exc}") from exc
            if not isinstance(info, dict):
                raise StoreError(f"{marker} is not a polyemb store marker (not a JSON object)")
            if info.get("version", 0) > STORE_VERSION:
                raise StoreError(
                    f"{self.path} is a version {info.get('version')} store; this polyemb reads up to "
                    f"version {STORE_VERSION}: upgrade polyemb"
                )
            return
        if self.path.is_dir() and any(self.path.glob("model=*")):
            return  # written by Spark, which leaves no marker on a lake
        visible = [p for p in self.path.iterdir() if not p.name.startswith(".")] if self.path.is_dir() else []
        # Hidden entries do not count: another process may be writing the marker this moment.
        if self.path.exists() and (not self.path.is_dir() or visible):
            raise StoreError(
                f"{self.path} exists and is not a polyemb store (no {MARKER}); give an empty or new folder"
            )
        if self.read_only:
            return  # an empty store: every lookup misses
        content = {
            "format": "polyemb-store",
            "version": STORE_VERSION,
            "text_hash": "first 32 hex digits of SHA-256 of the UTF-8 text",
            "layout": "model=<key>/run=<run>/part-<n>.parquet with columns text_hash, vector",
        }
        self._write_safely(lambda: _write_text(marker, json.dumps(content, indent=2) + "\n"))

    # ------------------------------------------------------------------ encoding

    def bind(self, encoder: Encoder) -> StoredEncoder:
        """``encoder`` behind this store: an :class:`~polyemb.encoder.Embedder` for the adapters."""
        if not callable(getattr(encoder, "vector_spec", None)):  # an Encoder (duck-typed: no torch import)
            raise InvalidInputError(f"bind takes an Encoder, got {type(encoder).__name__}")
        return StoredEncoder(self, encoder)

    def encode(
        self,
        texts: Iterable[str],
        *,
        encoder: Encoder | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Vectors of ``texts``, embedding (and storing) only those the store lacks for this model.

        Args:
            texts: Any sequence or iterable of str.
            encoder: The Encoder; default :func:`polyemb.default_encoder`.
            batch_size: Passed to ``Encoder.encode``.
            normalize: Passed to ``Encoder.encode`` (part of the model key).
            show_progress: A progress bar over the texts to embed.

        Returns:
            ``(len(texts), dim)`` float32, rows in input order, equal to what the encoder gives.
        """
        return self.bind(_encoder(encoder)).encode(
            texts, batch_size=batch_size, normalize=normalize, show_progress=show_progress
        )

    def encode_nullable(
        self,
        texts: Iterable[str | None],
        *,
        encoder: Encoder | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`encode`, None marking a missing text: ``(vectors, valid)``."""
        return self.bind(_encoder(encoder)).encode_nullable(
            texts, batch_size=batch_size, normalize=normalize, show_progress=show_progress
        )

    # ------------------------------------------------------------------ lookups and writes

    def model_folder(self, key: str) -> Path:
        """Where the vectors of a model key live."""
        return self.path / f"model={key}"

    def lookup(self, spec: VectorSpec, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of ``hashes`` for the model of ``spec``: ``(vectors, found)``.

        Rows not found are zeros. Files written by other processes since the last lookup are
        found too.
        """
        hi, lo = _hash_words(list(hashes), "the lookup")
        out = np.empty((len(hashes), spec.dim), dtype=np.float32)
        found = self._lookup(spec, hi, lo, out)
        out[~found] = 0
        return out, found

    def _lookup(self, spec: VectorSpec, hi: np.ndarray, lo: np.ndarray, out: np.ndarray) -> np.ndarray:
        with self._lock:
            shard = self._shard(spec)
            for attempt in range(3):
                try:
                    found = shard.lookup(hi, lo, out, self._cache)
                    if found.all() or not shard.refresh():
                        return found
                    # Files from other writers appeared: look the misses up in them too.
                    missing = np.flatnonzero(~found)
                    part = np.zeros((len(missing), spec.dim), dtype=np.float32)
                    more = shard.lookup(hi[missing], lo[missing], part, self._cache)
                    out[missing[more]] = part[more]
                    found[missing[more]] = True
                    return found
                except FileNotFoundError:
                    # Compacted away by another process: index what is there now, and retry.
                    if attempt == 2:
                        raise
                    self._cache.forget(set(shard.segments))
                    shard.reset()
                    shard.refresh()
            raise AssertionError("unreachable")  # pragma: no cover

    def _shard(self, spec: VectorSpec) -> _Shard:
        shard = self._shards.get(spec.key)
        if shard is None:
            shard = _Shard(self.model_folder(spec.key), spec)
            shard.refresh()
            self._shards[spec.key] = shard
        return shard

    def append(self, spec: VectorSpec, hashes: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Write vectors of one model as one new file (atomically); None if writes are off.

        Raises:
            StoreError: The store cannot be written and ``on_write_error`` is ``"raise"``.
        """
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.shape != (len(hashes), spec.dim):
            raise InvalidInputError(
                f"{len(hashes)} hashes need a ({len(hashes)}, {spec.dim}) matrix, got {matrix.shape}"
            )
        if not len(hashes) or self.read_only or self._writes_failed:
            return None
        hi, lo = _hash_words(list(hashes), "the new vectors")
        order = np.lexsort((lo, hi))
        table = pa.table(
            {
                HASH_COLUMN: pa.array([hashes[i] for i in order], pa.string()),
                VECTOR_COLUMN: pa.FixedSizeListArray.from_arrays(
                    pa.array(matrix[order].reshape(-1)), spec.dim
                ),
            }
        )
        table = table.cast(store_schema(spec.dim, description(spec)))
        with self._lock:
            self._sequence += 1
            folder = self.model_folder(spec.key)
            target = folder / f"run={self._run}" / f"part-{self._sequence:05d}.parquet"

        def write() -> None:
            if not (folder / MODEL_FILE).is_file():
                _write_text(folder / MODEL_FILE, json.dumps(description(spec), indent=2) + "\n")
            _write_table(table, target)

        if not self._write_safely(write):
            return None
        metadata = pq.read_metadata(target)  # the row groups as written, not as assumed
        groups = np.cumsum([0, *(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))])
        segment = _Segment(target, hi[order], lo[order], np.arange(len(order), dtype=np.int32), groups)
        with self._lock:
            self._shard(spec).add(segment)
        return target

    def _write_safely(self, write: Any) -> bool:
        """Run a write; on an OS error raise a clear StoreError, or warn once and stop writing."""
        try:
            write()
            return True
        except OSError as exc:
            message = (
                f"cannot write to the vector store at {self.path} ({type(exc).__name__}: {exc}). "
                "Open it with on_write_error='warn' to use it read-only (new vectors are computed "
                "but not stored), or give a writable folder"
            )
            if self.on_write_error == "raise":
                raise StoreError(message) from exc
            with self._lock:
                first = not self._writes_failed
                self._writes_failed = True
            if first:
                warnings.warn(message + "; writes are skipped from now on", RuntimeWarning, stacklevel=4)
            return False

    # ------------------------------------------------------------------ maintenance

    def models(self) -> list[tuple[str, dict[str, Any]]]:
        """``(key, description)`` of every model folder, description from ``_model.json`` or a file."""
        found: list[tuple[str, dict[str, Any]]] = []
        if not self.path.is_dir():
            return found
        for folder in sorted(self.path.glob("model=*")):
            if folder.is_dir():
                found.append((folder.name.split("=", 1)[1], _read_description(folder)))
        return found

    def stats(self) -> StoreStats:
        """Entries, distinct texts, files and size on disk per model."""
        models = []
        for key, description in self.models():
            files = list(_data_files(self.model_folder(key)))
            entries = distinct = 0
            seen: list[tuple[np.ndarray, np.ndarray]] = []
            for path in files:
                segment = _Segment.read(path)
                entries += len(segment.hi)
                seen.append((segment.hi, segment.lo))
            if seen:
                words = np.stack(
                    [np.concatenate([h for h, _ in seen]), np.concatenate([lo for _, lo in seen])], 1
                )
                distinct = len(np.unique(words, axis=0))
            models.append(
                ModelStats(
                    key=key,
                    provenance=str(description.get("provenance", "unknown")),
                    dim=description.get("dim"),
                    entries=entries,
                    distinct=distinct,
                    files=len(files),
                    bytes=_tree_bytes(self.model_folder(key)),
                )
            )
        return StoreStats(self.path, models, _tree_bytes(self.path))

    def compact(self, *, target_mb: float = COMPACT_TARGET_MB) -> CompactReport:
        """Merge each model's small files into files of about ``target_mb`` of vectors.

        Among the files merged, each text is kept once (large files are left as they are, and a
        duplicate between a large and a small file stays; lookups take either copy). Safe beside
        polyemb's readers and writers: merged files appear (atomically) before the small ones are
        removed, and files written meanwhile are left for the next compaction. A Spark job that
        has already listed the store's files fails if they vanish under it: do not compact while
        one reads the store. Also removes temporary files and empty run folders that killed
        writers left more than an hour ago.
        """
        self._check_writable("compact")
        before = after = kept_total = dropped_total = 0
        for key, description in self.models():
            files = sorted(_data_files(self.model_folder(key)))
            before += len(files)
            dim = int(description.get("dim") or _file_dim(files))
            target_rows = max(ROW_GROUP_ROWS, int(target_mb * 2**20 // (dim * 4)))
            small = [path for path in files if pq.ParquetFile(path).metadata.num_rows < target_rows]
            if len(small) < 2:
                after += len(files)
                continue
            run = self.model_folder(key) / f"run=compact-{run_id()}"
            try:
                written, kept, dropped = _merge(small, run, store_schema(dim, description), target_rows)
            except FileNotFoundError:  # another compaction took these files: nothing lost
                after += len(list(_data_files(self.model_folder(key))))
                continue
            for path in small:
                path.unlink(missing_ok=True)
            kept_total += kept
            dropped_total += dropped
            after += len(files) - len(small) + written
        removed = _remove_leftovers(self.path)
        self._forget_index()
        return CompactReport(before, after, kept_total, dropped_total, removed)

    def gc(self, keep: Sequence[str]) -> GcReport:
        """Drop the vectors of every model but ``keep`` (provenances ``id@fingerprint``, or model keys).

        A provenance keeps every key of that model content (any precision or length); a bare
        fingerprint (``sha256:...`` or a hub commit) does too. A model folder whose description
        cannot be read is kept. Do not run it while a job writes a model it drops.

        Raises:
            InvalidInputError: ``keep`` is empty, or names a model the store does not hold (a
                typo would otherwise drop the model meant): nothing is dropped then.
        """
        self._check_writable("gc")
        if not keep:
            raise InvalidInputError("gc needs at least one model to keep (a provenance or a model key)")
        wanted = {item.strip() for item in keep}
        models = self.models()
        matches: dict[str, set[str]] = {}
        for key, description in models:
            provenance = str(description.get("provenance", ""))
            fingerprint = str(description.get("fingerprint", provenance.rsplit("@", 1)[-1]))
            matches[key] = {item for item in wanted if item == key or item.rsplit("@", 1)[-1] == fingerprint}
        unmatched = wanted.difference(*matches.values())
        if unmatched:
            present = [f"{key} ({description.get('provenance', 'unknown')})" for key, description in models]
            raise InvalidInputError(
                f"nothing dropped: {sorted(unmatched)} match(es) no model in {self.path}, so gc could "
                f"drop a model you meant to keep. The store holds: {present or 'no models'}"
            )
        kept, dropped, freed = [], [], 0
        for key, description in models:
            if matches[key] or not description:  # a model we cannot identify is never dropped
                kept.append(key)
                continue
            folder = self.model_folder(key)
            freed += _tree_bytes(folder)
            shutil.rmtree(folder)
            dropped.append(key)
        _remove_leftovers(self.path)
        self._forget_index()
        return GcReport(kept, dropped, freed)

    def _forget_index(self) -> None:
        with self._lock:
            self._shards.clear()
            self._cache.forget()

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"cannot {what} {self.path}: the store was opened read-only")


class StoredEncoder:
    """An :class:`~polyemb.encoder.Encoder` behind a :class:`VectorStore`: an Embedder.

    ``encode`` looks every distinct text up in the store, embeds only the ones it lacks for this
    model (in files of ``WRITE_ROWS``, each stored as soon as it is done), and returns the same
    vectors the encoder gives, in input order. ``stats`` counts what it did.
    """

    def __init__(self, store: VectorStore, encoder: Encoder) -> None:
        self.store = store
        self.encoder = encoder
        self.stats = RunStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StoredEncoder({self.store!r}, {self.encoder!r})"

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self.encoder.dim

    @property
    def provenance(self) -> str:
        """The encoder's provenance."""
        return self.encoder.provenance

    def encode(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """As :meth:`Encoder.encode`, embedding only what the store lacks (see :meth:`VectorStore.encode`)."""
        items = check_texts(texts, allow_none=False)
        return self._encode(items, batch_size=batch_size, normalize=normalize, show_progress=show_progress)

    def encode_nullable(
        self,
        texts: Iterable[str | None],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Encoder.encode_nullable`, through the store."""
        items = check_texts(texts, allow_none=True)
        return place_nulls(
            items,
            self.dim,
            lambda present: self._encode(
                present, batch_size=batch_size, normalize=normalize, show_progress=show_progress
            ),
        )

    def _encode(
        self, items: list[str], *, batch_size: int | None, normalize: bool, show_progress: bool | None
    ) -> np.ndarray:
        spec = self.encoder.vector_spec(normalize=normalize)
        index: dict[str, int] = {}
        inverse = np.fromiter(
            (index.setdefault(t, len(index)) for t in items), dtype=np.intp, count=len(items)
        )
        unique = list(index)
        digests = _digests(unique)
        hi, lo = _digest_words(digests)
        vectors = np.empty((len(unique), spec.dim), dtype=np.float32)  # every row is filled below
        found = self.store._lookup(spec, hi, lo, vectors)
        missing = np.flatnonzero(~found)
        disable = (len(missing) < 5_000 or None) if show_progress is None else not show_progress
        written = files = 0
        with tqdm(total=len(missing), unit="text", desc="embedding new texts", disable=disable) as bar:
            for start in range(0, len(missing), WRITE_ROWS):
                rows = missing[start : start + WRITE_ROWS]
                fresh = self.encoder.encode(
                    [unique[i] for i in rows.tolist()],
                    batch_size=batch_size,
                    normalize=normalize,
                    show_progress=False,
                )
                vectors[rows] = fresh
                if self.store.append(spec, [digests[i].hex() for i in rows.tolist()], fresh) is not None:
                    written += len(rows)
                    files += 1
                bar.update(len(rows))
        with self._stats_lock:
            self.stats.looked_up += len(unique)
            self.stats.found += int(found.sum())
            self.stats.embedded += len(missing)
            self.stats.written += written
            self.stats.files_written += files
        return vectors if len(unique) == len(items) else vectors[inverse]


def open_store(
    path: str | os.PathLike[str],
    *,
    read_only: bool = False,
    on_write_error: WriteErrors = "raise",
    cache_mb: float = CACHE_MB,
) -> VectorStore:
    """Open (or create) a vector store in a folder.

    Args:
        path: The store's folder: new, empty, or an existing store.
        read_only: Never write: new texts are embedded but not stored.
        on_write_error: When a write fails (a read-only lake path, a full disk): ``"raise"`` a
            :class:`~polyemb.errors.StoreError`, or ``"warn"`` once and go on without storing.
        cache_mb: Memory for decoded vectors kept between lookups.

    Returns:
        The store.

    Raises:
        StoreError: The folder is not a store (and not empty), or cannot be created.

    Example:
        >>> store = polyemb.open_store("vectors/")
        >>> df["vector"] = df["title"].emb.encode(store=store)
    """
    return VectorStore(path, read_only=read_only, on_write_error=on_write_error, cache_mb=cache_mb)


# --------------------------------------------------------------------------- files


def store_schema(dim: int, about: dict[str, Any] | None) -> pa.Schema:
    """The Arrow schema of a store file: the hash, the vector, and what the model is in the metadata."""
    return pa.schema(
        [pa.field(HASH_COLUMN, pa.string()), pa.field(VECTOR_COLUMN, vector_type(dim))],
        metadata={b"polyemb": json.dumps(about).encode()} if about else None,
    )


def description(spec: VectorSpec) -> dict[str, Any]:
    """What a model key stands for, as ``_model.json`` and every file's metadata record it."""
    return {"key": spec.key, "provenance": spec.provenance, "model_id": spec.model_id, **spec.content()}


def _read_description(folder: Path) -> dict[str, Any]:
    """A model folder's ``_model.json``, else the description in one of its files (Spark's too)."""
    try:
        return dict(json.loads((folder / MODEL_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    for path in _data_files(folder):
        metadata = pq.ParquetFile(path).schema_arrow.metadata or {}
        if b"polyemb" in metadata:
            return dict(json.loads(metadata[b"polyemb"]))
        spark_schema = metadata.get(b"org.apache.spark.sql.parquet.row.metadata")
        if spark_schema:
            for column in json.loads(spark_schema).get("fields", []):
                if column.get("name") == VECTOR_COLUMN and "polyemb" in column.get("metadata", {}):
                    return dict(json.loads(column["metadata"]["polyemb"]))
    return {}


def _file_dim(files: list[Path]) -> int:
    for path in files:
        matrix, _ = vectors_from_arrow(
            pq.ParquetFile(path).read_row_group(0, columns=[VECTOR_COLUMN]).column(0)
        )
        return int(matrix.shape[1])
    return 1


_PARQUET_OPTIONS: dict[str, Any] = {
    "row_group_size": ROW_GROUP_ROWS,
    "compression": {HASH_COLUMN: "zstd", VECTOR_COLUMN: "none"},  # random floats do not compress
    "use_dictionary": False,
}


def _atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a hidden temporary file beside ``target``, then rename it into place: all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _write_table(table: pa.Table, target: Path) -> None:
    _atomically(target, lambda path: pq.write_table(table, path, **_PARQUET_OPTIONS))


def _write_text(target: Path, text: str) -> None:
    _atomically(target, lambda path: path.write_text(text, encoding="utf-8"))


def _merge(inputs: list[Path], run: Path, schema: pa.Schema, target_rows: int) -> tuple[int, int, int]:
    """Copy ``inputs`` into files of about ``target_rows`` in ``run``, each hash once.

    Holds one output file's rows at a time. Returns ``(files written, rows kept, duplicates dropped)``.
    """
    segments = [_Segment.read(path) for path in inputs]
    hi = np.concatenate([s.hi for s in segments])
    lo = np.concatenate([s.lo for s in segments])
    _, first = np.unique(np.stack([hi, lo], 1), axis=0, return_index=True)
    keep_all = np.zeros(len(hi), dtype=bool)
    keep_all[first] = True
    pending: list[pa.Table] = []
    written = kept = offset = 0

    def flush() -> None:
        nonlocal written
        if pending:
            _write_table(pa.concat_tables(pending), run / f"part-{written:05d}.parquet")
            written += 1
            pending.clear()

    for segment in segments:
        rows = np.sort(segment.rows[keep_all[offset : offset + len(segment.hi)]])
        offset += len(segment.hi)
        if len(rows):
            pending.append(
                _as_store_table(pq.read_table(segment.path).take(pa.array(rows)), schema, segment.path)
            )
            kept += len(rows)
        if sum(t.num_rows for t in pending) >= target_rows:
            flush()
    flush()
    return written, kept, len(hi) - kept


def _as_store_table(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    """A store file's rows in the store schema (Spark writes vectors as variable lists)."""
    try:
        matrix, valid = vectors_from_arrow(table.column(VECTOR_COLUMN), name=str(source))
    except InvalidInputError as exc:
        raise StoreError(f"{source} holds a malformed vector: {exc}") from exc
    if not valid.all():
        raise StoreError(f"{source} holds a NULL vector")
    dim = schema.field(VECTOR_COLUMN).type.list_size
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    return pa.Table.from_arrays([table.column(HASH_COLUMN).cast(pa.string()), vectors], schema=schema)


def _remove_leftovers(root: Path) -> int:
    """Remove stale (an hour old) hidden temporary files and empty run folders; return the files removed."""
    removed = 0
    now = time.time()
    for path in root.rglob(".*.tmp"):
        try:
            if now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
                removed += 1
        except OSError:
            continue
    for run in root.glob("model=*/run=*"):
        try:
            if now - run.stat().st_mtime > STALE_SECONDS:
                run.rmdir()  # only if empty; a fresh one may belong to a writer about to write
        except OSError:
            continue
    return removed


def _tree_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _encoder(encoder: Encoder | None) -> Encoder:
    from polyemb.encoder import default_encoder

    return encoder if encoder is not None else default_encoder()


def embedder(encoder: Encoder | None, store: VectorStore | None) -> Embedder:
    """What the adapters encode with: the encoder (default: the default one), behind ``store`` if given."""
    model = _encoder(encoder)
    if store is None:
        return model
    if not isinstance(store, VectorStore):
        raise InvalidInputError(
            f"store must be a VectorStore (polyemb.open_store(path)), got {type(store).__name__}"
        )
    return store.bind(model)
