"""The Spark UDFs on a real local[2] Spark: same vectors as the core, NULLs, batches, loads."""

from __future__ import annotations

import json
import multiprocessing
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyspark
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import polyemb
import polyemb.spark
from polyemb import finding
from polyemb.spark import delivery
from polyemb.spark.delivery import ModelSource
from polyemb.testing import build_tiny_model

pytestmark = pytest.mark.spark

TEXTS = [
    "The cat sits on the mat.",
    None,
    "El gato está en la alfombra.",
    "",
    "The cat sits on the mat.",
    "猫がマットの上に座っている。",
]


def frame(spark: SparkSession, texts: list[str | None], partitions: int = 2):  # type: ignore[no-untyped-def]
    rows = [(i, text) for i, text in enumerate(texts)]
    return spark.createDataFrame(rows, "id long, text string").repartition(partitions)


def check_vectors(rows: list, texts: list[str | None], encoder: polyemb.Encoder) -> None:  # type: ignore[type-arg]
    expected, valid = encoder.encode_nullable(texts)
    by_id = {row["id"]: row["v"] for row in rows}
    assert sorted(by_id) == list(range(len(texts)))
    for i in range(len(texts)):
        if not valid[i]:
            assert by_id[i] is None
        else:
            np.testing.assert_allclose(np.array(by_id[i], dtype=np.float32), expected[i], atol=1e-5)


@pytest.mark.parametrize("delivery", ["broadcast", "artifact", "path"])
def test_embed_udf_matches_the_core(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, delivery: str
) -> None:
    embed = polyemb.spark.embed_udf(tiny_model_dir, delivery=delivery)  # type: ignore[arg-type]
    rows = frame(spark, TEXTS).select("id", embed("text").alias("v")).collect()
    check_vectors(rows, TEXTS, tiny_encoder)
    assert dict(frame(spark, TEXTS).select(embed("text").alias("v")).dtypes)["v"] == "array<float>"


@pytest.mark.parametrize("batch_rows", [1, 3, 10_000])
def test_any_arrow_batch_size_and_empty_partitions(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder, batch_rows: int
) -> None:
    texts = [None if i % 5 == 2 else f"row {i % 7} text" for i in range(23)]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    try:
        embed = polyemb.spark.embed_udf(tiny_model_dir, delivery="path")
        rows = frame(spark, texts, partitions=8).select("id", embed("text").alias("v")).collect()
        check_vectors(rows, texts, tiny_encoder)
        empty = spark.createDataFrame([], "id long, text string")
        assert empty.select(embed("text")).collect() == []
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_similarity_udf(spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder) -> None:
    similarity = polyemb.spark.similarity_udf(tiny_model_dir)
    pairs = [("a cat", "a dog"), ("a cat", None), (None, None), ("same", "same")]
    df = spark.createDataFrame([(i, a, b) for i, (a, b) in enumerate(pairs)], "id long, a string, b string")
    rows = {
        r["id"]: r
        for r in df.select(
            "id", similarity("a", "b").alias("s"), similarity("a", F.lit("a dog")).alias("q")
        ).collect()
    }
    a, b = tiny_encoder.encode(["a cat", "a dog"])
    assert rows[0]["s"] == pytest.approx(float(a @ b), abs=1e-5)
    assert rows[1]["s"] is None and rows[2]["s"] is None
    assert rows[3]["s"] == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["q"] == pytest.approx(float(a @ b), abs=1e-5) and rows[2]["q"] is None


def test_spark_sql_functions(
    spark: SparkSession, tiny_model_dir: Path, tiny_encoder: polyemb.Encoder
) -> None:
    polyemb.spark.register(spark, tiny_model_dir)
    frame(spark, TEXTS).createOrReplaceTempView("texts")
    rows = spark.sql(
        "SELECT id, embed(text) AS v, semantic_similarity(text, 'El gato') AS s FROM texts"
    ).collect()
    check_vectors(rows, TEXTS, tiny_encoder)
    query = tiny_encoder.encode(["El gato"])[0]
    for row in rows:
        text = TEXTS[row["id"]]
        if text is None:
            assert row["s"] is None
        else:
            assert row["s"] == pytest.approx(float(tiny_encoder.encode([text])[0] @ query), abs=1e-5)


