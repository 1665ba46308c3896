"""Store maintenance: compaction and garbage collection, with their reports.

:class:`~polyemb.store.VectorStore` runs these through its ``compact()`` and ``gc()`` methods,
which also check that the store is writable and drop the index they invalidate. The decisions
(which files are merged, which copy of a text is kept, which models gc keeps) are made here once;
:mod:`polyemb.spark.maintenance` makes the same ones for stores on a lake. What counts in stats,
and the compaction target, is :mod:`polyemb.store.stats`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polyemb.errors import InvalidInputError, StoreError
from polyemb.store import writer
from polyemb.store.index import FileIndex, check_store_table, group_starts, open_parquet, stored_vectors
from polyemb.store.layout import (
    HASH_COLUMN,
    VECTOR_COLUMN,
    data_files,
    model_descriptions,
    model_dir,
    part_name,
    run_dir,
    run_id,
    store_schema,
)
from polyemb.store.quarantine import BadFiles, is_bad_content
from polyemb.store.stats import COMPACT_TARGET_MB, first_of_each, target_rows, tree_bytes

__all__ = ["CompactReport", "GcReport", "compact", "gc", "plan_gc"]


@dataclass(frozen=True)
class CompactReport:
    """What :meth:`VectorStore.compact` did."""

    files_before: int
    files_after: int
    entries: int  # rows kept in the merged files
    duplicates_dropped: int
    temporary_removed: int
    quarantined: int = 0  # bad files set aside


@dataclass(frozen=True)
class GcReport:
    """What :meth:`VectorStore.gc` did."""

    kept: list[str]  # model keys
    dropped: list[str]
    bytes_freed: int


# --------------------------------------------------------------------------- compaction


@dataclass
class _Counts:
    before: int = 0
    after: int = 0
    kept: int = 0
    dropped: int = 0
    quarantined: int = 0


class _Vanished(Exception):
    """An input vanished: another compaction (or gc) took it. This model is left for the next run."""


def compact(
    root: Path, *, target_mb: float = COMPACT_TARGET_MB, bad_files: BadFiles | None = None
) -> CompactReport:
    """Merge each model's small files into files of about ``target_mb`` of vectors; set bad files aside.

    See :meth:`VectorStore.compact`, which calls it on a writable store.
    """
    bad_files = bad_files if bad_files is not None else BadFiles(move=True)
    counts = _Counts()
    for key, description in model_descriptions(root):
        folder = model_dir(root, key)
        try:
            _compact_model(folder, description, target_mb, counts, bad_files)
        except _Vanished:
            counts.after += len(data_files(folder))
    removed = writer.remove_leftovers(root)
    return CompactReport(
        counts.before, counts.after, counts.kept, counts.dropped, removed, counts.quarantined
    )


def _compact_model(
    folder: Path, description: dict[str, Any], target_mb: float, counts: _Counts, bad_files: BadFiles
) -> None:
    unlisted: list[tuple[Path, OSError]] = []
    paths = sorted(data_files(folder, unlisted), key=str)  # the first copy by path is kept, as Spark keeps it
    for run, exc in unlisted:
        bad_files.unreachable(run, exc)
    counts.before += len(paths)
    dim = description.get("dim")
    rows: dict[Path, int] = {}
    for path in paths:
        footer = _guarded(path, lambda p: open_parquet(p).metadata, bad_files, counts)
        if footer is None:
            continue
        rows[path] = footer.num_rows
        if not isinstance(dim, int) and footer.num_rows:
            dim = _guarded(path, _file_dim, bad_files, counts)
            if dim is None:
                del rows[path]
    limit = target_rows(dim if isinstance(dim, int) else 1, target_mb)
    small = {path: n for path, n in rows.items() if n < limit}
    indexes = [
        index
        for index in (_guarded(path, lambda p: _checked_index(p, dim), bad_files, counts) for path in small)
        if index is not None
    ]
    if len(indexes) < 2 or not isinstance(dim, int):
        counts.after += _data_file_count(folder)
        return
    run = run_dir(folder, f"compact-{run_id()}")
    merged = [index.path for index in indexes]
    kept, dropped = _merge(indexes, run, store_schema(dim, description), limit, bad_files, counts)
    # The merged files are on disk (synced) before the small ones go: a reader never misses a text.
    for path in merged:
        path.unlink(missing_ok=True)
    counts.kept += kept
    counts.dropped += dropped
    counts.after += _data_file_count(folder)


def _data_file_count(folder: Path) -> int:
    """The data files there now, with those compaction left in place (unreadable, or not movable)."""
    return sum(1 for _ in data_files(folder, []))


def _guarded(path: Path, read: Any, bad_files: BadFiles, counts: _Counts) -> Any:
    """``read(path)``; None where the file is bad (set aside) or unreachable (skipped).

    Raises:
        _Vanished: The file is gone: another compaction merged it.
    """
    try:
        return read(path)
    except FileNotFoundError as exc:
        raise _Vanished(str(path)) from exc
    except (StoreError, pa.ArrowException, OSError) as exc:
        if is_bad_content(exc):
            counts.quarantined += int(bad_files.bad(path, exc))
        else:
            bad_files.unreachable(path, exc)
        return None


def _file_dim(path: Path) -> int:
    parquet = open_parquet(path)
    column = parquet.read_row_group(0, columns=[VECTOR_COLUMN]).column(0)
    return int(stored_vectors(column, path).shape[1])


def _checked_index(path: Path, dim: int | None) -> FileIndex:
    """A file read whole and checked (every hash and vector), indexed by its hashes."""
    parquet = open_parquet(path)
    hi, lo, _ = check_store_table(parquet.read(columns=[HASH_COLUMN, VECTOR_COLUMN]), path, dim)
    return FileIndex.from_words(path, hi, lo, group_starts(parquet.metadata))


def _merge(
    files: list[FileIndex],
    run: Path,
    schema: pa.Schema,
    target: int,
    bad_files: BadFiles,
    counts: _Counts,
) -> tuple[int, int]:
    """Copy ``files`` (checked) into files of about ``target`` rows in ``run``, each hash once.

    Holds one output file's rows at a time. Returns ``(rows kept, duplicates dropped)``.

    Raises:
        _Vanished: An input vanished, or turned bad, since it was checked: no input may be removed.
    """
    keep_all = np.zeros(sum(len(f.hi) for f in files), dtype=bool)
    keep_all[first_of_each(files)] = True
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
            table = _guarded(file.path, lambda p: open_parquet(p).read(), bad_files, counts)
            if table is None:  # corrupted since it was checked: keep every input
                raise _Vanished(str(file.path))
            pending.append(_as_store_table(table.take(pa.array(rows)), schema, file.path))
            kept += len(rows)
        if sum(t.num_rows for t in pending) >= target:
            flush()
    flush()
    return kept, len(keep_all) - kept


def _as_store_table(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    """A store file's rows in the store schema (Spark writes vectors as variable lists)."""
    dim = schema.field(VECTOR_COLUMN).type.list_size
    _, _, matrix = check_store_table(table, source, dim)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    return pa.Table.from_arrays([table.column(HASH_COLUMN).cast(pa.string()), vectors], schema=schema)


