"""DuckDB functions against the core's own vectors, under DuckDB's chunking and threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyemb
import polyemb.duckdb
from polyemb.cache import EmbeddingCache
from polyemb.ivf import Ivf, IvfReport


@pytest.fixture
def con(tiny_encoder: polyemb.Encoder) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    cache = polyemb.duckdb.register(connection, tiny_encoder)
    cache.clear()
    yield connection
    connection.close()


def vectors_of(rows: list[tuple[object, ...]], column: int = 0) -> np.ndarray:
    return np.array([row[column] for row in rows], dtype=np.float32)


def test_embed_returns_a_fixed_size_array_equal_to_the_core(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder
) -> None:
    value, kind = con.execute("SELECT embed('El gato'), typeof(embed('El gato'))").fetchall()[0]  # type: ignore[misc]
    assert kind == f"FLOAT[{tiny_encoder.dim}]"
    np.testing.assert_allclose(
        np.array(value, dtype=np.float32), tiny_encoder.encode(["El gato"])[0], atol=1e-6
    )


def test_null_in_null_out_and_rows_stay_aligned_across_chunks(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder
) -> None:
    # 5,000 rows: several of DuckDB's 2048-row chunks, with NULLs and repeats scattered.
    texts = [None if i % 7 == 3 else f"text number {i % 900}" for i in range(5000)]
    con.execute(
        "CREATE TABLE t AS SELECT * FROM (SELECT unnest(range(5000)) AS id, unnest($1::VARCHAR[]) AS s)",
        [texts],
    )
    rows = con.execute("SELECT id, s, embed(s) FROM t ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(5000))
    expected, valid = tiny_encoder.encode_nullable(texts)
    assert [r[2] is None for r in rows] == (~valid).tolist()
    got = np.array([r[2] for r in rows if r[2] is not None], dtype=np.float32)
    np.testing.assert_allclose(got, expected[valid], atol=1e-5)


def test_semantic_similarity(con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder) -> None:
    rows = con.execute(
        "SELECT a, b, semantic_similarity(a, b) "
        "FROM (VALUES ('a cat', 'a dog'), ('x', NULL), (NULL, NULL), ('same', 'same')) t(a, b)"
    ).fetchall()
    a, b = tiny_encoder.encode(["a cat", "a dog"])
    assert rows[0][2] == pytest.approx(float(a @ b), abs=1e-6)
    assert rows[1][2] is None and rows[2][2] is None
    assert rows[3][2] == pytest.approx(1.0, abs=1e-6)
    kind = con.execute("SELECT typeof(semantic_similarity('a', 'b'))").fetchall()[0]
    assert kind == ("FLOAT",)


def test_a_text_with_itself_is_at_most_1_as_duckdbs_own_cosine_is(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder
) -> None:
    texts = [f"sentence number {i}" for i in range(256)]
    vectors = tiny_encoder.encode(texts)
    assert np.einsum("ij,ij->i", vectors, vectors).max() > 1.0  # float32 rounds some past 1
    ours, duckdbs = con.execute(
        "SELECT max(semantic_similarity(t, t)), max(array_cosine_similarity(embed(t), embed(t))) "
        "FROM unnest($texts::VARCHAR[]) AS u(t)",
        {"texts": texts},
    ).fetchone()  # type: ignore[misc]
    assert ours <= 1.0 and duckdbs <= 1.0  # both clamp: exact
    assert ours == pytest.approx(duckdbs, abs=1e-6) and ours == pytest.approx(1.0, abs=1e-6)


def test_works_with_duckdbs_array_functions(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder
) -> None:
    a, b = tiny_encoder.encode(["a cat", "a dog"])
    row = con.execute(
        "SELECT array_cosine_similarity(embed('a cat'), embed('a dog')), "
        "array_cosine_distance(embed('a cat'), embed('a dog')), "
        "array_inner_product(embed('a cat'), embed('a dog'))"
    ).fetchall()[0]
    assert row == pytest.approx((float(a @ b), 1 - float(a @ b), float(a @ b)), abs=1e-6)


def test_model_provenance(con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder) -> None:
    assert con.execute("SELECT embedding_model()").fetchall()[0] == (tiny_encoder.provenance,)


def test_repeats_across_chunks_and_a_constant_query_are_encoded_once(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE t AS SELECT 'text ' || (i % 100) AS s FROM range(10000) r(i)")
    con.execute("SELECT count(embed(s)) FROM t").fetchall()
    stats = con.execute("SELECT embedding_cache_stats()").fetchall()[0][0]  # type: ignore[index]
    assert stats["misses"] == 100  # 10,000 rows in 5 chunks, 100 distinct texts
    con.execute("SELECT max(array_cosine_similarity(embed(s), embed('the query'))) FROM t").fetchall()
    stats = con.execute("SELECT embedding_cache_stats()").fetchall()[0][0]  # type: ignore[index]
    assert stats["misses"] == 101  # only the query was new
    assert con.execute("SELECT embedding_cache_clear()").fetchall()[0] == (101,)
    assert con.execute("SELECT embedding_cache_stats()").fetchall()[0][0]["entries"] == 0  # type: ignore[index]


def test_register_twice_and_prefix(tiny_encoder: polyemb.Encoder, tiny_model_dir: Path) -> None:
    connection = duckdb.connect()
    polyemb.duckdb.register(connection, tiny_encoder)
    other = polyemb.load(tiny_model_dir, max_seq_length=4)
    polyemb.duckdb.register(connection, other)  # replaces, no error
    value = connection.execute("SELECT embed('one two three four five six seven')").fetchall()[0][0]  # type: ignore[index]
    np.testing.assert_allclose(
        np.array(value), other.encode(["one two three four five six seven"])[0], atol=1e-6
    )
    polyemb.duckdb.register(connection, tiny_encoder, prefix="pe_")
    assert connection.execute("SELECT pe_embedding_model()").fetchall()[0] == (tiny_encoder.provenance,)
    for bad in ("bad prefix;", "1st_", "naïve_"):
        with pytest.raises(
            polyemb.InvalidInputError, match="prefix must be empty or start an SQL identifier"
        ):
            polyemb.duckdb.register(connection, tiny_encoder, prefix=bad)


def test_a_second_connection_to_the_database_uses_the_first_ones_functions(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    # A database's connections share its functions; only the one that registered can replace them.
    first = duckdb.connect(str(tmp_path / "db.duckdb"))
    polyemb.duckdb.register(first, tiny_encoder)
    for prefix, second in (("c_", first.cursor()), ("d_", duckdb.connect(str(tmp_path / "db.duckdb")))):
        with pytest.raises(
            polyemb.InvalidInputError, match=r"already has a function embed\(\), registered on another"
        ):
            polyemb.duckdb.register(second, tiny_encoder)
        value = second.execute("SELECT embed('a cat')").fetchall()[0][0]
        np.testing.assert_allclose(value, tiny_encoder.encode(["a cat"])[0], atol=1e-6)
        polyemb.duckdb.register(second, tiny_encoder, prefix=prefix)
        model = second.execute(f"SELECT {prefix}embedding_model()").fetchall()
        assert model == [(tiny_encoder.provenance,)]
        second.close()


def test_default_encoder_is_used(tiny_encoder: polyemb.Encoder) -> None:
    polyemb.set_default_encoder(tiny_encoder)
    try:
        connection = duckdb.connect()
        polyemb.duckdb.register(connection)
        assert connection.execute("SELECT embedding_model()").fetchall()[0] == (tiny_encoder.provenance,)
    finally:
        polyemb.set_default_encoder(None)


def test_wrong_argument_type_is_a_binder_error_naming_the_function(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.BinderException, match=r"embed\(INTEGER"):
        con.execute("SELECT embed(42)").fetchall()
    assert con.execute("SELECT embed(42::VARCHAR) IS NOT NULL").fetchall()[0] == (True,)


def test_a_failing_udf_aborts_only_its_query(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(EmbeddingCache.shared(tiny_encoder).encoder, "encode", broken)
    with pytest.raises(
        duckdb.Error, match=r"embed\(\) failed: RuntimeError: CUDA out of memory \(simulated\)"
    ) as info:
        con.execute("SELECT embed('new text')").fetchall()
    assert "Traceback" not in str(info.value)
    monkeypatch.undo()
    assert con.execute("SELECT embed('new text') IS NOT NULL").fetchall()[0] == (True,)


def test_concurrent_queries_on_threads(tiny_encoder: polyemb.Encoder, run_threads) -> None:  # type: ignore[no-untyped-def]
    database = duckdb.connect()
    polyemb.duckdb.register(database, tiny_encoder, cache_mb=0.05)  # a small cache: real encoding
    database.execute("SET threads = 4")
    texts = [f"concurrent text {i} " + "word " * (i % 9) for i in range(3000)]
    database.execute(
        "CREATE TABLE t AS SELECT unnest(range(3000)) AS id, unnest($1::VARCHAR[]) AS s", [texts]
    )
    expected = tiny_encoder.encode(texts)

    def work(offset: int) -> None:
        cursor = database.cursor()
        for round_ in range(3):
            lo = (offset * 700 + round_ * 300) % 2500
            rows = cursor.execute(f"SELECT id, embed(s) FROM t WHERE id >= {lo} ORDER BY id").fetchall()
            np.testing.assert_allclose(vectors_of(rows, 1), expected[[r[0] for r in rows]], atol=1e-5)

    run_threads(work, 4)
    EmbeddingCache.shared(tiny_encoder).resize(256)


def test_streaming_copy_keeps_the_cache_bounded(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    source, target = tmp_path / "big.parquet", tmp_path / "out.parquet"
    texts = [f"row {i} of the big file" for i in range(20_000)]
    pq.write_table(pa.table({"id": list(range(20_000)), "text": texts}), source)
    connection = duckdb.connect()
    cache = polyemb.duckdb.register(connection, tiny_encoder, cache_mb=0.25)
    cache.clear()
    connection.execute(
        f"COPY (SELECT id, embed(text) AS v FROM read_parquet('{source}')) TO '{target}' (FORMAT parquet)"
    )
    stats = cache.stats()
    assert stats.capacity == int(0.25 * 2**20 // (tiny_encoder.dim * 4))
    assert stats.entries <= stats.capacity < 20_000
    assert stats.misses == 20_000
    out = pq.read_table(target).sort_by("id")
    assert out.num_rows == 20_000
    sample = [0, 4321, 19_999]
    got = np.array([out.column("v")[i].as_py() for i in sample], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_encoder.encode([texts[i] for i in sample]), atol=1e-5)
    cache.resize(256)


def test_missing_duckdb_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['duckdb'] = None\n"
        "try:\n    import polyemb.duckdb\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MissingDependencyError" in out and "pip install 'polyemb[duckdb]'" in out


def vss_available() -> bool:
    try:
        polyemb.duckdb.load_extension(duckdb.connect(), "vss")
    except polyemb.MissingDependencyError:
        return False
    return True


# CI runs this suite a second time in an environment with duckdb 1.5.5 and the PyPI-shipped vss
# extension, with POLYEMB_REQUIRE_VSS=1 so that there these tests cannot skip.
needs_vss = pytest.mark.skipif(
    not vss_available() and not os.environ.get("POLYEMB_REQUIRE_VSS"),
    reason=f"the vss extension cannot be loaded for duckdb {duckdb.__version__} here (no extension "
    "repository; duckdb-extension-vss needs duckdb 1.5.5); CI runs these in a duckdb 1.5.5 environment",
)


@needs_vss
@pytest.mark.slow
def test_hnsw_index_is_used(minilm_encoder: polyemb.Encoder, sts_sentences: list[str]) -> None:
    connection = duckdb.connect()
    polyemb.duckdb.register(connection, minilm_encoder)
    polyemb.duckdb.load_extension(connection, "vss")
    docs = sts_sentences[:300]
    connection.execute(
        "CREATE TABLE docs AS SELECT unnest(range(300)) AS id, unnest($1::VARCHAR[]) AS s", [docs]
    )
    connection.execute("ALTER TABLE docs ADD COLUMN v FLOAT[384]")
    connection.execute("UPDATE docs SET v = embed(s)")
    connection.execute("CREATE INDEX docs_hnsw ON docs USING HNSW (v) WITH (metric = 'cosine')")
    query = "SELECT id FROM docs ORDER BY array_cosine_distance(v, embed($1)) LIMIT 3"
    plan = connection.execute(f"EXPLAIN {query}", [docs[17]]).fetchall()[0][1]
    assert "HNSW_INDEX_SCAN" in plan
    for target in (17, 123, 250):
        assert connection.execute(query, [docs[target]]).fetchall()[0] == (target,)


def test_embed_through_a_store_embeds_each_text_once(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    texts = [None if i % 11 == 5 else f"stored duckdb text {i % 700}" for i in range(5000)]

    def run() -> tuple[np.ndarray, dict[str, int]]:
        # A fresh connection, store handle and cache: what a new process would see.
        con = duckdb.connect()
        polyemb.duckdb.register(con, tiny_encoder, store=polyemb.open_store(tmp_path / "store")).clear()
        con.execute("CREATE TABLE t AS SELECT unnest(range(5000)) AS id, unnest($1::VARCHAR[]) AS s", [texts])
        rows = con.execute("SELECT id, s, embed(s) FROM t ORDER BY id").fetchall()
        assert [r[0] for r in rows] == list(range(5000))
        assert [r[2] is None for r in rows] == [t is None for t in texts]
        stats = con.execute("SELECT embedding_store_stats()").fetchone()[0]  # type: ignore[index]
        con.close()
        return np.array([r[2] for r in rows if r[2] is not None], dtype=np.float32), stats

    first, stats = run()
    assert stats["embedded"] == 700 and stats["written"] == 700
    second, stats = run()
    assert stats["embedded"] == 0 and stats["found"] == 700
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(
        first, tiny_encoder.encode([t for t in texts if t is not None]), rtol=0, atol=1e-6
    )


def test_register_index_is_a_semantic_join_in_sql(tiny_encoder: polyemb.Encoder) -> None:
    # The reference is the core top_k, so this runs with the duckdb extra alone (no pandas);
    # tests/test_joins_agree.py compares the engines with each other.
    import pyarrow as pa

    from polyemb.similarity import top_k

    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)
    names = ["red shoes", "blue shirt", None, "green hat", "a lamp"]
    descriptions = ["shoes that are red", None, "a hat", "lamps"]
    products = pa.table({"id": [1, 2, 3, 4, 5], "name": names})
    orders = pa.table({"oid": [10, 11, 12, 13], "description": descriptions})
    con.register("products", products)
    con.register("orders", orders)
    indexed_ids = [i for i, name in zip([1, 2, 3, 4, 5], names, strict=True) if name is not None]
    queries = [(oid, d) for oid, d in zip([10, 11, 12, 13], descriptions, strict=True) if d is not None]
    corpus = tiny_encoder.encode([n for n in names if n is not None])
    query_vectors = tiny_encoder.encode([d for _, d in queries])
    for score in ("cosine", "margin", "csls"):
        matched = "SELECT description FROM orders" if score != "cosine" else None
        index = polyemb.duckdb.register_index(
            con,
            "products",
            "SELECT * FROM products",
            key="id",
            text="name",
            score=score,
            queries=matched,
            encoder=tiny_encoder,
        )
        assert index.keys.to_pylist() == indexed_ids  # the NULL name is not indexed
        rows = con.execute(
            "SELECT o.oid, n.key, n.score FROM orders o, unnest(products_nearest(o.description, 2)) AS t(n)"
        ).fetchall()
        best, scores = top_k(query_vectors, corpus, 2, score=score)
        expected = {
            (oid, indexed_ids[j]): float(s)
            for (oid, _), row, row_scores in zip(queries, best, scores, strict=True)
            for j, s in zip(row, row_scores, strict=True)
        }
        got = {(r[0], r[1]): r[2] for r in rows}
        assert len(rows) == len(got) == 2 * len(queries)  # the NULL description has no matches
        assert set(got) == set(expected)
        for pair, value in expected.items():
            assert got[pair] == pytest.approx(value, abs=1e-5)
    # NULL in, NULL out; k per row; the vector form; bad k.
    result = con.execute(
        "SELECT products_nearest(NULL, 2), products_nearest('a hat', NULL), len(products_nearest('a hat', 9))"
    ).fetchall()[0]
    assert result == (None, None, 4)  # at most the 4 indexed rows
    by_vector = con.execute("SELECT products_nearest_vector(embed('a hat'), 1)[1].key").fetchall()[0][0]
    assert by_vector == con.execute("SELECT products_nearest('a hat', 1)[1].key").fetchall()[0][0]
    with pytest.raises(duckdb.Error, match="products_nearest\\(\\): k must be a positive integer"):
        con.execute("SELECT products_nearest('a hat', 0)").fetchall()


def test_register_index_errors(tiny_encoder: polyemb.Encoder) -> None:
    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)
    query = "SELECT 1 AS id, 'x' AS name"
    with pytest.raises(polyemb.ColumnNotFoundError, match="Did you mean 'name'"):
        polyemb.duckdb.register_index(con, "p", query, key="id", text="nme")
    with pytest.raises(polyemb.InvalidInputError, match="exactly one of text= .* or vector="):
        polyemb.duckdb.register_index(con, "p", query, key="id")
    with pytest.raises(polyemb.InvalidInputError, match="give queries="):
        polyemb.duckdb.register_index(con, "p", query, key="id", text="name", score="margin")
    with pytest.raises(polyemb.InvalidInputError, match="name must be an SQL identifier"):
        polyemb.duckdb.register_index(con, "p-q", query, key="id", text="name")
    with pytest.raises(polyemb.InvalidInputError, match="recall= calibrates nprobe .* give queries="):
        polyemb.duckdb.register_index(con, "p", query, key="id", text="name", method=Ivf(recall=0.9))
    # queries= that nothing reads (cosine, no recall=) is not run: it was embedded for nothing.
    unread = "SELECT no_such_column FROM (SELECT 1)"  # an error if it ran
    for method in ("exact", Ivf(nprobe=2)):
        polyemb.duckdb.register_index(
            con, "p", query, key="id", text="name", queries=unread, method=method, encoder=tiny_encoder
        )
    with pytest.raises(polyemb.InvalidInputError, match="method must be one of 'exact', 'ivf'"):
        polyemb.duckdb.register_index(con, "p", query, key="id", text="name", method="hnsw")  # type: ignore[arg-type]


def test_register_index_refuses_keys_arrow_would_change_and_names_given_twice(
    tiny_encoder: polyemb.Encoder,
) -> None:
    # A TIMETZ key came back at another instant (its offset lost) and a BIT key as other bits.
    con = duckdb.connect()
    polyemb.duckdb.register(con, tiny_encoder)

    def index(query: str, key: str) -> None:
        polyemb.duckdb.register_index(con, "p", query, key=key, text="name", encoder=tiny_encoder)

    for cast in ("'10:00:00+02'::TIMETZ", "'0101'::BIT", "['0101'::BIT]", "{'t': '10:00+02'::TIMETZ}"):
        with pytest.raises(polyemb.InvalidInputError, match="would come back changed.*cast it"):
            index(f"SELECT {cast} AS k, 'a cat' AS name", "k")
    for cast in ("'10:00:00'::TIME", "'2026-12-05 10:00:00+02'::TIMESTAMPTZ", "'0101'::BLOB"):
        index(f"SELECT {cast} AS k, 'a cat' AS name", "k")
        assert con.sql("SELECT p_nearest('cat', 1)[1].key = (SELECT " + cast + ")").fetchall() == [(True,)]
    # A raw pyarrow KeyError before.
    twice = "SELECT 1 AS id, 'x' AS name, 'y' AS name"
    with pytest.raises(polyemb.InvalidInputError, match="2 columns named 'name'"):
        index(twice, "id")


def test_an_ivf_index_reports_what_it_chose_and_answers_in_sql() -> None:
    con = duckdb.connect()
    rng = np.random.default_rng(4)
    vector = pa.list_(pa.float32(), 8)
    indexed = rng.standard_normal((300, 8)).astype(np.float32)
    con.register("r", pa.table({"j": range(300), "v": pa.array(list(indexed), vector)}))
    con.register("l", pa.table({"i": range(40), "v": pa.array(list(indexed[:40]), vector)}))
    report = IvfReport()
    index = polyemb.duckdb.register_index(
        con,
        "r",
        "SELECT * FROM r",
        key="j",
        vector="v",
        queries="SELECT v FROM l",
        method=Ivf(recall=0.95),
        report=report,
    )
    assert index.ivf is not None and index.ivf.nprobe == report.nprobe
    assert report.recall_estimate is not None and report.recall_estimate >= 0.95
    rows = con.execute("SELECT i, r_nearest_vector(v, 2) FROM l ORDER BY i").fetchall()
    # Each indexed row finds itself first (it is in the list it probes first), then one more.
    assert [[hit["key"] for hit in found][0] for _, found in rows] == list(range(40))
    assert all(len(found) == 2 for _, found in rows)


def test_register_index_source_is_the_deprecated_name_of_queries() -> None:
    con = duckdb.connect()
    rng = np.random.default_rng(3)
    vector = pa.list_(pa.float32(), 3)
    indexed = rng.standard_normal((6, 3)).astype(np.float32)
    matched = rng.standard_normal((5, 3)).astype(np.float32)
    con.register("r", pa.table({"j": range(6), "v": pa.array(list(indexed), vector)}))
    con.register("l", pa.table({"i": range(5), "v": pa.array(list(matched), vector)}))
    nearest = "SELECT i, r_nearest_vector(v, 3) FROM l ORDER BY i"
    options = {"key": "j", "vector": "v", "score": "margin"}
    new = polyemb.duckdb.register_index(con, "r", "SELECT * FROM r", queries="SELECT v FROM l", **options)
    expected = con.execute(nearest).fetchall()
    assert list(expected[0][1][0]) == ["key", "score", "cosine"]  # margin adds the cosine
    with pytest.warns(DeprecationWarning, match="source=.* deprecated; pass queries="):
        old = polyemb.duckdb.register_index(con, "r", "SELECT * FROM r", source="SELECT v FROM l", **options)
    assert old.neighbourhood is not None and new.neighbourhood is not None
    np.testing.assert_array_equal(old.neighbourhood, new.neighbourhood)
    assert con.execute(nearest).fetchall() == expected
    with pytest.raises(polyemb.InvalidInputError, match="give queries= alone"):
        polyemb.duckdb.register_index(
            con, "r", "SELECT * FROM r", queries="SELECT v FROM l", source="SELECT v FROM l", **options
        )
