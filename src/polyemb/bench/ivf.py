"""``polyemb bench-join ivf`` and ``bench-join dedup``: the ivf method against exact, side by side.

- ``ivf``: a top-k join of ``queries`` left rows (or the rows themselves: a self-join) against
  ``rows`` right rows, exact and with each ivf setting (nprobe values, recall targets): time,
  speed-up and recall@k on a sample of left rows scored exactly; and with ``growth`` sizes, the
  ivf self-join's time at each size and the exponent of its growth.
- ``dedup``: near-duplicate pairs at a threshold, exact and ivf: time, and the share of the
  exact pairs of a sample of rows (scored exactly against all rows) that each setting finds.

Each runs in one engine: ``core`` (:func:`polyemb.similarity.top_pairs`, what pandas and DuckDB
call), ``pandas``, ``duckdb`` (the index function; with its peak memory) or ``spark``
(``local[2]``). An exact run over everything would take hours at a million rows, so the exact
time is measured on a slice (``exact_queries`` left rows; a block of ``exact_rows`` rows for
near-duplicates) and scaled: exact work grows as left rows x right rows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyemb._platform import process_mib, reset_peak_memory
from polyemb.arrow import vectors_from_arrow, vectors_to_arrow
from polyemb.errors import InvalidInputError

if TYPE_CHECKING:
    # Imported where used (they import torch): the command line reads ENGINES for its help.
    from polyemb.ivf import Ivf, IvfReport

__all__ = ["ENGINES", "dedup_bench", "format_settings", "join_bench", "load_vectors", "parse_settings"]

Progress = Callable[[str], None]
Method = Any  # "exact" or an Ivf
ENGINES = ("core", "pandas", "duckdb", "spark")
_BLOCK = 65_536


def load_vectors(path: str, column: str, rows: int) -> np.ndarray:
    """The first ``rows`` vectors of a Parquet file's vector column (all if fewer), as float32."""
    table = pq.ParquetFile(path)
    if column not in table.schema_arrow.names:
        raise InvalidInputError(f"{path!r} has no column {column!r}; columns: {table.schema_arrow.names}")
    parts, held = [], 0
    for batch in table.iter_batches(batch_size=_BLOCK, columns=[column]):
        matrix, valid = vectors_from_arrow(batch.column(0), name=f"column {column!r}")
        parts.append(matrix[valid])
        held += int(valid.sum())
        if held >= rows:
            break
    return np.concatenate(parts)[:rows] if parts else np.zeros((0, 0), np.float32)


def parse_settings(
    nprobes: Sequence[int], recalls: Sequence[float], nlist: int | None, seed: int
) -> list[Ivf]:
    """The ivf settings to time: one per nprobe and per recall target."""
    from polyemb.ivf import Ivf

    settings = [Ivf(nlist=nlist, nprobe=n, seed=seed) for n in nprobes]
    return settings + [Ivf(nlist=nlist, recall=r, seed=seed) for r in recalls]


# ---------------------------------------------------------------------- engines


def _sample(rows: int, count: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(rows, size=min(count, rows), replace=False))


def _vector_table(matrix: np.ndarray, name: str) -> pa.Table:
    return pa.table(
        {name: pa.array(np.arange(len(matrix), dtype=np.int64)), "v": vectors_to_arrow(matrix, None)}
    )


def _join(
    engine: str, left: np.ndarray, right: np.ndarray, k: int, method: Method, report: IvfReport, spark: Any
) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """``(left rows, right rows, seconds, peak MiB or None)`` of one join in ``engine``."""
    reset_peak_memory()
    before = process_mib("VmRSS")
    started = time.perf_counter()
    if engine == "core":
        from polyemb.similarity import top_pairs

        pairs = top_pairs(left, right, k, method=method, report=report)
        found = pairs.query, pairs.corpus
    elif engine == "pandas":
        import pandas as pd

        import polyemb.pandas  # noqa: F401  (registers .emb)

        frames = [
            _vector_table(side, name).to_pandas(types_mapper=pd.ArrowDtype)
            for side, name in ((left, "i"), (right, "j"))
        ]
        joined = frames[0].emb.join(frames[1], "v", k=k, method=method, report=report)
        found = joined["i"].to_numpy(dtype=np.int64), joined["j"].to_numpy(dtype=np.int64)
    elif engine == "duckdb":
        found = _duckdb_join(left, right, k, method, report)
    else:
        found = _spark_join(spark, left, right, k, method, report)
    seconds = time.perf_counter() - started
    peak = process_mib("VmHWM") - before if engine == "duckdb" else None
    return found[0], found[1], seconds, peak