def test_each_worker_loads_the_model_once(
    spark: SparkSession, tiny_model_dir: Path, load_log_dir: Path
) -> None:
    # A model content of its own (another max_seq_length is another cache key), so the loads
    # counted here are this test's alone.
    embed = polyemb.spark.embed_udf(tiny_model_dir, max_seq_length=24)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")  # several batches per task
    try:
        texts = [f"text {i}" for i in range(200)]
        for _ in range(2):  # a second query
            assert frame(spark, texts, partitions=6).select(embed("text").alias("v")).count() == 200
            assert len(frame(spark, texts, partitions=6).select(embed("text").alias("v")).collect()) == 200
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    events = [
        json.loads(line)
        for path in load_log_dir.glob("loads-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    mine = [
        e
        for e in events
        if e["fingerprint"] == polyemb.load(tiny_model_dir).fingerprint and e.get("max_seq_length") == 24
    ]
    per_pid: dict[int, int] = {}
    for event in mine:
        per_pid[event["pid"]] = per_pid.get(event["pid"], 0) + 1
    print(f"loads per worker pid: {per_pid}")
    assert mine, "the load log recorded no load"
    assert all(count == 1 for count in per_pid.values()), per_pid
    assert len(per_pid) <= 2  # local[2]: at most two Python workers at a time, reused


def test_non_string_column_is_a_clear_spark_error_before_any_load(
    spark: SparkSession, tiny_model_dir: Path, load_log_dir: Path
) -> None:
    # A max_seq_length of its own marks this test's loads in the log.
    options: dict[str, Any] = {"delivery": "path", "max_seq_length": 23}
    numbers = spark.createDataFrame([(1, "a")], "n int, t string")
    calls = {
        "embed": polyemb.spark.embed_udf(tiny_model_dir, **options)("n"),
        "embed_chunks": polyemb.spark.embed_chunks_udf(tiny_model_dir, **options)("n"),
        "semantic_similarity": polyemb.spark.similarity_udf(tiny_model_dir, **options)("t", "n"),
    }
    for name, call in calls.items():
        with pytest.raises(
            Exception, match=rf"{name}\(\): column 'n' has Arrow type int32, not a string type"
        ):
            numbers.select(call).collect()
    loads = [
        json.loads(line)
        for path in load_log_dir.glob("loads-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert not [e for e in loads if e.get("max_seq_length") == 23], "a worker loaded the model first"


# ---------------------------------------------------------------------- worker pieces, no Spark


class _Broadcast:
    def __init__(self, value: dict[str, bytes]) -> None:
        self._value = value

    @property
    def value(self) -> dict[str, bytes]:
        return self._value


def _materialize_in_process(args: tuple[dict[str, bytes], str, str]) -> str:
    import os

    payload, fingerprint, cache = args
    os.environ["POLYEMB_MODEL_CACHE"] = cache
    source = ModelSource("m", fingerprint, "broadcast", "fp32", None, broadcast=_Broadcast(payload))
    return delivery.materialize(source)


def test_concurrent_workers_write_the_model_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    payload = {
        path.relative_to(tiny_model_dir).as_posix(): path.read_bytes()
        for path in finding.model_files(tiny_model_dir)
    }
    assert "model.safetensors" in payload and "1_Pooling/config.json" in payload
    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        folders = pool.map(_materialize_in_process, [(payload, "sha256:abc", str(cache))] * 6)
    assert len(set(folders)) == 1
    assert [p.name for p in cache.iterdir()] == ["sha256-abc"]  # no staging folder left behind
    np.testing.assert_allclose(
        polyemb.load(folders[0]).encode(["x"]), polyemb.load(tiny_model_dir).encode(["x"]), rtol=0, atol=1e-6
    )


def test_gpu_task_resources_pick_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    context = SimpleNamespace(resources=lambda: {"gpu": SimpleNamespace(addresses=["1"])}, cpus=lambda: 3)
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: context))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert delivery.task_resources() == ("cuda:1", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert delivery.task_resources() == ("cpu", 3)


def test_cpu_tasks_cap_torch_threads(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    context = SimpleNamespace(resources=dict, cpus=lambda: 1)
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: context))
    fingerprint = polyemb.load(tiny_model_dir).fingerprint
    source = ModelSource(str(tiny_model_dir), fingerprint, "path", "fp32", 30)  # a key of its own
    try:
        delivery.worker_encoder(source)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class _FakeConnectSession:
    """Stands for a Spark Connect session: only its module and addArtifacts matter here."""

    def __init__(self) -> None:
        self.added: list[tuple[str, bool]] = []

    def addArtifacts(self, path: str, archive: bool = False) -> None:
        self.added.append((path, archive))


_FakeConnectSession.__module__ = "pyspark.sql.connect.session"


def test_delivery_follows_the_session(spark: SparkSession, tiny_model_dir: Path) -> None:
    # Classic: auto ships the files by broadcast.
    classic = delivery.model_source(
        spark, tiny_model_dir, delivery="auto", precision="auto", max_seq_length=None, revision=None
    )
    assert classic.delivery == "broadcast" and classic.broadcast is not None
    # Spark Connect (even in a process that has a classic SparkContext, as a local Connect
    # server does): auto ships one archive as a session artifact, broadcast is refused.
    connect = _FakeConnectSession()
    source = delivery.model_source(
        connect, tiny_model_dir, delivery="auto", precision="auto", max_seq_length=None, revision=None
    )
    assert source.delivery == "artifact" and source.broadcast is None
    [(archive, is_archive)] = connect.added
    assert is_archive and Path(archive).name == source.artifact
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(
            path.relative_to(tiny_model_dir).as_posix() for path in finding.model_files(tiny_model_dir)
        )
    with pytest.raises(polyemb.InvalidInputError, match="Spark Connect session"):
        delivery.model_source(
            connect,
            tiny_model_dir,
            delivery="broadcast",
            precision="auto",
            max_seq_length=None,
            revision=None,
        )
    with pytest.raises(polyemb.InvalidInputError, match="delivery must be one of"):
        delivery.model_source(
            connect,
            tiny_model_dir,
            delivery="ftp",
            precision="auto",
            max_seq_length=None,
            revision=None,  # type: ignore[arg-type]
        )


def test_a_bad_batch_size_is_refused_on_the_driver(spark: SparkSession, tiny_model_dir: Path) -> None:
    # Not in every task, as a 19-line PythonException, after the model has been shipped.
    for bad in (0, -1, "8"):
        with pytest.raises(polyemb.InvalidInputError, match="batch_size must be a positive int"):
            polyemb.spark.embed_udf(tiny_model_dir, spark=spark, batch_size=bad)  # type: ignore[arg-type]
        with pytest.raises(polyemb.InvalidInputError, match="batch_size must be a positive int"):
            polyemb.spark.register(spark, tiny_model_dir, batch_size=bad)  # type: ignore[arg-type]


def test_register_checks_the_prefix_as_duckdb_does(spark: SparkSession, tiny_model_dir: Path) -> None:
    for bad in ("1st_", "naïve_", "a-b", "a b"):
        with pytest.raises(
            polyemb.InvalidInputError, match="prefix must be empty or start an SQL identifier"
        ):
            polyemb.spark.register(spark, tiny_model_dir, prefix=bad)


def test_a_worker_refuses_a_path_that_holds_another_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polyemb.testing import build_tiny_model

    other = build_tiny_model(tmp_path / "stale", seed=9)  # what a stale copy on an executor holds
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: None))
    source = ModelSource(str(other), polyemb.load(tiny_model_dir).fingerprint, "path", "fp32", 31)
    with pytest.raises(polyemb.InvalidInputError, match="give every executor the same model folder"):
        delivery.worker_encoder(source)


