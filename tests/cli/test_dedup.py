"""`polyemb dedup`, and `bench-join ivf` / `dedup` reports (their shape, never a speed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyemb.bench.texts import paired_texts
from polyemb.cli import main
from polyemb.ivf import Ivf
from polyemb.near_duplicates import connected_groups, first_of_groups, pairs_above

ROWS = ["a cat on a mat", "stock markets fell", "a cat on a mat", None, "stock markets fell", "rain"]


def write_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for number, text in enumerate(ROWS):
            writer.writerow([number, "" if text is None else text])
    return path


def test_dedup_keeps_the_first_of_each_group(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    argv = [
        "dedup",
        str(write_csv(tmp_path / "in.csv")),
        "-c",
        "text",
        "--threshold",
        "0.999",
        "-o",
        str(out),
    ]
    assert main([*argv, "-m", str(tiny_model_dir), "--no-progress"]) == 0
    # CSV columns are text, as written
    assert pq.read_table(out).column("id").to_pylist() == ["0", "1", "3", "5"]
    summary = capsys.readouterr().err
    assert "6 rows (1 NULL), 2 pairs >= 0.999, 2 groups (4 rows), 2 rows dropped; exact" in summary


def test_dedup_keep_all_writes_group_ids(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    argv = [
        "dedup",
        str(write_csv(tmp_path / "in.csv")),
        "-c",
        "text",
        "--threshold",
        "0.999",
        "-o",
        str(out),
    ]
    argv += ["--keep", "all", "--method", "ivf", "--nprobe", "1", "-m", str(tiny_model_dir), "--no-progress"]
    assert main(argv) == 0
    assert pq.read_table(out).column("group").to_pylist() == [0, 1, 0, None, 1, None]


def test_dedup_of_a_vector_column_needs_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    rows[100:150] = rows[:50] + 0.01
    source, out = tmp_path / "v.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"v": pa.array(list(rows), pa.list_(pa.float32(), 8))}), source)
    argv = ["dedup", str(source), "-c", "v", "-o", str(out), "--method", "ivf", "--recall", "0.99"]
    assert main([*argv, "--model", "/no/such/model"]) == 0
    i, j, _ = pairs_above(rows, 0.9, method=Ivf(recall=0.99))
    kept = int(first_of_groups(connected_groups(200, i, j)).sum())
    assert pq.read_table(out).num_rows == kept <= 150  # at least the 50 copies go
    assert "calibrated recall" in capsys.readouterr().err


def test_dedup_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv(tmp_path / "in.csv")
    assert (
        main(["dedup", str(source), "-c", "text", "-o", str(tmp_path / "o.parquet"), "--threshold", "2"]) == 1
    )
    assert "threshold must be a cosine between -1 and 1" in capsys.readouterr().err
    argv = ["dedup", str(source), "-c", "text", "-o", str(tmp_path / "o.parquet"), "--keep", "all"]
    assert main([*argv, "--group-column", "id"]) == 1
    assert "already has a column 'id'" in capsys.readouterr().err
    assert main(["dedup", str(source), "-c", "nope", "-o", str(tmp_path / "o.parquet")]) == 1
    assert not (tmp_path / "o.parquet").exists()


def test_paired_texts_are_distinct_and_seeded(tmp_path: Path) -> None:
    for name, sentences in (("a.txt", ["one", "two", "three"]), ("b.txt", ["uno", "dos", "tres", "cuatro"])):
        (tmp_path / name).write_text("\n".join(sentences))
    texts = paired_texts(str(tmp_path / "*.txt"), 12)
    assert len(set(texts)) == 12 and texts == paired_texts(str(tmp_path / "*.txt"), 12)
    assert all(len(text.split()) == 2 for text in texts)
    assert texts != paired_texts(str(tmp_path / "*.txt"), 12, seed=1)


@pytest.mark.parametrize("kind", ["ivf", "dedup"])
def test_bench_join_ivf_reports(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    middle = rng.standard_normal((20, 16))
    rows = (middle[rng.integers(0, 20, 1500)] + 0.3 * rng.standard_normal((1500, 16))).astype(np.float32)
    source = tmp_path / "v.parquet"
    pq.write_table(pa.table({"embedding": pa.array(list(rows), pa.list_(pa.float32(), 16))}), source)
    argv = [
        "bench-join",
        kind,
        "--vectors",
        str(source),
        "--rows",
        "1000",
        "--nprobe",
        "2,500",
        "--recall",
        "0.9",
    ]
    argv += [
        "--sample",
        "200",
        "--exact-queries",
        "100",
        "--exact-rows",
        "500",
        "--growth",
        "500,1000",
        "--json",
    ]
    extra = ["--queries", "300", "-k", "5"] if kind == "ivf" else ["--threshold", "0.95"]
    assert main([*argv, *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == kind and report["engine"] == "core"
    assert report["exact"]["timed_queries" if kind == "ivf" else "timed_rows"] == (
        100 if kind == "ivf" else 500
    )
    settings = report["settings"]
    assert [s["nprobe"] for s in settings[:2]] == [2, settings[1]["nlist"]]
    recall = "recall" if kind == "ivf" else "pair_recall"
    assert settings[0][recall] < 1 and settings[1][recall] == 1.0  # every list probed: exact
    assert settings[2]["recall_target"] == 0.9 and settings[2]["recall_estimate"] >= 0.9
    assert [n["rows"] for n in report["growth"]["sizes"]] == [500, 1000]
    assert report["growth"]["exponent"] is not None
    # Each size is timed with the first setting, and says what it found of its sample.
    assert all(n["nprobe"] == 2 and 0 < n["recall"] <= 1 for n in report["growth"]["sizes"])