def _duckdb_join(
    left: np.ndarray, right: np.ndarray, k: int, method: Method, report: IvfReport
) -> tuple[np.ndarray, np.ndarray]:
    import duckdb

    from polyemb.duckdb import register_index

    con = duckdb.connect()
    con.register("l", _vector_table(left, "i"))
    con.register("r", _vector_table(right, "j"))
    register_index(con, "r", "SELECT j, v FROM r", key="j", vector="v", method=method, report=report)
    rows = con.sql(f"SELECT l.i, n.key FROM l, unnest(r_nearest_vector(l.v, {k})) AS t(n)").to_arrow_table()
    return rows.column(0).to_numpy(), rows.column(1).to_numpy()


def _spark_frames(spark: Any, folder: Path, sides: Sequence[tuple[np.ndarray, str]]) -> list[Any]:
    frames = []
    for matrix, name in sides:
        path = folder / f"{name}.parquet"
        pq.write_table(
            _vector_table(matrix, name).cast(pa.schema([(name, pa.int64()), ("v", pa.list_(pa.float32()))])),
            path,
        )
        frames.append(spark.read.parquet(str(path)))
    return frames


def _spark_join(
    spark: Any, left: np.ndarray, right: np.ndarray, k: int, method: Method, report: IvfReport
) -> tuple[np.ndarray, np.ndarray]:
    from polyemb.spark import semantic_join

    with tempfile.TemporaryDirectory(prefix="polyemb-bench-ivf-") as folder:
        lf, rf = _spark_frames(spark, Path(folder), [(left, "i"), (right, "j")])
        out = Path(folder) / "pairs"
        semantic_join(lf, rf, "v", k=k, method=method, report=report).select("i", "j").write.parquet(str(out))
        pairs = pq.read_table(out)
    return pairs.column("i").to_numpy(), pairs.column("j").to_numpy()


