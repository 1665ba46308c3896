"""The Polars benchmarks' reports: their shape, never a speed (timings belong to benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyemb.cli import main


def test_bench_against_polars(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "-m", str(tiny_model_dir), "--size", "40", "--rounds", "2", "--scenarios", "a,b"]
    assert main([*argv, "--against", "polyemb-fp32,polars", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"] == "polyemb-fp32"
    for scenario in report["scenarios"].values():
        sides = scenario["sides"]
        assert list(sides) == ["polyemb-fp32", "polars"]
        assert sides["polars"]["ratio"] > 0 and len(sides["polars"]["ratios"]) == 2
        assert sides["polars"]["min_row_cosine"] > 0.9999  # the core's vectors, through Polars


def test_bench_memory_polars_sink(
    tiny_model_dir: Path, sts_sentences: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parquet = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": sts_sentences[:300]}), parquet, row_group_size=100)
    argv = ["bench-memory", "-m", str(tiny_model_dir), "--precisions", "fp32", "--rounds", "1"]
    sink = [*argv, "--polars-sink", str(parquet), "--column", "text", "--rows", "250"]
    assert main([*sink, "--chunk-rows", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["polars_sink"] == str(parquet) and report["column"] == "text" and report["polars"]
    assert report["chunk_rows"] == 64
    figures = report["precisions"]["fp32"]
    assert figures["rows"] == 250 and figures["per_s"] > 0
    # One process for the run: Python alone < after loading <= the peak.
    assert 0 < figures["python_mib"] < figures["loaded_mib"] <= figures["peak_mib"]
    assert main([*argv, "--polars-sink", str(parquet)]) == 1
    assert "--polars-sink needs --column" in capsys.readouterr().err