# --------------------------------------------------------------------------- garbage collection


def gc(root: Path, keep: Sequence[str]) -> GcReport:
    """Drop the vectors of every model but ``keep``; see :meth:`VectorStore.gc`.

    Raises:
        InvalidInputError: ``keep`` is empty, or names a model the store does not hold.
    """
    kept, dropped = plan_gc(model_descriptions(root), keep, str(root))
    freed = 0
    for key in dropped:
        folder = model_dir(root, key)
        freed += tree_bytes(folder)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:  # another gc dropped it meanwhile
            continue
    writer.remove_leftovers(root)
    return GcReport(kept, dropped, freed)


def plan_gc(
    models: Sequence[tuple[str, dict[str, Any]]], keep: Sequence[str], where: str
) -> tuple[list[str], list[str]]:
    """Which model keys gc keeps and which it drops: ``(kept, dropped)``.

    ``keep`` holds provenances (``id@fingerprint``), bare fingerprints or model keys. A model
    whose description names neither provenance nor fingerprint cannot be matched, so it is kept.

    Raises:
        InvalidInputError: ``keep`` is empty, or an item names no model (a typo would drop the model meant).
    """
    if isinstance(keep, str):  # one model, not its characters
        keep = [keep]
    if not keep:
        raise InvalidInputError("gc needs at least one model to keep (a provenance or a model key)")
    wanted = {item.strip() for item in keep}
    matches: dict[str, set[str]] = {}
    for key, description in models:
        provenance = str(description.get("provenance", ""))
        fingerprint = str(description.get("fingerprint", provenance.rsplit("@", 1)[-1]))
        matches[key] = {
            item for item in wanted if item == key or (fingerprint and item.rsplit("@", 1)[-1] == fingerprint)
        }
    unmatched = wanted.difference(*matches.values())
    if unmatched:
        present = [f"{key} ({description.get('provenance', 'unknown')})" for key, description in models]
        raise InvalidInputError(
            f"nothing dropped: {sorted(unmatched)} match(es) no model in {where}, so gc could "
            f"drop a model you meant to keep. The store holds: {present or 'no models'}"
        )
    kept: list[str] = []
    dropped: list[str] = []
    for key, description in models:
        identified = bool(description.get("provenance") or description.get("fingerprint"))
        (kept if matches[key] or not identified else dropped).append(key)
    return kept, dropped


# --------------------------------------------------------------------------- files