def _dedup(
    engine: str, rows: np.ndarray, threshold: float, method: Method, report: IvfReport, spark: Any
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(i, j, seconds)`` of one near-duplicate search in ``engine``."""
    started = time.perf_counter()
    if engine == "core":
        from polyemb.near_duplicates import pairs_above

        i, j, _ = pairs_above(rows, threshold, method=method, report=report)
    elif engine == "pandas":
        import pandas as pd

        import polyemb.pandas  # noqa: F401  (registers .emb)

        series = _vector_table(rows, "i").to_pandas(types_mapper=pd.ArrowDtype)["v"]
        found = series.emb.near_duplicates(threshold, method=method, report=report)
        i, j = found["left"].to_numpy(dtype=np.int64), found["right"].to_numpy(dtype=np.int64)
    elif engine == "spark":
        from polyemb.spark import near_duplicates

        with tempfile.TemporaryDirectory(prefix="polyemb-bench-dedup-") as folder:
            (frame,) = _spark_frames(spark, Path(folder), [(rows, "i")])
            out = Path(folder) / "pairs"
            pairs = near_duplicates(frame, "v", threshold, method=method, report=report)
            pairs.select("i_x", "i_y").write.parquet(str(out))
            table = pq.read_table(out)
        i, j = table.column("i_x").to_numpy(), table.column("i_y").to_numpy()
    else:
        raise InvalidInputError(f"bench-join dedup runs in core, pandas or spark, not {engine}")
    return np.minimum(i, j), np.maximum(i, j), time.perf_counter() - started


def _session(engine: str) -> Any:
    if engine != "spark":
        return None
    from polyemb.bench._spark import local_spark

    return local_spark(
        "polyemb-bench-ivf", {"spark.driver.memory": "8g", "spark.sql.shuffle.partitions": "8"}
    )


# ---------------------------------------------------------------------- joins


def _recall(left_rows: np.ndarray, right_rows: np.ndarray, sample: np.ndarray, exact: np.ndarray) -> float:
    """Mean recall@k of the sampled left rows: the share of each one's exact top-k found."""
    chosen = np.isin(left_rows, sample)
    found = {(int(a), int(b)) for a, b in zip(left_rows[chosen], right_rows[chosen], strict=True)}
    hits = [
        sum((int(row), int(c)) in found for c in exact[n]) / exact.shape[1] for n, row in enumerate(sample)
    ]
    return round(float(np.mean(hits)), 4)


def join_bench(
    vectors: np.ndarray,
    *,
    rows: int,
    queries: int,
    k: int,
    settings: Sequence[Ivf],
    engine: str,
    exact_queries: int,
    sample: int,
    growth: Sequence[int],
    progress: Progress,
) -> dict[str, Any]:
    """Exact against each ivf setting for a top-``k`` join (a self-join when ``queries`` is 0)."""
    from polyemb.ivf import IvfReport
    from polyemb.similarity import top_k

    if len(vectors) < rows + queries:
        raise InvalidInputError(f"{rows + queries} vectors are needed, the input has {len(vectors)}")
    right = vectors[:rows]
    left = vectors[rows : rows + queries] if queries else right
    report: dict[str, Any] = {
        "engine": engine,
        "rows": rows,
        "queries": len(left),
        "k": k,
        "dim": vectors.shape[1],
    }
    spark = _session(engine)
    try:
        picked = _sample(len(left), sample)
        exact, _ = top_k(left[picked], right, k)
        report["exact"] = _exact_join(engine, left, right, k, exact_queries, spark, progress)
        report["settings"] = []
        for setting in settings:
            ivf = IvfReport()
            lrows, rrows, seconds, peak = _join(engine, left, right, k, setting, ivf, spark)
            line = {
                "nlist": ivf.nlist,
                "nprobe": ivf.nprobe,
                "recall_target": setting.recall,
                "recall_estimate": ivf.recall_estimate,
                "seconds": round(seconds, 2),
                "train_s": ivf.seconds,
                "recall": _recall(lrows, rrows, picked, exact),
                "speedup": round(report["exact"]["seconds"] / seconds, 1),
                **({"peak_mib": round(peak)} if peak is not None else {}),
            }
            report["settings"].append(line)
            progress(f"ivf {line}")
        if growth:

            def join_at(rows: np.ndarray, ivf: IvfReport) -> tuple[float, float | None]:
                lrows, rrows, seconds, _ = _join(engine, rows, rows, k, settings[0], ivf, spark)
                picked = _sample(len(rows), sample)
                exact, _ = top_k(rows[picked], rows, k)
                return seconds, _recall(lrows, rrows, picked, exact)

            report["growth"] = _growth(vectors, growth, join_at, progress)
    finally:
        if spark is not None:
            spark.stop()
    return report


def _exact_join(
    engine: str,
    left: np.ndarray,
    right: np.ndarray,
    k: int,
    exact_queries: int,
    spark: Any,
    progress: Progress,
) -> dict[str, Any]:
    """The exact join's time on ``exact_queries`` left rows, scaled to all of them."""
    from polyemb.ivf import IvfReport

    piece = min(len(left), exact_queries)
    _, _, seconds, peak = _join(engine, left[:piece], right, k, "exact", IvfReport(), spark)
    scaled = seconds * len(left) / piece
    result = {"timed_queries": piece, "timed_s": round(seconds, 2), "seconds": round(scaled, 2)}
    result["scores_per_s"] = round(piece * len(right) / seconds)
    if peak is not None:
        result["peak_mib"] = round(peak)
    progress(f"exact: {result}")
    return result


def _growth(
    vectors: np.ndarray,
    sizes: Sequence[int],
    run: Callable[[np.ndarray, IvfReport], tuple[float, float | None]],
    progress: Progress,
) -> dict[str, Any]:
    """``run`` on the first rows of each size (its seconds and recall), and the exponent of the times."""
    from polyemb.ivf import IvfReport

    lines = []
    for size in sizes:
        if size > len(vectors):
            raise InvalidInputError(f"growth size {size} is above the {len(vectors)} vectors given")
        ivf = IvfReport()
        seconds, recall = run(vectors[:size], ivf)
        lines.append(
            {
                "rows": size,
                "nlist": ivf.nlist,
                "nprobe": ivf.nprobe,
                "seconds": round(seconds, 2),
                "recall": recall,
            }
        )
        progress(f"growth {lines[-1]}")
    return {"sizes": lines, "exponent": _exponent(lines)}


def _exponent(lines: list[dict[str, Any]]) -> float | None:
    """The exponent b of ``seconds = a * rows**b``, fitted (least squares on logs) to the growth runs."""
    if len(lines) < 2:
        return None
    rows = np.log([n["rows"] for n in lines])
    seconds = np.log([max(n["seconds"], 0.01) for n in lines])
    return round(float(np.polyfit(rows, seconds, 1)[0]), 2)


# ---------------------------------------------------------------------- near-duplicates


def _sample_pairs(rows: np.ndarray, picked: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """The exact pairs (as ``(min, max)``) of the sampled rows with any row, at or above ``threshold``."""
    from polyemb.similarity import normalize_rows

    unit = normalize_rows(rows)
    found: set[tuple[int, int]] = set()
    for a in range(0, len(unit), _BLOCK):
        hit_s, hit_r = np.nonzero(unit[picked] @ unit[a : a + _BLOCK].T >= threshold)
        for s, r in zip(picked[hit_s].tolist(), (hit_r + a).tolist(), strict=True):
            if s != r:
                found.add((min(s, r), max(s, r)))
    return found


def _pair_recall(
    truth: set[tuple[int, int]], i: np.ndarray, j: np.ndarray
) -> tuple[set[tuple[int, int]], float | None]:
    """The pairs ``(i, j)`` found, and the share of the ``truth`` pairs among them (None without any)."""
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    return found, round(len(truth & found) / len(truth), 4) if truth else None


def dedup_bench(
    vectors: np.ndarray,
    *,
    rows: int,
    threshold: float,
    settings: Sequence[Ivf],
    engine: str,
    exact_rows: int,
    sample: int,
    growth: Sequence[int],
    progress: Progress,
) -> dict[str, Any]:
    """Exact against each ivf setting for near-duplicate pairs at ``threshold``."""
    from polyemb.ivf import IvfReport

    data = vectors[:rows]
    picked = _sample(len(data), sample)
    truth = _sample_pairs(data, picked, threshold)
    report: dict[str, Any] = {
        "engine": engine,
        "rows": len(data),
        "threshold": threshold,
        "sample": len(picked),
    }
    report["sample_pairs"] = len(truth)
    spark = _session(engine)
    try:
        block = min(len(data), exact_rows)
        _, _, seconds = _dedup(engine, data[:block], threshold, "exact", IvfReport(), spark)
        scaled = seconds * (len(data) / block) ** 2
        report["exact"] = {"timed_rows": block, "timed_s": round(seconds, 2), "seconds": round(scaled, 2)}
        progress(f"exact: {report['exact']}")
        report["settings"] = []
        for setting in settings:
            ivf = IvfReport()
            i, j, seconds = _dedup(engine, data, threshold, setting, ivf, spark)
            found, recall = _pair_recall(truth, i, j)
            line = {
                "nlist": ivf.nlist,
                "nprobe": ivf.nprobe,
                "recall_target": setting.recall,
                "recall_estimate": ivf.recall_estimate,
                "pairs": len(found),
                "seconds": round(seconds, 2),
                "pair_recall": recall,
                "speedup": round(scaled / seconds, 1),
            }
            report["settings"].append(line)
            progress(f"ivf {line}")
        if growth:

            def dedup_at(rows: np.ndarray, ivf: IvfReport) -> tuple[float, float | None]:
                i, j, seconds = _dedup(engine, rows, threshold, settings[0], ivf, spark)
                truth = _sample_pairs(rows, _sample(len(rows), sample), threshold)
                return seconds, _pair_recall(truth, i, j)[1]

            report["growth"] = _growth(vectors, growth, dedup_at, progress)
    finally:
        if spark is not None:
            spark.stop()
    return report


def format_settings(report: dict[str, Any]) -> str:
    """A plain-text table of a report's exact line and ivf settings (and growth)."""
    exact = report["exact"]
    recall_name = "pair_recall" if "threshold" in report else "recall"
    lines = [
        f"{'method':<28}{'seconds':>10}{'speed-up':>10}{recall_name:>13}",
        f"{'exact (scaled)':<28}{exact['seconds']:>10}{'1.0':>10}{'1.0':>13}",
    ]
    for line in report["settings"]:
        name = f"ivf nlist={line['nlist']} nprobe={line['nprobe']}"
        if line["recall_target"] is not None:
            name = f"ivf recall={line['recall_target']} ({line['nprobe']})"
        lines.append(f"{name:<28}{line['seconds']:>10}{line['speedup']:>10}{line[recall_name]:>13}")
    growth = report.get("growth")
    if growth:
        sizes = ", ".join(
            f"{n['rows']}: {n['seconds']} s, nprobe {n['nprobe']}"
            + (f", recall {n['recall']}" if n.get("recall") is not None else "")
            for n in growth["sizes"]
        )
        lines.append(f"growth ({sizes}): exponent {growth['exponent']}")
    return "\n".join(lines)
