"""The in-memory index: where each stored hash sits, per file and per model, and a row-group cache.

A lookup binary-searches the hashes of a model's files (two uint64 words each, see
:mod:`polyemb.store.keys`), then reads the vectors of the hits by Parquet row group, with the
row group's hashes: a vector is returned only if the hash stored beside it is the one asked for,
so a file changed under an index (or corrupted) never gives another text's vector.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyemb.arrow import vectors_from_arrow
from polyemb.embedder import VectorSpec
from polyemb.errors import InvalidInputError, StoreError
from polyemb.store.keys import hash_words
from polyemb.store.layout import HASH_COLUMN, VECTOR_COLUMN, data_files
from polyemb.store.quarantine import is_bad_content

if TYPE_CHECKING:
    from polyemb.store.quarantine import BadFiles

__all__ = [
    "FileIndex",
    "ModelIndex",
    "RowGroupCache",
    "check_store_table",
    "group_starts",
    "open_parquet",
    "stored_vectors",
]

_LOOKUP_ATTEMPTS = 3


def open_parquet(source: Path | pa.NativeFile) -> pq.ParquetFile:
    """Open a store file for reading, with its pages' checksums verified where it has them.

    Raises:
        StoreError: The footer names a column in bytes that are not UTF-8 (a corrupt footer,
            which Arrow itself lets through).
    """
    try:
        return pq.ParquetFile(source, page_checksum_verification=True)
    except UnicodeDecodeError as exc:
        raise StoreError(f"{source}: a corrupt footer ({exc})") from exc


def group_starts(metadata: pq.FileMetaData) -> np.ndarray:
    """The first row of each row group of a Parquet file, and its row count at the end."""
    return np.cumsum([0, *(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))])


def stored_vectors(
    column: pa.Array | pa.ChunkedArray, source: Path | str, dim: int | None = None
) -> np.ndarray:
    """A store file's vector column as a float32 matrix.

    Raises:
        StoreError: A vector is NULL or malformed, or not of dimension ``dim`` (where given).
    """
    try:
        matrix, valid = vectors_from_arrow(column, name=str(source))
    except InvalidInputError as exc:
        raise StoreError(f"{source} holds a malformed vector: {exc}") from exc
    if not valid.all():
        raise StoreError(f"{source} holds a NULL vector")
    if dim is not None and len(matrix) and matrix.shape[1] != dim:
        raise StoreError(f"{source} holds vectors of dimension {matrix.shape[1]}, not {dim}")
    return matrix


def _check_columns(schema: pa.Schema, source: Path | str) -> None:
    if HASH_COLUMN not in schema.names or VECTOR_COLUMN not in schema.names:
        raise StoreError(
            f"{source} is not a store file: it needs the columns {HASH_COLUMN} and {VECTOR_COLUMN}"
        )


def check_store_table(
    table: pa.Table, source: Path | str, dim: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of a store file, checked: ``(high words, low words, vectors)``.

    What compaction (Python's and Spark's) reads before it merges a file.

    Raises:
        StoreError: A column is missing, a hash is malformed, a vector NULL, malformed or not of ``dim``.
    """
    _check_columns(table.schema, source)
    hi, lo = hash_words(table.column(HASH_COLUMN), str(source))
    return hi, lo, stored_vectors(table.column(VECTOR_COLUMN), source, dim)


@dataclass
class FileIndex:
    """One Parquet file's hashes, sorted, and the file row of each."""

    path: Path
    hi: np.ndarray  # sorted high words
    lo: np.ndarray  # low words, in the same order
    rows: np.ndarray  # int32: the file row of each sorted hash
    group_starts: np.ndarray  # first row of each row group, and the total at the end

    @classmethod
    def read(cls, path: Path) -> FileIndex:
        """Index a store file by reading its hash column.

        Raises:
            StoreError: The file lacks the store's columns, or holds a malformed hash.
        """
        return cls.from_parquet(path, open_parquet(path))

    @classmethod
    def from_parquet(cls, path: Path, parquet: pq.ParquetFile) -> FileIndex:
        """Index an open store file (``path``: its name) by reading its hash column.

        Raises:
            StoreError: The file lacks the store's columns, or holds a malformed hash.
        """
        _check_columns(parquet.schema_arrow, path)
        hi, lo = hash_words(parquet.read(columns=[HASH_COLUMN]).column(0), str(path))
        return cls.from_words(path, hi, lo, group_starts(parquet.metadata))

    @classmethod
    def from_words(cls, path: Path, hi: np.ndarray, lo: np.ndarray, starts: np.ndarray) -> FileIndex:
        """Index hashes given in file order (sorted here if they are not)."""
        if len(hi) > 1 and not (hi[1:] >= hi[:-1]).all():  # polyemb writes sorted; Spark does not
            order = np.argsort(hi, kind="stable")
            hi, lo, rows = hi[order], lo[order], order.astype(np.int32)
        else:
            rows = np.arange(len(hi), dtype=np.int32)
        return cls(path, hi, lo, rows, np.asarray(starts, dtype=np.int64))

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


