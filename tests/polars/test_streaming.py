"""Lazy queries stream: Polars' streaming engine runs the expressions batch by batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyemb
import polyemb.polars

ROWS, ROW_GROUP = 4_000, 500


@pytest.fixture
def texts_file(tmp_path: Path, sts_sentences: list[str]) -> Path:
    """ROWS texts (every 7th NULL, sentences repeated) in row groups of ROW_GROUP rows."""
    texts = [None if i % 7 == 3 else sts_sentences[i % len(sts_sentences)] for i in range(ROWS)]
    path = tmp_path / "texts.parquet"
    pq.write_table(
        pa.table({"id": range(ROWS), "t": pa.array(texts, pa.string())}), path, row_group_size=ROW_GROUP
    )
    return path


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of texts of each call of ``Encoder.encode_nullable``, as the engine makes them."""
    seen: list[int] = []
    lock = threading.Lock()
    original = polyemb.Encoder.encode_nullable

    def counting(self: polyemb.Encoder, texts: Any, **options: Any) -> Any:
        texts = list(texts)
        with lock:
            seen.append(len(texts))
        return original(self, texts, **options)

    monkeypatch.setattr(polyemb.Encoder, "encode_nullable", counting)
    yield seen


def test_scan_encode_sink_runs_batch_by_batch(
    tiny_encoder: polyemb.Encoder, texts_file: Path, tmp_path: Path, batches: list[int]
) -> None:
    out = tmp_path / "out.parquet"
    query = pl.scan_parquet(texts_file).with_columns(pl.col("t").emb.encode(encoder=tiny_encoder).alias("v"))
    query.sink_parquet(out)
    # Each call saw one batch of the engine (at most a row group here), never the whole file.
    assert len(batches) >= ROWS // ROW_GROUP and max(batches) <= ROW_GROUP and sum(batches) == ROWS
    result = pl.read_parquet(out)
    assert result["id"].to_list() == list(range(ROWS))  # rows stay in order
    assert result["v"].dtype == pl.Array(pl.Float32, tiny_encoder.dim)
    texts = result["t"].to_list()
    expected, valid = tiny_encoder.encode_nullable(texts)
    assert result["v"].is_not_null().to_list() == valid.tolist()
    np.testing.assert_allclose(result["v"].emb.to_numpy()[valid], expected[valid], rtol=0, atol=1e-5)


def test_similarity_streams_too(tiny_encoder: polyemb.Encoder, texts_file: Path, batches: list[int]) -> None:
    query = pl.scan_parquet(texts_file).select(
        "id", pl.col("t").emb.similarity("a man is playing a guitar", encoder=tiny_encoder).alias("s")
    )
    result = query.collect(engine="streaming")
    assert max(batches) <= ROW_GROUP and sum(batches) == ROWS
    texts = pl.read_parquet(texts_file)["t"]
    np.testing.assert_allclose(
        result["s"].to_numpy(),
        texts.emb.similarity("a man is playing a guitar", encoder=tiny_encoder).to_numpy(),
        atol=1e-5,
    )


def test_a_streamed_query_fills_the_store_once(
    tiny_encoder: polyemb.Encoder, texts_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = polyemb.open_store(tmp_path / "store")
    query = pl.scan_parquet(texts_file).with_columns(
        pl.col("t").emb.encode(encoder=tiny_encoder, store=store)
    )
    query.sink_parquet(tmp_path / "first.parquet")
    distinct = pl.read_parquet(texts_file)["t"].drop_nulls().n_unique()
    [model] = store.stats().models
    assert model.entries == distinct
    embedded: list[int] = []
    original = polyemb.Encoder.encode
    monkeypatch.setattr(
        polyemb.Encoder, "encode", lambda self, texts, **o: embedded.append(1) or original(self, texts, **o)
    )
    query.sink_parquet(tmp_path / "again.parquet")
    assert embedded == []  # every text came from the store
    assert pl.read_parquet(tmp_path / "again.parquet").equals(pl.read_parquet(tmp_path / "first.parquet"))
