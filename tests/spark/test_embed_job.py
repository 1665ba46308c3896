"""udfs/spark/embed_job.py on local[2] with Parquet files in a temp dir."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

import polyemb
from polyemb.testing import build_tiny_model

pytestmark = pytest.mark.spark

JOB = Path(__file__).parents[2] / "udfs" / "spark" / "embed_job.py"


def load_job():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("embed_job", JOB)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A hive-partitioned Parquet dataset: lake/articles/lang=xx/part-0.parquet."""
    root = tmp_path / "lake" / "articles"
    rows = {
        "en": ["The cat sits on the mat.", "Stocks fell sharply.", None],
        "es": ["El gato está en la alfombra.", "Las acciones cayeron."],
    }
    next_id = 0
    for lang, titles in rows.items():
        folder = root / f"lang={lang}"
        folder.mkdir(parents=True)
        ids = list(range(next_id, next_id + len(titles)))
        next_id += len(titles)
        other = ["A cat on a mat." if t else "x" for t in titles]
        pq.write_table(pa.table({"id": ids, "title": titles, "other": other}), folder / "part-0.parquet")
    return root


def read_output(path: Path) -> pa.Table:
    return ds.dataset(path, format="parquet", partitioning="hive").to_table().sort_by("id")


def test_job_keeps_columns_and_partitioning(
    spark: SparkSession, lake: Path, tmp_path: Path, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
) -> None:
    out = tmp_path / "out"
    argv = [
        "--input", str(lake), "--output", str(out), "--text-column", "title", "--model", str(tiny_model_dir),
        "--similarity-query", "a cat", "--pair-columns", "title", "other", "--repartition", "3",
        "--arrow-batch-rows", "2",
    ]  # fmt: skip
    assert load_job().main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lang=en", "lang=es"]
    table = read_output(out)
    assert set(table.column_names) == {
        "id",
        "title",
        "other",
        "lang",
        "embedding",
        "similarity",
        "pair_similarity",
    }
    titles = table.column("title").to_pylist()
    vectors, valid = tiny_encoder.encode_nullable(titles)
    got = table.column("embedding").to_pylist()
    assert [v is None for v in got] == (~valid).tolist()
    np.testing.assert_allclose(np.array([v for v in got if v is not None]), vectors[valid], atol=1e-5)
    query = tiny_encoder.encode(["a cat"])[0]
    for title, score in zip(titles, table.column("similarity").to_pylist(), strict=True):
        assert (
            (score is None)
            if title is None
            else score == pytest.approx(float(tiny_encoder.encode([title])[0] @ query), abs=1e-5)
        )
    other = tiny_encoder.encode(table.column("other").to_pylist())
    for i, score in enumerate(table.column("pair_similarity").to_pylist()):
        assert (
            (score is None)
            if titles[i] is None
            else score == pytest.approx(float(vectors[i] @ other[i]), abs=1e-5)
        )


def test_job_glob_input_without_partitions_and_errors(
    spark: SparkSession, lake: Path, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = load_job()
    out = tmp_path / "globbed"
    argv = [
        "--input",
        f"{lake}/lang=en/*.parquet",
        "--output",
        str(out),
        "--text-column",
        "title",
        "--model",
        str(tiny_model_dir),
    ]
    assert job.main(argv) == 0
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["lang=en"]  # the glob's partition kept
    assert read_output(out).column("lang").to_pylist() == ["en"] * 3
    flat = tmp_path / "flat-lake"
    flat.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "title": ["a cat", None]}), flat / "part-0.parquet")
    assert job.main([*argv[:1], f"{flat}/*.parquet", "--output", str(tmp_path / "flat"), *argv[4:]]) == 0
    assert not [p for p in (tmp_path / "flat").iterdir() if p.is_dir()]
    assert pq.read_table(tmp_path / "flat").num_rows == 2
    assert (
        job.main(
            [*argv[:3], str(tmp_path / "other"), "--text-column", "titel", "--model", str(tiny_model_dir)]
        )
        == 2
    )
    assert "column 'titel' is not in the input" in capsys.readouterr().err
    # Said before any work, exit 2: the job keeps every input column, so it overwrites none
    # (these replaced 'other' and exited 0), and it embeds only text.
    other = [*argv[:3], str(tmp_path / "other"), *argv[4:]]
    for taken in (
        ["--vector-column", "other"],
        ["--vector-column", "Other"],  # one name to Spark: it replaced 'other' without a word
        ["--similarity-query", "q", "--similarity-column", "title"],
        ["--similarity-query", "q", "--similarity-column", "TITLE"],
        ["--pair-columns", "title", "title", "--pair-similarity-column", "embedding"],
    ):
        assert job.main([*other, *taken]) == 2
        assert "is taken (the input's columns, or another new one)" in capsys.readouterr().err
    assert job.main([*other[:5], "id", *other[6:]]) == 2
    assert "column 'id' is bigint: give a text (string) column" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    with pytest.raises(SystemExit) as info:
        job.main([*other, "--batch-size", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        job.main(["--help"])
    assert info.value.code == 0
    # A dot in the text column's name is part of the name, not a struct path.
    dotted = tmp_path / "dotted"
    dotted.mkdir()
    pq.write_table(pa.table({"my.title": ["a cat", None]}), dotted / "part-0.parquet")
    out = tmp_path / "dotted-out"
    argv = ["--input", str(dotted), "--output", str(out), "--text-column", "my.title"]
    assert job.main([*argv, "--model", str(tiny_model_dir)]) == 0
    assert [v is None for v in pq.read_table(out).column("embedding").to_pylist()] == [False, True]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))