@dataclass(frozen=True)
class RowGroup:
    """One row group of a store file, decoded: its hashes (two words each) and its vectors."""

    hi: np.ndarray
    lo: np.ndarray
    vectors: np.ndarray

    @property
    def nbytes(self) -> int:
        """Memory held."""
        return int(self.hi.nbytes + self.lo.nbytes + self.vectors.nbytes)


class RowGroupCache:
    """Decoded row groups, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[tuple[Path, int], RowGroup] = OrderedDict()
        self._bytes = 0

    def get(self, path: Path, group: int, dim: int) -> RowGroup:
        """The hashes and vectors of one row group of a file.

        Raises:
            StoreError: A hash is malformed, a vector NULL, malformed, or not of dimension ``dim``.
        """
        key = (path, group)
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            return item
        # One thread: pyarrow's thread pool costs more than it saves on a 10 MB row group.
        table = open_parquet(path).read_row_group(
            group, columns=[HASH_COLUMN, VECTOR_COLUMN], use_threads=False
        )
        hi, lo, vectors = check_store_table(table, path, dim)
        item = RowGroup(hi, lo, vectors)
        if item.nbytes <= self.max_bytes:
            self._items[key] = item
            self._bytes += item.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
        return item

    def forget(self, paths: set[Path] | None = None) -> None:
        """Drop the row groups of ``paths`` (None: all)."""
        for key in [k for k in self._items if paths is None or k[0] in paths]:
            self._bytes -= self._items.pop(key).nbytes


class _Mismatch(Exception):
    """A row group's hashes are not the ones its index placed there: the file changed under the index."""


