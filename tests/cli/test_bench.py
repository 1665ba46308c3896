"""`polyemb bench`: the report's shape (never a speed: timings belong to benchmarks, not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyemb.bench import load_texts, scenario_texts
from polyemb.cli import main


@pytest.mark.parametrize("against", ["sentence-transformers", "duckdb"])
def test_json_report_shape(tiny_model_dir: Path, against: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "-m",
        str(tiny_model_dir),
        "--size",
        "40",
        "--rounds",
        "2",
        "--json",
        "--against",
        against,
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["against"] == against and report["rounds"] == 2
    assert set(report["scenarios"]) == {"a", "b", "c"}
    a, b, c = (report["scenarios"][name] for name in "abc")
    assert (a["texts"], a["distinct"]) == (40, 40)
    assert (b["texts"], b["distinct"]) == (40, 4)
    assert c["texts"] == 4
    for scenario in (a, b, c):
        assert len(scenario["ratios"]) == 2 and scenario["ratio"] > 0
        assert scenario["median_polyemb_per_s"] > 0 and scenario["median_reference_per_s"] > 0
        assert scenario["min_row_cosine"] > 0.9999  # same model, same texts: the same vectors
        assert set(scenario["peak_mib"]) == {"polyemb", against}


@pytest.mark.spark
def test_spark_report_shape(spark, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    # `spark` first: the bench then reuses the suite's session rather than starting its own.
    argv = ["bench", "-m", str(tiny_model_dir), "--size", "40", "--rounds", "1", "--scenarios", "a"]
    assert main([*argv, "--json", "--against", "spark"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["against"] == "spark" and report["shipment"]["files"] > 0
    scenario = report["scenarios"]["a"]
    assert scenario["texts"] == 40 and scenario["min_row_cosine"] > 0.9999
    assert set(scenario["peak_mib"]) == {"polyemb", "spark"}


def test_table_report_and_texts_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"line number {i} of the file" for i in range(60)))
    assert (
        main(
            [
                "bench",
                "-m",
                str(tiny_model_dir),
                "--texts",
                str(texts),
                "--size",
                "20",
                "--rounds",
                "1",
                "--scenarios",
                "a,b",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "sentence-transformers/s" in out and "ratio" in out
    assert [line.split()[0] for line in out.splitlines()[3:]] == ["a", "b"]


def test_scenarios_from_sts_csv(sts_rows: list[dict[str, str]], tmp_path: Path) -> None:
    source = tmp_path / "sts.csv"
    source.write_text("\n".join(f'"{r["sentence1"]}","{r["sentence2"]}",{r["score"]}' for r in sts_rows[:50]))
    pool = load_texts(source)
    assert len(pool) == 100
    repeated = scenario_texts("b", pool, 50)
    assert len(repeated) == 50 and len(set(repeated)) == 5
    paragraphs = scenario_texts("c", pool, 50)
    assert len(paragraphs) == 5 and all(len(p.split()) > 40 for p in paragraphs)


def test_bad_scenarios_and_sizes(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--scenarios", "a,z"])
    assert "comma-separated subset" in capsys.readouterr().err
    assert main(["bench", "-m", str(tiny_model_dir), "--texts", "/nonexistent.csv"]) == 1
    assert "does not exist" in capsys.readouterr().err
