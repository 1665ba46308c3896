"""The folder layout: plain Parquet others read, path builders for folders and URLs, the marker."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import polyemb
from polyemb.store import MARKER, StoreError, is_store, layout, open_store

TEXTS = [f"stored text number {i} " + "word " * (i % 5) for i in range(60)]


def test_layout_is_plain_parquet_that_duckdb_queries(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    store.encode(TEXTS[:10], encoder=tiny_encoder)
    key = tiny_encoder.vector_spec().key
    files = list((tmp_path / "store" / f"model={key}").glob("run=*/part-*.parquet"))
    assert files and (tmp_path / "store" / f"model={key}" / "_model.json").is_file()
    assert pq.read_schema(files[0]).names == ["text_hash", "vector"]
    row = duckdb.execute(
        "SELECT model, vector FROM read_parquet($1, hive_partitioning = true) "
        "WHERE text_hash = left(sha256($2), 32)",
        [str(tmp_path / "store" / "*" / "*" / "*.parquet"), TEXTS[3]],
    ).fetchall()
    assert len(row) == 1 and row[0][0] == key
    np.testing.assert_array_equal(np.array(row[0][1], dtype=np.float32), tiny_encoder.encode([TEXTS[3]])[0])


def test_paths_are_built_the_same_for_folders_and_urls(tmp_path: Path) -> None:
    assert layout.model_dir("s3a://lake/vectors/", "k01") == "s3a://lake/vectors/model=k01"
    assert layout.run_dir("s3a://lake/vectors/model=k01", "r1") == "s3a://lake/vectors/model=k01/run=r1"
    assert layout.model_dir(tmp_path, "k01") == tmp_path / "model=k01"
    assert layout.run_dir(tmp_path / "model=k01", "r1") == tmp_path / "model=k01" / "run=r1"
    assert layout.run_id() != layout.run_id()


def test_a_folder_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "important.csv").write_text("a,b\n")
    with pytest.raises(StoreError, match="not a polyemb store"):
        open_store(tmp_path / "data")


def test_without_create_only_an_existing_store_opens(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new"):
        with pytest.raises(StoreError, match="is not a polyemb vector store"):
            open_store(folder, create=False)
        assert not is_store(folder) and not (folder / MARKER).exists()  # nothing created
    open_store(tmp_path / "store").encode(["a text"], encoder=tiny_encoder)
    assert is_store(tmp_path / "store")
    assert open_store(tmp_path / "store", create=False, read_only=True).stats().models[0].entries == 1
    # Spark leaves no marker on a lake: model folders make a store too.
    (tmp_path / "store" / MARKER).unlink()
    assert is_store(tmp_path / "store")
    open_store(tmp_path / "store", create=False)


def test_a_marker_from_a_newer_polyemb_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path / "store")
    marker = tmp_path / "store" / MARKER
    assert json.loads(marker.read_text())["version"] == layout.STORE_VERSION
    marker.write_text(json.dumps({"format": "polyemb-store", "version": layout.STORE_VERSION + 1}))
    with pytest.raises(StoreError, match="upgrade polyemb"):
        open_store(tmp_path / "store")


def test_a_url_is_for_spark_not_open_store() -> None:
    with pytest.raises(StoreError, match="is a URL.*embed_incremental"):
        open_store("s3a://lake/vectors")