class ModelIndex:
    """All files of one model key, indexed in memory by hash.

    Most files sit in one merged index (a single binary search finds a hash in any of them);
    files added since the last merge (a writer's own, or other writers') are searched one by
    one until there are ``PENDING_FILES`` of them, then merged in. Files that vanish (compacted
    away), are bad or cannot be read never make a lookup fail: their hashes read as missing.
    Not thread-safe: the store holds a lock around it.
    """

    PENDING_FILES = 16

    def __init__(self, folder: Path, spec: VectorSpec, bad_files: BadFiles) -> None:
        self.folder = folder
        self.spec = spec
        self.bad_files = bad_files
        self.files: dict[Path, FileIndex] = {}
        self.unreadable: set[Path] = set()
        self.reset()

    def add(self, file: FileIndex) -> None:
        """Index one more file."""
        if file.path in self.files:
            return
        self.files[file.path] = file
        self._pending.append(file)
        if len(self._pending) > self.PENDING_FILES:
            self._merge_pending()

    def reset(self) -> None:
        """Forget every file (they are indexed again by the next refresh)."""
        self.files.clear()
        self._merged: list[FileIndex] = []
        self._pending: list[FileIndex] = []
        self._hi = self._lo = np.zeros(0, dtype=np.uint64)
        self._file = self._row = np.zeros(0, dtype=np.int32)

    def _merge_pending(self) -> None:
        first = len(self._merged)
        hi = np.concatenate([self._hi, *(f.hi for f in self._pending)])
        order = np.argsort(hi, kind="stable")  # sorted runs: a merge, in linear time
        self._hi = hi[order]
        self._lo = np.concatenate([self._lo, *(f.lo for f in self._pending)])[order]
        numbers = [np.full(len(f.hi), first + i, dtype=np.int32) for i, f in enumerate(self._pending)]
        self._file = np.concatenate([self._file, *numbers])[order]
        self._row = np.concatenate([self._row, *(f.rows for f in self._pending)])[order]
        for file in self._pending:  # their hashes live in the merged arrays now
            file.hi = file.lo = np.zeros(0, dtype=np.uint64)
            file.rows = np.zeros(0, dtype=np.int32)
        self._merged += self._pending
        self._pending = []

    def refresh(self) -> bool:
        """Index files that appeared since the last look, forget vanished ones; True if any changed."""
        unlisted: list[tuple[Path, OSError]] = []
        present = set(data_files(self.folder, unlisted))
        for folder, exc in unlisted:
            self.bad_files.unreachable(folder, exc)
        vanished = set(self.files) - present
        if vanished:  # compacted away: index what is there again
            self.reset()
        added = False
        for path in sorted(present - set(self.files) - self.unreadable):
            try:
                self.add(FileIndex.read(path))
            except FileNotFoundError:  # compacted away between listing and reading
                continue
            except (StoreError, pa.ArrowException, OSError) as exc:
                # One bad file (truncated, foreign) must not stop every lookup: skip it, say so once.
                self._trouble(path, exc)
                continue
            added = True
        if len(self._pending) > 1:
            self._merge_pending()
        return added or bool(vanished)

    def _trouble(self, path: Path, exc: BaseException) -> None:
        """A file that cannot be used: set aside if bad (else skipped from now on), reported once."""
        if is_bad_content(exc):
            if not self.bad_files.bad(path, exc):
                self.unreadable.add(path)
        else:
            self.bad_files.unreachable(path, exc)
            self.unreadable.add(path)

    def lookup(self, hi: np.ndarray, lo: np.ndarray, out: np.ndarray, cache: RowGroupCache) -> np.ndarray:
        """Fill ``out`` rows of the hashes found, in files written since too; return the found mask.

        Files that other writers added since the last look are indexed when a hash is missing;
        files that vanished (a compaction), changed or turned out bad are dropped and the files
        there now indexed again, a few times at most. What is still not found then reads as
        missing: it is embedded again, never an error and never another text's vector.
        """
        found = np.zeros(len(hi), dtype=bool)
        suspects: set[Path] = set()
        for _ in range(_LOOKUP_ATTEMPTS):
            todo = np.flatnonzero(~found)
            part = np.zeros((len(todo), self.spec.dim), dtype=np.float32)
            hits, troubled = self._read(hi[todo], lo[todo], part, cache)
            out[todo[hits]] = part[hits]
            found[todo[hits]] = True
            for path, exc in troubled.items():
                if isinstance(exc, _Mismatch):
                    if path in suspects:  # indexed again and still not what it says: bad
                        self._trouble(path, StoreError(str(exc)))
                    suspects.add(path)  # changed under the index: index it again before judging it
                elif not isinstance(exc, FileNotFoundError):
                    self._trouble(path, exc)
            if troubled:
                cache.forget(set(troubled))
                self.reset()
            if found.all():
                break
            if not self.refresh() and not troubled:
                break
        return found

    def _locate(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found, file number, file row)`` of each hash, numbers into merged + pending files."""
        found = np.zeros(len(hi), dtype=bool)
        files = np.zeros(len(hi), dtype=np.int32)
        rows = np.zeros(len(hi), dtype=np.int64)
        if len(self._hi):
            at = np.minimum(np.searchsorted(self._hi, hi), len(self._hi) - 1)
            found = (self._hi[at] == hi) & (self._lo[at] == lo)
            files[found], rows[found] = self._file[at[found]], self._row[at[found]]
        for number, file in enumerate(self._pending, start=len(self._merged)):
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            hit, where = file.find(hi[todo], lo[todo])
            found[todo[hit]], files[todo[hit]], rows[todo[hit]] = True, number, where[hit]
        return found, files, rows

    def _read(
        self, hi: np.ndarray, lo: np.ndarray, out: np.ndarray, cache: RowGroupCache
    ) -> tuple[np.ndarray, dict[Path, BaseException]]:
        """Fill ``out`` rows of the hashes indexed now: ``(found mask, files that failed and why)``."""
        found, files, rows = self._locate(hi, lo)
        everything = self._merged + self._pending
        troubled: dict[Path, BaseException] = {}
        for number in np.unique(files[found]).tolist():
            file = everything[number]
            targets = np.flatnonzero(found & (files == number))
            try:
                self._read_file(file, targets, hi, lo, rows, out, cache)
            except (_Mismatch, StoreError, pa.ArrowException, OSError) as exc:
                found[targets] = False
                troubled[file.path] = exc
        return found, troubled

    def _read_file(
        self,
        file: FileIndex,
        targets: np.ndarray,
        hi: np.ndarray,
        lo: np.ndarray,
        rows: np.ndarray,
        out: np.ndarray,
        cache: RowGroupCache,
    ) -> None:
        groups = np.searchsorted(file.group_starts, rows[targets], side="right") - 1
        for group in np.unique(groups).tolist():
            in_group = targets[groups == group]
            item = cache.get(file.path, group, self.spec.dim)
            local = rows[in_group] - file.group_starts[group]
            if (local >= len(item.hi)).any() or not (
                (item.hi[local] == hi[in_group]) & (item.lo[local] == lo[in_group])
            ).all():
                raise _Mismatch(f"{file.path}: row group {group} does not hold the hashes indexed there")
            out[in_group] = item.vectors[local]
