"""`polyemb bench`: the report's shape (never a speed: timings belong to benchmarks, not tests)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from polyemb.bench.texts import load_texts, scenario_texts
from polyemb.cli import main
from polyemb.errors import InvalidInputError


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
    assert report["against"] == [against] and report["baseline"] == against and report["rounds"] == 2
    assert set(report["scenarios"]) == {"a", "b", "c"}
    a, b, c = (report["scenarios"][name] for name in "abc")
    assert (a["texts"], a["distinct"]) == (40, 40)
    assert (b["texts"], b["distinct"]) == (40, 4)
    assert c["texts"] == 4
    for scenario in (a, b, c):
        assert list(scenario["sides"]) == ["polyemb-fp32", against]
        for side in scenario["sides"].values():
            assert len(side["ratios"]) == len(side["per_s"]) == 2 and side["ratio"] > 0
            assert side["median_per_s"] > 0 and side["peak_mib"] > 0
            assert side["min_row_cosine"] > 0.9999  # same model, same texts: the same vectors
        assert scenario["sides"][against]["ratios"] == [1.0, 1.0]  # the baseline against itself


def test_several_references_and_precisions(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "-m", str(tiny_model_dir), "--size", "30", "--rounds", "3", "--scenarios", "a", "--json"]
    assert main([*argv, "--against", "sentence-transformers,polyemb-bf16,polyemb-fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    sides = report["scenarios"]["a"]["sides"]
    # The loaded encoder first, each named once, then the references in the order given.
    assert list(sides) == ["polyemb-fp32", "sentence-transformers", "polyemb-bf16"]
    assert sides["polyemb-fp32"]["min_row_cosine"] > 0.9999
    # bf16 weights: close to fp32, not equal (the contract of bf16; see the README's precisions).
    assert 0.99 < sides["polyemb-bf16"]["mean_row_cosine"] < 0.999999


def test_peer_without_its_extras_is_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A "Python" that cannot run the peer: the error names the reference and how to make one.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named sentence_transformers' >&2\nexit 1\n")
    fake.chmod(0o755)
    argv = ["bench", "-m", str(tiny_model_dir), "--size", "10", "--rounds", "1", "--scenarios", "a"]
    assert main([*argv, "--against", "st-onnx", "--peer-python", str(fake)]) == 1
    err = capsys.readouterr().err
    assert "st-onnx could not run" in err and "No module named sentence_transformers" in err
    assert "--peer-python" in err


def test_unknown_reference_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--against", "sentence-transformers,faiss"])
    assert "comma-separated list of" in capsys.readouterr().err


@pytest.mark.spark
def test_spark_report_shape(spark, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    # `spark` first: the bench then reuses the suite's session rather than starting its own.
    argv = ["bench", "-m", str(tiny_model_dir), "--size", "40", "--rounds", "1", "--scenarios", "a"]
    assert main([*argv, "--json", "--against", "spark"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["against"] == ["spark"] and report["spark"]["shipment"]["files"] > 0
    scenario = report["scenarios"]["a"]
    assert scenario["texts"] == 40 and list(scenario["sides"]) == ["polyemb-fp32", "spark"]
    assert scenario["sides"]["polyemb-fp32"]["min_row_cosine"] > 0.9999


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
    assert "vs sentence-transformers" in out and "texts/s" in out
    rows = [line.split()[:4] for line in out.splitlines()[3:]]
    assert rows == [
        ["a", "20", "20", "polyemb-fp32"],
        ["a", "20", "20", "sentence-transformers"],
        ["b", "20", "2", "polyemb-fp32"],
        ["b", "20", "2", "sentence-transformers"],
    ]


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


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--rounds", "0"],
        ["bench", "--size", "-5"],
        ["bench-memory", "--rounds", "0"],
        ["bench-memory", "--size", "0"],
        ["bench-memory", "--rows", "-5"],
        ["bench-store", "lookup", "--keys", "0"],
        ["bench-store", "incremental", "--edited", "1.5"],
        ["bench-store", "incremental", "--appended", "-0.5"],
        ["bench-store", "torture", "--seconds", "-5"],
        ["bench-store", "torture", "--forked", "-1"],
        ["bench-join", "ivf", "--exact-queries", "0"],
        ["bench-join", "ivf", "--rows", "-5"],
        ["bench-join", "dedup", "--threshold", "nan"],
        ["bench-long", "--data", ".", "--rounds", "0"],
        ["bench-long", "--data", ".", "--cost-docs", "-2"],
    ],
)
def test_sizes_and_rounds_that_mean_nothing_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # They crashed later with a traceback, or ran and reported figures of nothing.
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2 and "expected a" in capsys.readouterr().err


def test_bench_store_and_memory_refuse_what_cannot_be_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench-store", "lookup", "--workdir", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["bench-store", "lookup", "--entries", "10", "--keys", "20"]) == 1
    assert "--keys (20) cannot exceed --entries (10)" in capsys.readouterr().err
    assert main(["bench-store", "torture", "--spawned", "0", "--forked", "0"]) == 1
    assert "at least one worker" in capsys.readouterr().err
    # Every precision failed: the table says why, and the exit status says it failed.
    assert (
        main(["bench-memory", "-m", str(tmp_path / "no-such-model"), "--precisions", "fp32", "--size", "5"])
        == 1
    )
    assert "cannot run here" in capsys.readouterr().out
    # A sink file that is not there: one line, before any child process (a traceback from each).
    missing = str(tmp_path / "none.parquet")
    sink = ["bench-memory", "--precisions", "fp32", "--polars-sink", missing, "--column", "t"]
    assert main(sink) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bench_memory_report(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench-memory",
        "-m",
        str(tiny_model_dir),
        "--precisions",
        "fp32,bf16",
        "--size",
        "20",
        "--rounds",
        "2",
    ]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["texts"] == 20 and list(report["precisions"]) == ["fp32", "bf16"]
    for figures in report["precisions"].values():
        assert figures["per_s"] > 0 and figures["load_s"] > 0
        # Each precision in a process of its own: Python alone < after loading <= the peak.
        assert 0 < figures["python_mib"] < figures["loaded_mib"] <= figures["peak_mib"]
    with pytest.raises(SystemExit):
        main(["bench-memory", "--precisions", "fp32,int4"])
    assert "comma-separated subset of fp32,fp16,bf16,int8" in capsys.readouterr().err


def test_bench_store_lookup_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each lookup runs in a child process (python -m polyemb.bench._lookup_child).
    argv = ["bench-store", "lookup", "--entries", "3000", "--keys", "1000", "--dim", "8"]
    assert main([*argv, "--workdir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "lookup"
    results = report["results"]
    assert [r["kind"] for r in results] == ["one earlier run", "random over the store"]
    for result in results:
        assert result["keys"] == result["found"] == 1000
        assert result["entries"] == 3000 and result["keys_per_s"] > 0 and result["peak_rss_mib"] > 0


def test_bench_join_duckdb_report(
    tiny_model_dir: Path, sts_sentences: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentence.replace("\n", " ") for sentence in sts_sentences))
    argv = ["bench-join", "duckdb", "-m", str(tiny_model_dir), "--texts", str(texts), "--size", "100"]
    assert main([*argv, "-k", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kind"], report["left"], report["right"], report["k"]) == ("duckdb", 100, 100, 3)
    # The index function and DuckDB's exact cross join find the same top 3 (ties aside).
    assert report["cross_join_agreement"] > 0.99


def test_bench_store_torture_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench-store", "torture", "--seconds", "4", "--spawned", "1", "--forked", "1", "--seed", "3"]
    assert main([*argv, "--workdir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "torture" and report["ok"] is True
    assert report["operations"]["encode"] > 0 and report["losses"] == report["wrong_vectors"] == 0


def test_bench_long_report(
    tiny_model_dir: Path, sts_rows: list[dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from polyemb.bench.long import make_documents

    for lang in ("en", "de"):  # header-less stsb-multi-mt files of the sample's pairs
        with (tmp_path / f"stsb-{lang}-dev.csv").open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows(
                (r["sentence1"], r["sentence2"], r["score"]) for r in sts_rows if r["lang"] == lang
            )
    documents = make_documents(tmp_path / "stsb-en-dev.csv", "en", 10)
    # Too few sentences to fill a document: a clear error, not random.sample's ValueError.
    small = tmp_path / "small" / "stsb-en-dev.csv"
    small.parent.mkdir()
    small.write_text("".join(f"sentence number {i},another one {i},4\n" for i in range(12)))
    with pytest.raises(InvalidInputError, match="sentences to fill documents with"):
        make_documents(small, "en", 3)
    pairs = {(r["sentence1"], r["sentence2"]): float(r["score"]) for r in sts_rows if r["lang"] == "en"}
    assert len(documents.docs) == 10
    for doc, query, (start, end) in zip(documents.docs, documents.queries, documents.targets, strict=True):
        assert pairs[(doc[start:end], query)] >= 4  # the query paraphrases the sentence placed there
    argv = ["bench-long", "-m", str(tiny_model_dir), "--data", str(tmp_path), "--split", "dev"]
    argv += ["--langs", "en,de", "--docs", "12", "--cost-docs", "4", "--rounds", "1", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["max_seq_length"], report["stride"]) == (32, 8)
    rows = report["retrieval"]
    assert {(r["lang"], r["method"], r["group"]) for r in rows} == {
        (lang, method, group)
        for lang in ("en", "de")
        for method in ("truncate", "mean", "max-sim")
        for group in ("inside", "across", "beyond")
    }
    for row in rows:
        assert (row["recall@1"] is None) == (row["n"] == 0)
        if row["n"]:
            assert 0 <= row["recall@1"] <= row["recall@10"] <= 1
    assert sum(r["n"] for r in rows if r["lang"] == "en" and r["method"] == "mean") == 12
    cost = report["cost"]
    assert cost["documents"] == 4 and cost["windows"] >= 4
    assert set(cost["ratio_to_plain"]) == {"plain", "mean", "chunks"} and cost["ratio_to_plain"]["plain"] == 1
    assert main(argv[:-1]) == 0
    assert "time per token" in capsys.readouterr().out
    # The command quiets the encoder's truncation warnings for itself only.
    assert logging.getLogger("polyemb.encoder").level == logging.NOTSET


def test_bench_join_retrieval_report(
    minilm_dir: Path, sts_rows: list[dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Aligned dev files: the sample takes the same pairs in every language, in pair order.
    for lang in ("en", "de"):
        rows = sorted((r for r in sts_rows if r["lang"] == lang), key=lambda r: int(r["pair"]))
        with (tmp_path / f"stsb-{lang}-dev.csv").open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows((r["sentence1"], r["sentence2"], r["score"]) for r in rows)
    argv = ["bench-join", "retrieval", "--data", str(tmp_path), "--pairs", "en-de", "-m", str(minilm_dir)]
    assert main([*argv, "--method", "ivf", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["direction"] for r in report["results"]] == ["en->de", "de->en"]
    for row in report["results"]:
        assert row["sentences"] >= 90
        # A real model finds most translations; margin's gain over cosine is the point of it.
        assert 0.5 < row["cosine"] <= row["margin"] + 0.05
        for score in ("cosine", "margin", "csls"):
            assert 0 <= row[f"{score}_ivf"] <= 1
    assert report["ivf"]["nprobe"] is None  # the join's own default, not the first of a list


def test_a_peer_is_measured_against_the_precision_it_computes_in(tiny_encoder: object) -> None:
    """OpenVINO asked for fp32 computes in bf16 on CPUs with bf16 units: its share of the peak
    must be of bf16's peak, as the peer reports (an fp32 share above 100% gave it away)."""
    from types import SimpleNamespace

    from polyemb.bench._peer_child import _computes_in
    from polyemb.bench.sides import side_precision

    class Compiled:
        def __init__(self, hint: str) -> None:
            self.hint = hint

        def get_property(self, name: str) -> SimpleNamespace:
            assert name == "INFERENCE_PRECISION_HINT"
            return SimpleNamespace(get_type_name=lambda: self.hint)

    def model(request: object) -> list[SimpleNamespace]:
        return [SimpleNamespace(auto_model=SimpleNamespace(request=request))]

    assert _computes_in(model(Compiled("bf16")), "fp32") == "bf16"
    assert _computes_in(model(Compiled("f32")), "fp32") == "fp32"
    assert _computes_in(model(Compiled("bf16")), "int8") == "int8"  # static int8 stays int8
    assert _computes_in(model(None), "fp32") == "fp32"  # ONNX Runtime: no such property
    reported = {"st-openvino": {"computes_in": "bf16"}}
    assert side_precision("st-openvino", tiny_encoder, reported) == "bf16"  # type: ignore[arg-type]
    assert side_precision("st-openvino", tiny_encoder) == "fp32"  # type: ignore[arg-type]
    assert side_precision("st-onnx-int8", tiny_encoder, reported) == "int8"  # type: ignore[arg-type]
