"""``polyemb bench-store``: what a daily re-run through the vector store costs, and large lookups.

``incremental``: a first run over N rows of real sentences into an empty store, then a re-run
over the same rows with a share edited and a share appended, per engine (the CLI, DuckDB, Spark
``local[2]``); the figure is the re-run's time as a share of the first.

``lookup``: a store of M entries (random vectors under real text hashes), then, in a fresh
process (:mod:`polyemb.bench._lookup_child`), a lookup of K keys: keys/s with the index built in
the same call, and the process's peak memory.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyemb.bench._spark import local_spark
from polyemb.embedder import VectorSpec
from polyemb.errors import InvalidInputError

__all__ = ["ENGINES", "daily_loads", "incremental", "lookup"]

ENGINES = ("cli", "duckdb", "spark")


def daily_loads(
    pool: Sequence[str], rows: int, *, edited: float, appended: float, seed: int = 0
) -> tuple[pa.Table, pa.Table, int]:
    """Day one's rows (``id``, ``text``), and day two's: ``edited`` of them changed, ``appended`` added.

    Texts repeat across rows as real columns do (``rows`` may exceed the distinct texts); the
    appended rows use texts day one never had. Returns ``(day1, day2, distinct new texts of day 2)``.

    Raises:
        InvalidInputError: Too few distinct texts in ``pool`` for the appended rows.
    """
    distinct = list(dict.fromkeys(pool))
    random.Random(seed).shuffle(distinct)
    n_appended = int(rows * appended)
    if len(distinct) < n_appended + 100:
        raise InvalidInputError(f"the texts give {len(distinct)} distinct sentences: too few for {rows} rows")
    fresh, known = distinct[:n_appended], distinct[n_appended:]
    rng = random.Random(seed + 1)
    day1 = [known[i % len(known)] for i in range(rows)]
    rng.shuffle(day1)
    day2 = list(day1)
    for row in rng.sample(range(rows), int(rows * edited)):
        day2[row] = f"{day2[row]} (updated {row})"
    day2 += fresh
    seen = set(day1)
    new = len({text for text in day2 if text not in seen})

    def table(texts: list[str]) -> pa.Table:
        return pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})

    return table(day1), table(day2), new


def incremental(
    model: str,
    pool: Sequence[str],
    *,
    rows: int,
    edited: float,
    appended: float,
    engines: Sequence[str],
    workdir: Path,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Time a first run and a re-run per engine (of :data:`ENGINES`); each gets a store of its own."""
    day1, day2, new = daily_loads(pool, rows, edited=edited, appended=appended)
    inputs = {}
    for name, table in (("day1", day1), ("day2", day2)):
        inputs[name] = workdir / f"{name}.parquet"
        pq.write_table(table, inputs[name])
    progress(f"{rows} rows, {len(set(day1.column('text').to_pylist()))} distinct texts; day 2 adds {new} new")
    runners = {"cli": _cli_run, "duckdb": _duckdb_run, "spark": _spark_run}
    results = []
    for engine in engines:
        store = workdir / f"store-{engine}"
        times = []
        for day in ("day1", "day2"):
            started = time.perf_counter()
            embedded = runners[engine](model, inputs[day], workdir / f"out-{engine}-{day}.parquet", store)
            times.append(time.perf_counter() - started)
            progress(f"{engine} {day}: {times[-1]:.1f}s, {embedded} texts embedded")
        results.append(
            {
                "engine": engine,
                "first_run_s": round(times[0], 2),
                "rerun_s": round(times[1], 2),
                "rerun_share": round(times[1] / times[0], 4),
                "rows_day2": day2.num_rows,
                "new_texts_day2": new,
            }
        )
    return results