def test_job_never_writes_over_its_input_and_refuses_before_any_work(
    spark: SparkSession, lake: Path, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = load_job()
    before = files_under(lake)
    nowhere = str(tmp_path / "no-model")  # a model that cannot load: a refusal comes before loading
    for output in (lake, lake / "lang=en", lake.parent, f"{lake}/"):
        argv = ["--input", str(lake), "--output", str(output), "--text-column", "title", "--model", nowhere]
        assert job.main([*argv, "--mode", "overwrite"]) == 2
        assert "holds or is inside the input" in capsys.readouterr().err
    glob = ["--input", f"{lake}/*/*.parquet", "--text-column", "title", "--model", nowhere]
    assert job.main([*glob, "--output", str(lake / "lang=es"), "--mode", "append"]) == 2
    assert "holds or is inside the input" in capsys.readouterr().err
    assert files_under(lake) == before  # nothing deleted, nothing added
    taken = tmp_path / "taken"
    taken.mkdir()
    assert job.main([*glob, "--output", str(taken)]) == 2
    assert f"the output {str(taken)!r} exists: choose another, or give --mode" in capsys.readouterr().err
    missing = ["--output", str(tmp_path / "out"), "--text-column", "title", "--model", nowhere]
    assert job.main(["--input", str(tmp_path / "nope"), *missing]) == 2
    assert f"cannot read Parquet at {str(tmp_path / 'nope')!r}" in capsys.readouterr().err
    bare = ["--input", str(lake), "--output", str(tmp_path / "out"), "--text-column", "title"]
    assert job.main([*bare, "--no-vectors", "--model", str(tiny_model_dir)]) == 2
    assert "--no-vectors leaves nothing to add" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_path_spark_writes_as_a_uri_is_still_the_input(
    spark: SparkSession, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Spark names the files read as URIs (my%20lake): an output around them was not seen as the
    # input's, and an overwrite deleted it.
    for name in ("my lake", "50%", "a#b"):
        lake = tmp_path / name / "articles" / "lang=en"
        lake.mkdir(parents=True)
        pq.write_table(pa.table({"title": ["a cat"]}), lake / "part-0.parquet")
        job = load_job()
        top, *rest = str(lake.parent / "*" / "*.parquet").lstrip("/").split("/")
        anywhere = "/".join(["", f"{top[:-1]}?", *rest])  # a glob in the first folder: only the files tell
        for given, output in ((lake.parent, tmp_path / name), (anywhere, lake.parent)):
            argv = ["--input", str(given), "--output", str(output), "--text-column", "title"]
            assert job.main([*argv, "--model", str(tiny_model_dir), "--mode", "overwrite"]) == 2
            assert "holds or is inside the input" in capsys.readouterr().err
        assert (lake / "part-0.parquet").exists()
        from polyemb.spark.datasets import folder_keys, input_files, read_parquet

        assert folder_keys(input_files(read_parquet(spark, str(lake.parent)))) == ["lang"]


def test_output_checks_place_each_path_on_its_own_file_system(spark: SparkSession, lake: Path) -> None:
    from polyemb.spark.datasets import check_output, partition_base, read_parquet

    found = read_parquet(spark, str(lake))
    # Other schemes and hosts (Hadoop refused to qualify them with the output's: "Wrong FS"), and
    # globs in the first folder (nothing left to be inside of; the files read still count).
    for given in ("hdfs://nn:8020/x", "s3a://bucket-*/x", f"file:/{str(lake)[1:3]}*/x", "/tm*/x"):
        check_output(spark, str(lake.parent / "out"), "overwrite", {given: found})
        with pytest.raises(polyemb.InvalidInputError, match="holds or is inside the input"):
            check_output(spark, str(lake.parent), "overwrite", {given: found})
    assert partition_base("file:///year=2023") is None and partition_base("s3a://b-*/y=1/*") is None
    assert partition_base("s3a://lake/articles/year=2023/*/*.parquet") == "s3a://lake/articles"


def test_a_folder_named_as_a_partition_keeps_the_files_own_column(
    spark: SparkSession, tmp_path: Path
) -> None:
    # basePath only where the folders hide a key that is not a data column of the files.
    from polyemb.spark.datasets import read_parquet

    folder = tmp_path / "dt=2024-01-01"
    folder.mkdir()
    pq.write_table(pa.table({"dt": ["2022-01-08"], "title": ["a cat"]}), folder / "part-0.parquet")
    assert read_parquet(spark, str(folder)).collect()[0]["dt"] == "2022-01-08"


def test_job_keeps_partition_folders_as_named(
    spark: SparkSession, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Zero-padded values stay as written (Spark would read hour=05 as 5 and write hour=5), and a
    # partition's own folder as the input keeps its key.
    lake = tmp_path / "events"
    for day, hour in (("2024-01-02", "05"), ("2024-01-02", "17"), ("2024-01-03", "05")):
        folder = lake / f"day={day}" / f"hour={hour}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"title": [f"event at {hour}"]}), folder / "part-0.parquet")
    job = load_job()
    model = ["--text-column", "title", "--model", str(tiny_model_dir)]
    assert job.main(["--input", str(lake), "--output", str(tmp_path / "all"), *model]) == 0
    assert files_under(tmp_path / "all") and {
        p.parent.name for p in (tmp_path / "all").rglob("*.parquet")
    } == {
        "hour=05",
        "hour=17",
    }
    one_day = ["--input", str(lake / "day=2024-01-02"), "--output", str(tmp_path / "day"), *model]
    assert job.main(one_day) == 0
    assert sorted(
        str(p.parent.relative_to(tmp_path / "day")) for p in (tmp_path / "day").rglob("*.parquet")
    ) == [
        "day=2024-01-02/hour=05",
        "day=2024-01-02/hour=17",
    ]


def test_job_with_a_store_embeds_only_new_texts(
    spark: SparkSession,
    lake: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_encoder: polyemb.Encoder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = load_job()
    store = tmp_path / "store"
    common = [
        "--input",
        str(lake),
        "--text-column",
        "title",
        "--model",
        str(tiny_model_dir),
        "--store",
        str(store),
    ]
    assert job.main([*common, "--output", str(tmp_path / "day1")]) == 0
    assert "4 new texts embedded" in capsys.readouterr().err
    extra = lake / "lang=de"
    extra.mkdir()
    pq.write_table(
        pa.table({"id": [10], "title": ["Die Katze sitzt auf der Matte."], "other": ["x"]}),
        extra / "p.parquet",
    )
    assert job.main([*common, "--output", str(tmp_path / "day2")]) == 0
    assert "1 new texts embedded" in capsys.readouterr().err
    table = read_output(tmp_path / "day2")
    assert table.num_rows == 6 and sorted(p.name for p in (tmp_path / "day2").iterdir() if p.is_dir()) == [
        "lang=de",
        "lang=en",
        "lang=es",
    ]
    titles = table.column("title").to_pylist()
    vectors, valid = tiny_encoder.encode_nullable(titles)
    got = table.column("embedding").to_pylist()
    assert [v is None for v in got] == (~valid).tolist()
    np.testing.assert_allclose(np.array([v for v in got if v is not None]), vectors[valid], atol=1e-5)
    assert spark.read.parquet(str(tmp_path / "day2")).schema["embedding"].metadata == {
        "polyemb.model": tiny_encoder.provenance
    }


@pytest.mark.slow
def test_spark_submit(lake: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    import pyspark

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    out = tmp_path / "submitted"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [
        str(submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false", str(JOB),
        "--input", str(lake), "--output", str(out), "--text-column", "title",
        "--model", str(tiny_model_dir), "--delivery", "broadcast",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded" in result.stderr and "(broadcast)" in result.stderr
    assert read_output(out).num_rows == 5


def test_job_with_a_store_and_similarity_loads_the_model_once_per_worker(
    spark: SparkSession, lake: Path, tmp_path: Path, load_log_dir: Path
) -> None:
    # A model of its own, so the loads counted are this test's alone.
    model = build_tiny_model(tmp_path / "model", seed=21)
    argv = [
        "--input", str(lake), "--output", str(tmp_path / "out"), "--text-column", "title",
        "--model", str(model), "--store", str(tmp_path / "store"), "--similarity-query", "a cat",
        "--repartition", "4",
    ]  # fmt: skip
    assert load_job().main(argv) == 0
    fingerprint = polyemb.load(model).fingerprint
    loads: dict[int, int] = {}
    for path in load_log_dir.glob("loads-*.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["fingerprint"] == fingerprint:
                loads[event["pid"]] = loads.get(event["pid"], 0) + 1
    print(f"loads per worker pid: {loads}")
    # embed_incremental asks for fp32 at the model's length, the SQL function for "auto" and no
    # length: on a CPU worker that is one model, loaded once.
    assert loads and all(count == 1 for count in loads.values()), loads
