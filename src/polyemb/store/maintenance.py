"""Store maintenance: stats, compaction and garbage collection, with their reports.

:class:`~polyemb.store.VectorStore` runs these through its ``stats()``, ``compact()`` and ``gc()``
methods, which also check that the store is writable and drop the index they invalidate.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyemb.arrow import vectors_from_arrow
from polyemb.errors import InvalidInputError
from polyemb.store import writer
from polyemb.store.index import FileIndex, stored_vectors
from polyemb.store.layout import (
    HASH_COLUMN,
    ROW_GROUP_ROWS,
    VECTOR_COLUMN,
    data_files,
    model_descriptions,
    model_dir,
    part_name,
    run_dir,
    run_id,
    store_schema,
)

__all__ = [
    "COMPACT_TARGET_MB",
    "CompactReport",
    "GcReport",
    "ModelStats",
    "StoreStats",
    "compact",
    "gc",
    "stats",
]

# A compacted file holds at most this many bytes of vectors.
COMPACT_TARGET_MB = 256.0


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


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover


# --------------------------------------------------------------------------- stats


def stats(root: Path) -> StoreStats:
    """Entries, distinct texts, files and size on disk per model of the store at ``root``."""
    models = []
    for key, description in model_descriptions(root):
        folder = model_dir(root, key)
        files = [FileIndex.read(path) for path in data_files(folder)]
        models.append(
            ModelStats(
                key=key,
                provenance=str(description.get("provenance", "unknown")),
                dim=description.get("dim"),
                entries=sum(len(file.hi) for file in files),
                distinct=len(_first_of_each(files)),
                files=len(files),
                bytes=_tree_bytes(folder),
            )
        )
    return StoreStats(root, models, _tree_bytes(root))


def _first_of_each(files: list[FileIndex]) -> np.ndarray:
    """Positions (in the files' sorted hashes, one after the other) of each distinct hash's first entry."""
    if not files:
        return np.zeros(0, dtype=np.int64)
    words = np.stack([np.concatenate([f.hi for f in files]), np.concatenate([f.lo for f in files])], 1)
    _, first = np.unique(words, axis=0, return_index=True)
    return first


# --------------------------------------------------------------------------- compaction


@dataclass
class _Counts:
    before: int = 0
    after: int = 0
    kept: int = 0
    dropped: int = 0


def compact(root: Path, *, target_mb: float = COMPACT_TARGET_MB) -> CompactReport:
    """Merge each model's small files into files of about ``target_mb`` of vectors.

    See :meth:`VectorStore.compact`, which calls it on a writable store.
    """
    counts = _Counts()
    for key, description in model_descriptions(root):
        _compact_model(model_dir(root, key), description, target_mb, counts)
    removed = writer.remove_leftovers(root)
    return CompactReport(counts.before, counts.after, counts.kept, counts.dropped, removed)


def _compact_model(folder: Path, description: dict[str, Any], target_mb: float, counts: _Counts) -> None:
    files = sorted(data_files(folder))
    counts.before += len(files)
    dim = int(description.get("dim") or _file_dim(files))
    target_rows = max(ROW_GROUP_ROWS, int(target_mb * 2**20 // (dim * 4)))
    small = [path for path in files if pq.ParquetFile(path).metadata.num_rows < target_rows]
    if len(small) < 2:
        counts.after += len(files)
        return
    run = run_dir(folder, f"compact-{run_id()}")
    try:
        written, kept, dropped = _merge(small, run, store_schema(dim, description), target_rows)
    except FileNotFoundError:  # another compaction took these files: nothing lost
        counts.after += len(list(data_files(folder)))
        return
    # The merged files are in place before the small ones go: a reader never misses a text.
    for path in small:
        path.unlink(missing_ok=True)
    counts.kept += kept
    counts.dropped += dropped
    counts.after += len(files) - len(small) + written


def _file_dim(files: list[Path]) -> int:
    for path in files:
        matrix, _ = vectors_from_arrow(
            pq.ParquetFile(path).read_row_group(0, columns=[VECTOR_COLUMN]).column(0)
        )
        return int(matrix.shape[1])
    return 1


def _merge(inputs: list[Path], run: Path, schema: pa.Schema, target_rows: int) -> tuple[int, int, int]:
    """Copy ``inputs`` into files of about ``target_rows`` in ``run``, each hash once.

    Holds one output file's rows at a time. Returns ``(files written, rows kept, duplicates dropped)``.
    """
    files = [FileIndex.read(path) for path in inputs]
    keep_all = np.zeros(sum(len(f.hi) for f in files), dtype=bool)
    keep_all[_first_of_each(files)] = True
    pending: list[pa.Table] = []
    written = kept = offset = 0

    def flush() -> None:
        nonlocal written
        if pending:
            writer.write_table(pa.concat_tables(pending), run / part_name(written))
            written += 1
            pending.clear()

    for file in files:
        rows = np.sort(file.rows[keep_all[offset : offset + len(file.hi)]])
        offset += len(file.hi)
        if len(rows):
            pending.append(_as_store_table(pq.read_table(file.path).take(pa.array(rows)), schema, file.path))
            kept += len(rows)
        if sum(t.num_rows for t in pending) >= target_rows:
            flush()
    flush()
    return written, kept, len(keep_all) - kept


def _as_store_table(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    """A store file's rows in the store schema (Spark writes vectors as variable lists)."""
    matrix = stored_vectors(table.column(VECTOR_COLUMN), source)
    dim = schema.field(VECTOR_COLUMN).type.list_size
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    return pa.Table.from_arrays([table.column(HASH_COLUMN).cast(pa.string()), vectors], schema=schema)


# --------------------------------------------------------------------------- garbage collection


def gc(root: Path, keep: Sequence[str]) -> GcReport:
    """Drop the vectors of every model but ``keep``; see :meth:`VectorStore.gc`.

    Raises:
        InvalidInputError: ``keep`` is empty, or names a model the store does not hold.
    """
    if not keep:
        raise InvalidInputError("gc needs at least one model to keep (a provenance or a model key)")
    models = model_descriptions(root)
    matched = _kept_models(root, models, {item.strip() for item in keep})
    kept, dropped, freed = [], [], 0
    for key, description in models:
        if key in matched or not description:  # a model we cannot identify is never dropped
            kept.append(key)
            continue
        folder = model_dir(root, key)
        freed += _tree_bytes(folder)
        shutil.rmtree(folder)
        dropped.append(key)
    writer.remove_leftovers(root)
    return GcReport(kept, dropped, freed)


def _kept_models(root: Path, models: list[tuple[str, dict[str, Any]]], wanted: set[str]) -> set[str]:
    """The keys ``wanted`` names: by key, provenance or fingerprint.

    Raises:
        InvalidInputError: An item of ``wanted`` names no model (a typo would drop the model meant).
    """
    matches: dict[str, set[str]] = {}
    for key, description in models:
        provenance = str(description.get("provenance", ""))
        fingerprint = str(description.get("fingerprint", provenance.rsplit("@", 1)[-1]))
        matches[key] = {item for item in wanted if item == key or item.rsplit("@", 1)[-1] == fingerprint}
    unmatched = wanted.difference(*matches.values())
    if unmatched:
        present = [f"{key} ({description.get('provenance', 'unknown')})" for key, description in models]
        raise InvalidInputError(
            f"nothing dropped: {sorted(unmatched)} match(es) no model in {root}, so gc could "
            f"drop a model you meant to keep. The store holds: {present or 'no models'}"
        )
    return {key for key, items in matches.items() if items}


# --------------------------------------------------------------------------- files


def _tree_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total
