"""The store object: open a folder, look vectors up, append new ones; maintenance delegated."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from polyemb.embedder import VectorSpec
from polyemb.errors import InvalidInputError, StoreError
from polyemb.options import check_mib
from polyemb.store import maintenance, writer
from polyemb.store import stats as store_stats
from polyemb.store.index import FileIndex, ModelIndex, RowGroupCache, group_starts
from polyemb.store.keys import digest_words, hash_words
from polyemb.store.layout import (
    MARKER,
    MODEL_FILE,
    can_hold_new_store,
    check_marker,
    description_text,
    is_store,
    local_folder,
    marker_text,
    model_descriptions,
    model_dir,
    part_name,
    run_dir,
    run_id,
)
from polyemb.store.quarantine import BadFiles
from polyemb.store.stored import InFlight, StoredEncoder, default_encoder_or

if TYPE_CHECKING:
    from polyemb.encoder import Encoder

__all__ = ["CACHE_MB", "VectorStore", "open_store"]

# Decoded row groups kept in memory for repeated lookups (DuckDB asks 2,048 rows at a time).
CACHE_MB = 128.0

# Every open store, so that a forked child can give each its own run and fresh locks.
_open_stores: weakref.WeakSet[VectorStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        store._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class VectorStore:
    """A folder of Parquet files mapping (model key, text hash) to float32 vectors.

    Open one with :func:`open_store`. Safe to share between threads; several processes (and
    Spark jobs) may read and write one store at once. See :mod:`polyemb.store` for the layout.

    Attributes:
        path: The store's folder.
        read_only: Never write (lookups only; new texts are embedded but not stored).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        on_write_error: writer.WriteErrors = "raise",
        cache_mb: float = CACHE_MB,
        create: bool = True,
    ) -> None:
        if on_write_error not in ("raise", "warn"):
            raise InvalidInputError(f"on_write_error must be 'raise' or 'warn', got {on_write_error!r}")
        self.path = local_folder(path)
        self.read_only = read_only
        self._writes = writer.WriteGuard(self.path, on_write_error)
        self._lock = threading.RLock()
        self.in_flight = InFlight()  # what this process's calls are embedding now
        self._indexes: dict[str, ModelIndex] = {}
        self._cache = RowGroupCache(cache_mb)
        self._bad_files = BadFiles(move=not read_only)
        self._new_run()
        self._open(create)
        _open_stores.add(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """A store is its folder: another process (a spawned worker) opens it again, with its own run."""
        reopen = functools.partial(
            open_store,
            read_only=self.read_only,
            on_write_error=self.on_write_error,
            cache_mb=self._cache.max_bytes / 2**20,
            create=self.read_only,  # read-only makes nothing; a writable one must still be there
        )
        return (reopen, (self.path.absolute(),))

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"VectorStore({str(self.path)!r}, {mode})"

    @property
    def on_write_error(self) -> writer.WriteErrors:
        """What a failed write does: ``"raise"``, or ``"warn"`` once and go on without storing."""
        return self._writes.on_write_error

    def _open(self, create: bool) -> None:
        if is_store(self.path):
            check_marker(self.path)
            return
        if not create:
            raise StoreError(
                f"{self.path} is not a polyemb vector store (no {MARKER}, no model=* folders); "
                "open_store(path) without create=False creates one in a new or empty folder"
            )
        if not can_hold_new_store(self.path):
            if is_store(self.path):  # another process created it between the two checks
                check_marker(self.path)
                return
            raise StoreError(
                f"{self.path} exists and is not a polyemb store (no {MARKER}); give an empty or new folder"
            )
        if not self.read_only:  # read-only, it stays an empty store: every lookup misses
            self._writes.run(lambda: writer.write_text(self.path / MARKER, marker_text(), exist_ok=True))

    def _new_run(self) -> None:
        """A run folder of this process's own (the files of one store object in one process)."""
        self._run = run_id()
        self._sequence = 0
        self._pid = os.getpid()

    def _forked(self) -> None:
        """In a forked child: fresh locks (a parent's thread may have held them) and a run of its own."""
        self._lock = threading.RLock()
        self.in_flight = InFlight()  # the parent's claims: its threads are not here to finish them
        self._writes = writer.WriteGuard(self.path, self._writes.on_write_error)
        self._bad_files = BadFiles(move=not self.read_only)
        for index in self._indexes.values():
            index.bad_files = self._bad_files
        self._new_run()

    def _next_file(self, folder: Path) -> Path:
        """The name of the next file this process writes; call with the lock held."""
        if os.getpid() != self._pid:  # forked without the fork hook (a fork from C code)
            self._new_run()
        self._sequence += 1
        return run_dir(folder, self._run) / part_name(self._sequence)

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
        return self.bind(default_encoder_or(encoder)).encode(
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
        return self.bind(default_encoder_or(encoder)).encode_nullable(
            texts, batch_size=batch_size, normalize=normalize, show_progress=show_progress
        )

    # ------------------------------------------------------------------ lookups and writes

    def model_folder(self, key: str) -> Path:
        """Where the vectors of a model key live."""
        return model_dir(self.path, key)

    def models(self) -> list[tuple[str, dict[str, Any]]]:
        """``(key, description)`` of every model folder, description from ``_model.json`` or a file."""
        return model_descriptions(self.path)

    def lookup(self, spec: VectorSpec, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of ``hashes`` for the model of ``spec``: ``(vectors, found)``.

        Rows not found are zeros. Files written by other processes since the last lookup are
        found too.

        Args:
            spec: The model (its key picks the model folder).
            hashes: Text hashes, as :func:`~polyemb.store.text_hashes` gives them.

        Returns:
            ``(len(hashes), spec.dim)`` float32 and a bool mask of the hashes found.

        Raises:
            StoreError: A hash is not 32 hex digits.
        """
        return self._find(spec, *hash_words(list(hashes), "the lookup"))

    def lookup_digests(self, spec: VectorSpec, digests: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`lookup`, for 16-byte digests (:func:`~polyemb.store.keys.text_digests`), not hex."""
        return self._find(spec, *digest_words(digests))

    def _find(self, spec: VectorSpec, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(hi), spec.dim), dtype=np.float32)
        with self._indexed(spec) as index:
            found = index.lookup(hi, lo, out, self._cache)
        out[~found] = 0
        return out, found

    @contextlib.contextmanager
    def _indexed(self, spec: VectorSpec) -> Iterator[ModelIndex]:
        """The model's index, under the lock; dropped if the work on it stops half-way (Ctrl-C).

        A half-updated index (its arrays of different lengths) would fail every later call or set
        good files aside; dropped, it is built again from the files on the next call.
        """
        with self._lock:
            try:
                index = self._indexes.get(spec.key)
                if index is None:
                    index = ModelIndex(self.model_folder(spec.key), spec, self._bad_files)
                    index.refresh()
                    self._indexes[spec.key] = index
                yield index
            except BaseException:
                self._indexes.pop(spec.key, None)
                raise

    def append(self, spec: VectorSpec, hashes: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Write vectors of one model as one new file (atomically); None if writes are off.

        Args:
            spec: The model the vectors are of.
            hashes: Their texts' hashes (:func:`~polyemb.store.text_hashes`).
            vectors: ``(len(hashes), spec.dim)`` floats.

        Returns:
            The new file, or None where nothing was written (no hashes, read-only, writes failed).

        Raises:
            InvalidInputError: ``vectors`` is not of shape ``(len(hashes), spec.dim)``.
            StoreError: The store cannot be written and ``on_write_error`` is ``"raise"``.
        """
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.shape != (len(hashes), spec.dim):
            raise InvalidInputError(
                f"{len(hashes)} hashes need a ({len(hashes)}, {spec.dim}) matrix, got {matrix.shape}"
            )
        if not len(hashes) or self.read_only or self._writes.failed:
            return None
        hi, lo = hash_words(list(hashes), "the new vectors")
        table, order = writer.sorted_table(spec, hashes, matrix, hi, lo)
        folder = self.model_folder(spec.key)
        with self._lock:
            target = self._next_file(folder)

        written: list[pq.FileMetaData] = []

        def write() -> None:
            nonlocal target
            if not (folder / MODEL_FILE).is_file():
                writer.write_text(folder / MODEL_FILE, description_text(spec), exist_ok=True)
            try:
                written.append(writer.write_table(table, target))
            except FileExistsError:  # a name taken (never replaced): write under a new run
                with self._lock:
                    self._new_run()
                    target = self._next_file(folder)
                written.append(writer.write_table(table, target))

        if not self._writes.run(write):
            return None
        # The row groups as written, not as assumed.
        starts = group_starts(written[0])
        file = FileIndex(target, hi[order], lo[order], np.arange(len(order), dtype=np.int32), starts)
        with self._indexed(spec) as index:
            index.add(file)
        return target

    # ------------------------------------------------------------------ maintenance

    def stats(self) -> store_stats.StoreStats:
        """Entries, distinct texts, files (bad ones too), their mean size, and whether to compact, per model.

        Moves nothing, so a read-only store gives them too.
        """
        return store_stats.stats(self.path)

    def compact(self, *, target_mb: float = store_stats.COMPACT_TARGET_MB) -> maintenance.CompactReport:
        """Merge each model's small files into files of about ``target_mb`` of vectors.

        Among the files merged, each text is kept once, the copy in the first file by path (large
        files are left as they are, and a duplicate between a large and a small file stays;
        lookups take either copy). Every file merged is read whole and checked first; a bad one
        is moved into its model's ``_quarantine/`` folder, never deleted. Safe beside polyemb's
        readers and writers (Python's and Spark's), and beside another compaction: merged files
        appear (atomically, synced) before the small ones are removed, and files written
        meanwhile are left for the next compaction. Also removes temporary files and empty run
        folders that killed writers left more than an hour ago.

        Raises:
            StoreError: The store was opened read-only.
            InvalidInputError: ``target_mb`` is not a number of MiB above 0.
        """
        self._check_writable("compact")
        target_mb = check_mib("target_mb", target_mb)
        report = maintenance.compact(self.path, target_mb=target_mb, bad_files=self._bad_files)
        self._forget_index()
        return report

    def gc(self, keep: Sequence[str]) -> maintenance.GcReport:
        """Drop the vectors of every model but ``keep`` (provenances ``id@fingerprint``, or model keys).

        One model may be given as a str. A provenance keeps every key of that model content (any
        precision or length); a bare fingerprint (``sha256:...`` or a hub commit) does too. A
        model folder whose description cannot be read, or names no model, is kept. Do not run it
        while a job writes a model it drops.

        Raises:
            StoreError: The store was opened read-only.
            InvalidInputError: ``keep`` is empty, or names a model the store does not hold (a
                typo would otherwise drop the model meant): nothing is dropped then.
        """
        self._check_writable("gc")
        report = maintenance.gc(self.path, keep)
        self._forget_index()
        return report

    def _forget_index(self) -> None:
        with self._lock:
            self._indexes.clear()
            self._cache.forget()

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"cannot {what} {self.path}: the store was opened read-only")


def open_store(
    path: str | os.PathLike[str],
    *,
    read_only: bool = False,
    on_write_error: writer.WriteErrors = "raise",
    cache_mb: float = CACHE_MB,
    create: bool = True,
) -> VectorStore:
    """Open (or create) a vector store in a folder.

    Args:
        path: The store's folder: new, empty, or an existing store.
        read_only: Never write: new texts are embedded but not stored.
        on_write_error: When a write fails (a read-only lake path, a full disk): ``"raise"`` a
            :class:`~polyemb.errors.StoreError`, or ``"warn"`` once and go on without storing.
        cache_mb: Memory for decoded vectors kept between lookups.
        create: Create a store in a new or empty folder. False: the folder must hold a store
            already (what a command that reads or maintains one wants).

    Returns:
        The store.

    Raises:
        StoreError: The folder is not a store (and not empty, or ``create`` is False), or
            cannot be created.

    Example:
        >>> store = polyemb.open_store("vectors/")
        >>> df["vector"] = df["title"].emb.encode(store=store)
    """
    return VectorStore(
        path, read_only=read_only, on_write_error=on_write_error, cache_mb=cache_mb, create=create
    )
