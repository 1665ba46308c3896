"""The SQL recipes in udfs/duckdb, each run through `polyemb sql -f` with real MiniLM weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polyemb.cli import main

from .test_duckdb import needs_vss

UDFS = Path(__file__).parents[2] / "udfs"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The recipes name 'udfs/data/articles.csv' relative to the repository root, and some write
    # files: run them in a scratch copy.
    shutil.copytree(UDFS, tmp_path / "udfs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_recipe(
    name: str, minilm_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> list[list[dict[str, object]]]:
    status = main(["sql", "--json", "-f", f"udfs/duckdb/{name}", "--model", str(minilm_dir), *extra])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines() if line.strip()]


@pytest.mark.slow
def test_search(workdir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [rows] = run_recipe("search.sql", minilm_dir, capsys)
    assert len(rows) == 5
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0]["title"] == "Heavy snowfall closes mountain roads across the Alps"


@pytest.mark.slow
def test_cross_lingual_join(workdir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [rows] = run_recipe("cross_lingual_join.sql", minilm_dir, capsys)
    english = [line for line in (UDFS / "data" / "articles.csv").read_text().splitlines() if ",en," in line]
    assert len(rows) == len(english)  # one best match per English headline
    assert all(r["lang"] != "en" for r in rows)


@pytest.mark.slow
def test_near_duplicates(workdir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [rows] = run_recipe("near_duplicates.sql", minilm_dir, capsys)
    assert all(r["score"] >= 0.8 and r["id_a"] < r["id_b"] for r in rows)  # type: ignore[operator]


@pytest.mark.slow
def test_store_vectors_with_provenance(
    workdir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [rows] = run_recipe("store_vectors.sql", minilm_dir, capsys, "--db", str(workdir / "vectors.duckdb"))
    assert len(rows) == 3 and "bread" in str(rows[0]["title"]).lower()
    table = pq.read_table(workdir / "article_vectors.parquet")
    models = set(table.column("model").to_pylist())
    assert len(models) == 1 and models.pop().startswith(str(minilm_dir) + "@sha256:")
    assert (workdir / "vectors.duckdb").exists()


@pytest.mark.slow
@needs_vss
def test_hnsw_index(workdir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [rows] = run_recipe("hnsw_index.sql", minilm_dir, capsys, "--extension", "vss")
    assert len(rows) == 3
    assert rows[0]["title"] == "Scientists discover a new species of frog in the rainforest"


@pytest.mark.slow
def test_passage_search(workdir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 64 tokens a window: the refund sentence lies past the first window of its article.
    [rows] = run_recipe("passage_search.sql", minilm_dir, capsys, "--max-seq-length", "64")
    assert len(rows) == 3
    assert rows[0]["title"] == "Returns and refunds"
    assert "Refunds are paid" in str(rows[0]["passage"]) and int(rows[0]["start"]) > 0  # type: ignore[call-overload]
    body = next(
        line
        for line in (UDFS / "data" / "help_articles.csv").read_text(encoding="utf-8").splitlines()
        if line.startswith("1,")
    )
    assert str(rows[0]["passage"]) in body