def _cli_run(model: str, source: Path, output: Path, store: Path) -> int:
    """``polyemb embed`` in a child process, model load included, as a user runs it."""
    command = [sys.executable, "-m", "polyemb.cli", "embed", str(source), "-c", "text", "-o", str(output)]
    command += ["--model", model, "--store", str(store), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise InvalidInputError(f"polyemb embed failed: {result.stderr[-2000:]}")
    line = next(line for line in result.stderr.splitlines() if line.startswith("store "))
    return int(line.split(" found, ")[1].split(" embedded")[0])


def _duckdb_run(model: str, source: Path, output: Path, store: Path) -> int:
    """``COPY (SELECT id, embed(text) ...) TO`` on a fresh connection, cache and store handle."""
    import duckdb

    from polyemb.duckdb import register
    from polyemb.encoder import load
    from polyemb.store import open_store

    con = duckdb.connect()
    register(con, load(model), store=open_store(store)).clear()
    query = f"SELECT id, embed(text) AS embedding FROM read_parquet('{source}')"
    con.execute(f"COPY ({query}) TO '{output}' (FORMAT parquet)")
    embedded = con.execute("SELECT embedding_store_stats().embedded").fetchone()[0]
    con.close()
    return int(embedded)


def _spark_run(model: str, source: Path, output: Path, store: Path) -> int:
    """``embed_incremental`` on ``local[2]``, written to Parquet."""
    from polyemb.spark import IncrementalReport, embed_incremental

    spark = local_spark("polyemb-bench-store", {"spark.sql.shuffle.partitions": "4"})
    report = IncrementalReport()
    out = embed_incremental(spark.read.parquet(str(source)), "text", str(store), model, report=report)
    out.write.parquet(str(output))
    return report.embedded


# ---------------------------------------------------------------------- lookups


def lookup(
    entries: int, keys: int, *, dim: int, folder: Path | None, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Build a store of ``entries`` random vectors (in runs of ``keys``), then time lookups of ``keys``.

    Two kinds of lookup, each in a fresh process (index built in the same call, memory measured):
    the keys of one earlier run (a daily re-run finds its texts where the last run wrote them),
    and keys drawn at random over the whole store (the worst case: every file is read).
    """
    spec = VectorSpec("bench-store-lookup", "sha256:synthetic", dim, 128, "fp32", True)
    root = folder or Path(tempfile.mkdtemp(prefix="polyemb-lookup-"))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    runs = _fill(root / "store", spec, entries, keys, rng)
    progress(f"wrote {entries:,} entries in {time.perf_counter() - started:.0f}s to {root / 'store'}")
    wanted = {
        "one earlier run": runs[len(runs) // 2],
        "random over the store": [runs[i][j] for i, j in _random_positions(runs, keys, rng)],
    }
    results = []
    for name, hashes in wanted.items():
        path = root / "keys.npy"
        np.save(path, np.array(hashes))
        command = [sys.executable, "-m", "polyemb.bench._lookup_child", str(root / "store")]
        command += [json.dumps(spec.__dict__), str(path)]
        figures = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        figures.update(
            kind=name, entries=entries, dim=dim, keys_per_s=round(figures["keys"] / figures["seconds"])
        )
        results.append(figures)
        progress(f"{name}: {figures['keys_per_s']:,} keys/s, peak {figures['peak_rss_mib']:.0f} MiB")
    return results


def _fill(
    path: Path, spec: VectorSpec, entries: int, per_run: int, rng: np.random.Generator
) -> list[list[str]]:
    """A store of ``entries`` random vectors written in runs of ``per_run``; each run's hashes."""
    from polyemb.store import open_store, text_hashes

    store = open_store(path)
    runs: list[list[str]] = []
    for start in range(0, entries, per_run):
        hashes = text_hashes(f"synthetic text {i}" for i in range(start, min(entries, start + per_run)))
        store._run = f"bench-{len(runs):04d}"  # one writer run per day, as a daily job writes them
        store._sequence = 0
        store.append(spec, hashes, rng.standard_normal((len(hashes), spec.dim), dtype=np.float32))
        runs.append(hashes)
    return runs


def _random_positions(runs: list[list[str]], count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    sizes = np.array([len(run) for run in runs])
    flat = rng.choice(int(sizes.sum()), size=count, replace=False)
    starts = np.cumsum([0, *sizes[:-1]])
    which = np.searchsorted(starts, flat, side="right") - 1
    return list(zip(which.tolist(), (flat - starts[which]).tolist(), strict=True))
