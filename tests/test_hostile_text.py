"""Hostile text through every adapter: a vector or a documented NULL/error per row, never a crash or a shift.

Documented behaviour: lone surrogates (not valid Unicode) are read as U+FFFD by the core and
the pandas adapter; Spark replaces them with U+FFFD itself when the text crosses into the JVM;
DuckDB, Polars and Arrow cannot hold them at all, so DuckDB refuses such a value when it is
handed over, and Polars when a Series is built, each with its own clear error, before polyemb
sees it.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polyemb
import polyemb.duckdb
import polyemb.pandas
import polyemb.polars
import polyemb.spark
from polyemb.arrow import vectors_from_arrow
from polyemb.chunks import chunks_of_table

ONE_MB = 1_000_000
SPECIALS = [
    "",
    " ",
    "\t\n\r  \u3000",
    "\x00",
    "nul\x00inside",
    "\x07\x1b[31mansi\x1b[0m",
    "e\u0301\u0301\u0301\u0301 combining",
    "\u202eright-to-left override\u202c",
    "עברית ومعها العربية",
    "😀👍🏽👨\u200d👩\u200d👧 \ufe0f",
    "\ufeffbom",
    "a" * ONE_MB,
    "😀" * (ONE_MB // 4),
    "word " * (ONE_MB // 5),
]
SURROGATES = ["\ud800", "x\udfffy", "\ud83d\ude00 split pair"]

unicode_text = st.text(alphabet=st.characters(codec=None), max_size=40)  # any code point, surrogates too
valid_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


def texts_with(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[list[str | None]]:
    item = st.one_of(st.none(), strategy, st.sampled_from(SPECIALS))
    return st.lists(item, min_size=1, max_size=12)


def check(vectors: np.ndarray, valid: np.ndarray, texts: list[str | None], encoder: polyemb.Encoder) -> None:
    assert valid.tolist() == [t is not None for t in texts]
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors[valid], axis=1), 1.0, atol=1e-4)
    for row in np.flatnonzero(valid)[:3]:  # rows are where their text is: spot-check against the text alone
        np.testing.assert_allclose(vectors[row], encoder.encode([texts[row]])[0], atol=1e-5)  # type: ignore[list-item]


FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLOW = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(texts=texts_with(unicode_text))
def test_core(tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:
    vectors, valid = tiny_encoder.encode_nullable(texts)
    check(vectors, valid, texts, tiny_encoder)


@FAST
@given(texts=texts_with(unicode_text))
def test_pandas(tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:
    series = pd.Series(texts, index=[f"row{i}" for i in range(len(texts))], dtype=object)
    out = series.emb.encode(encoder=tiny_encoder)
    assert out.index.equals(series.index)
    vectors, valid = vectors_from_arrow(pa.array(out.array))
    check(vectors, valid, texts, tiny_encoder)


@FAST
@given(texts=texts_with(valid_text))
def test_polars(tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:
    series = pl.Series("t", texts, dtype=pl.String)
    out = series.emb.encode(encoder=tiny_encoder)
    assert out.to_list() == pl.select(pl.lit(series).emb.encode(encoder=tiny_encoder))["t"].to_list()
    check(*vectors_from_arrow(out.to_arrow()), texts, tiny_encoder)


def test_polars_refuses_lone_surrogates_clearly() -> None:
    for text in SURROGATES:
        with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
            pl.Series("t", [text])


@FAST
@given(texts=texts_with(valid_text))
def test_duckdb(tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:
    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)
    con.register(
        "t", pa.table({"id": pa.array(range(len(texts)), pa.int64()), "s": pa.array(texts, pa.string())})
    )
    table = con.sql("SELECT id, embed(s) AS v FROM t ORDER BY id").to_arrow_table()
    assert table.column("id").to_pylist() == list(range(len(texts)))
    vectors, valid = vectors_from_arrow(table.column("v"))
    check(vectors, valid, texts, tiny_encoder)


def test_duckdb_refuses_lone_surrogates_clearly(tiny_encoder: polyemb.Encoder) -> None:
    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)
    for text in SURROGATES:
        with pytest.raises(duckdb.Error, match="surrogate"):
            con.execute("SELECT embed(?)", [text]).fetchall()
    assert con.execute("SELECT embed('still fine') IS NOT NULL").fetchall() == [(True,)]


def test_surrogates_read_as_replacement_character(tiny_encoder: polyemb.Encoder) -> None:
    # Each lone surrogate becomes one U+FFFD (a split pair: two).
    replaced = ["\ufffd", "x\ufffdy", "\ufffd\ufffd split pair"]
    np.testing.assert_allclose(tiny_encoder.encode(SURROGATES), tiny_encoder.encode(replaced), atol=1e-6)


def test_pandas_keeps_lone_surrogates_in_every_result(tiny_encoder: polyemb.Encoder) -> None:
    # pandas' str dtype cannot hold them: results that carry the texts keep the column's object dtype.
    texts = pd.Series([*SURROGATES, "hello"], index=[10, 11, 12, 13], name="t", dtype=object)
    found = texts.emb.search("x", k=4, encoder=tiny_encoder)
    assert found["t"].dtype == object and set(found["t"]) == set(texts)
    assert texts.loc[found.index].tolist() == found["t"].tolist()
    passages = texts.emb.search("x", k=4, chunks=True, encoder=tiny_encoder)
    assert texts.loc[passages.index].tolist() == passages["t"].tolist()
    pairs = texts.emb.near_duplicates(-1.0, encoder=tiny_encoder)
    assert len(pairs) == 6 and pairs["left_text"].dtype == object
    assert pairs["left_text"].tolist() == texts.loc[pairs["left"]].tolist()
    assert pairs["right_text"].tolist() == texts.loc[pairs["right"]].tolist()


def spark_vectors(spark, encoder: polyemb.Encoder, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    embed = polyemb.spark.embed_udf(encoder.folder, delivery="path")
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, t string").repartition(2)
    rows = sorted(frame.select("id", embed("t").alias("v")).collect(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(len(texts)))
    valid = np.array([row["v"] is not None for row in rows])
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if valid.any():
        vectors[valid] = np.array([row["v"] for row in rows if row["v"] is not None], dtype=np.float32)
    return vectors, valid


@pytest.mark.spark
@SLOW
@given(texts=texts_with(valid_text))
def test_spark(spark, tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:  # type: ignore[no-untyped-def]
    check(*spark_vectors(spark, tiny_encoder, texts), texts, tiny_encoder)


@pytest.mark.spark
def test_spark_lone_surrogates(spark, tiny_encoder: polyemb.Encoder) -> None:  # type: ignore[no-untyped-def]
    texts: list[str | None] = ["\ud800", "x\udfffy", None]
    vectors, valid = spark_vectors(spark, tiny_encoder, texts)
    assert valid.tolist() == [True, True, False]
    np.testing.assert_allclose(vectors[:2], tiny_encoder.encode(["\ufffd", "x\ufffdy"]), atol=1e-5)


# Chunks of hostile text: offsets on the text's characters, finite unit vectors, NULLs without rows.
SHORT_SPECIALS = [text if len(text) < 1_000 else text[:3_000] for text in SPECIALS]


def check_chunks(table: pa.Table, texts: list[str | None]) -> None:
    rows = table.column("row").to_pylist()
    assert sorted(set(rows)) == [i for i, text in enumerate(texts) if text is not None]
    assert rows == sorted(rows)
    for row, start, end in zip(
        rows, table.column("start").to_pylist(), table.column("end").to_pylist(), strict=True
    ):
        assert 0 <= start <= end <= len(texts[row])  # type: ignore[arg-type]
    found = chunks_of_table(table).vectors
    assert np.isfinite(found).all()
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-4)


@SLOW
@given(
    texts=st.lists(
        st.one_of(st.none(), unicode_text, st.sampled_from(SHORT_SPECIALS)), min_size=1, max_size=8
    )
)
def test_core_chunks(tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:
    check_chunks(tiny_encoder.encode_chunks(texts, stride=3), texts)


def test_chunks_and_means_of_long_hostile_texts(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    mean = polyemb.load(tiny_model_dir, device="cpu", max_seq_length=128, long_texts="mean")
    # One word of 20,000 characters, 5,000 emoji, and words longer than a segment
    # (polyemb.windows.SEGMENT_CHARS): tokenized in spliced pieces.
    texts: list[str | None] = ["a" * 20_000, "😀" * 5_000, "word " * 14_000]
    check_chunks(mean.encode_chunks(texts), texts)
    vectors = mean.encode(texts[1:])  # type: ignore[arg-type]
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