def test_a_worker_refuses_a_shipped_copy_of_another_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a worker is shipped (a broadcast here) must be the content the driver named, as for
    # "path": a copy that is not would give vectors of one model under another's name.
    other = build_tiny_model(tmp_path / "other", seed=8)
    payload = {path.relative_to(other).as_posix(): path.read_bytes() for path in finding.model_files(other)}
    monkeypatch.setenv("POLYEMB_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: None))
    named = polyemb.load(tiny_model_dir).fingerprint
    source = ModelSource("m", named, "broadcast", "fp32", 29, broadcast=_Broadcast(payload))
    with pytest.raises(polyemb.InvalidInputError, match=f"not the {named} the driver named"):
        delivery.worker_encoder(source)


def test_one_model_asked_for_in_other_words_is_loaded_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What embed_incremental asks for (fp32, the model's own length spelled out) and what the SQL
    # functions ask for ("auto", no length) are one model on a CPU worker.
    model = build_tiny_model(tmp_path / "model", seed=22)
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: None))
    fingerprint = polyemb.load(model).fingerprint
    explicit = ModelSource(str(model), fingerprint, "path", "fp32", 32)
    implicit = ModelSource(str(model), fingerprint, "path", "auto", None)
    before = len([e for e in delivery.worker_loads() if e["fingerprint"] == fingerprint])
    assert delivery.worker_encoder(explicit) is delivery.worker_encoder(implicit)
    after = [e for e in delivery.worker_loads() if e["fingerprint"] == fingerprint]
    assert len(after) - before == 1


def test_chunks_of_another_stride_get_an_encoder_of_their_own(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With "truncate" the stride changes no vector (the store key leaves it out), but it decides
    # the windows of embed_chunks: a worker must not hand one stride's Encoder to another.
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: None))
    fingerprint = polyemb.load(tiny_model_dir).fingerprint
    default = ModelSource(str(tiny_model_dir), fingerprint, "path", "fp32", None)
    narrow = ModelSource(str(tiny_model_dir), fingerprint, "path", "fp32", None, stride=2)
    first, second = delivery.worker_encoder(default), delivery.worker_encoder(narrow)
    assert (first.stride, second.stride) == (polyemb.load(tiny_model_dir).stride, 2)
    text = ["word " * 200]
    # Windows sharing 2 tokens instead of 8: fewer of them over the same text.
    assert first.encode_chunks(text).num_rows > second.encode_chunks(text).num_rows
    assert delivery.worker_encoder(default) is first  # and each is still loaded once


def test_near_duplicates_read_long_texts_as_asked(spark: SparkSession, tiny_model_dir: Path) -> None:
    # The same first 32 tokens (the tiny model's max_seq_length), then different words: cut,
    # the two are identical; read whole (the mean of their windows), they are not.
    start = "the cat sits on the mat " * 8
    texts = [start + "and the dog runs through the snow " * 6, start + "while stocks fell sharply today " * 6]
    df = frame(spark, texts)
    cut = polyemb.spark.near_duplicates(df, "text", 1.0, model=str(tiny_model_dir))
    assert cut.count() == 1
    whole = polyemb.spark.near_duplicates(
        df, "text", 1.0, model=str(tiny_model_dir), long_texts="mean", stride=4
    )
    assert whole.count() == 0
    vectors = polyemb.load(tiny_model_dir, long_texts="mean", stride=4).encode(texts)
    assert float(vectors[0] @ vectors[1]) < 0.999


def test_embed_chunks_and_the_mean_setting_in_spark_sql(spark: SparkSession, tiny_model_dir: Path) -> None:
    mean = polyemb.load(tiny_model_dir, long_texts="mean", stride=4)
    texts = ["猫がマットの上に座っている。" * 5, None, "", "a short one"]
    polyemb.spark.register(spark, tiny_model_dir, prefix="long_", long_texts="mean", stride=4)
    frame(spark, texts).createOrReplaceTempView("long_texts")
    rows = spark.sql(
        "SELECT id, long_embed(text) AS v, long_embed_chunks(text) AS c FROM long_texts"
    ).collect()
    check_vectors(rows, texts, mean)
    table = mean.encode_chunks(texts)
    by_id = {row["id"]: row["c"] for row in rows}
    assert by_id[1] is None
    got = [(i, c["start"], c["end"], c["tokens"]) for i in sorted(by_id) if by_id[i] for c in by_id[i]]
    assert got == list(
        zip(*(table.column(n).to_pylist() for n in ("row", "start", "end", "tokens")), strict=True)
    )
    np.testing.assert_allclose(
        [c["vector"] for i in sorted(by_id) if by_id[i] for c in by_id[i]],
        np.array(table.column("vector").to_pylist()),
        atol=1e-5,
    )


def test_names_that_differ_only_in_case_are_one_name_to_spark(
    spark: SparkSession, tiny_model_dir: Path
) -> None:
    # With spark.sql.caseSensitive false (Spark's default), "Group" and "group" are one column:
    # adding one beside the other gave an AMBIGUOUS_REFERENCE error, not polyemb's message.
    texts = ["a cat", "a cat", "a dog"]
    with_group = frame(spark, texts).withColumn("Group", F.lit(1))
    with pytest.raises(polyemb.InvalidInputError, match="already has a column 'group'"):
        polyemb.spark.near_duplicates(with_group, "text", 0.99, groups=True, model=str(tiny_model_dir))
    left = frame(spark, texts).withColumnRenamed("id", "ID").withColumn("Score", F.lit(0))
    with pytest.raises(polyemb.InvalidInputError, match="already have a column 'score'"):
        polyemb.spark.semantic_join(left, frame(spark, texts), "text", model=str(tiny_model_dir))
    # "ID" and "id" are found on both sides: suffixed, as "id" and "id" are.
    right = frame(spark, texts)
    joined = polyemb.spark.semantic_join(left.drop("Score"), right, "text", model=str(tiny_model_dir))
    assert joined.columns == ["ID_x", "text_x", "id_y", "text_y", "score"]
    assert joined.count() == 3
