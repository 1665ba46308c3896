"""DuckDB's embed_chunks against the core's chunk table, and passage search in plain SQL."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import polyemb
import polyemb.duckdb
from polyemb.chunks import chunks_of_table
from polyemb.maxsim import top_chunk_pairs
from polyemb.testing import SAMPLE_SENTENCES

# "" only, not "   " too: their windows are the same tokens, a tie the two engines' float
# rounding may break either way.
DOCS = [" ".join(SAMPLE_SENTENCES[:10]), None, "", " ".join(SAMPLE_SENTENCES[10:]), "short"]
# Each text's best window for a query: ties to the earlier window, as the core breaks them.
BEST_WINDOW = """
SELECT id, c.start, c."end", array_cosine_similarity(c.vector, embed($query)) AS score
FROM docs, unnest(embed_chunks(body)) AS u(c)
QUALIFY row_number() OVER (PARTITION BY id ORDER BY score DESC, c.start) = 1
ORDER BY score DESC, id
"""


@pytest.fixture
def con(tiny_encoder: polyemb.Encoder) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    polyemb.duckdb.register(connection, tiny_encoder)
    connection.register("docs", pa.table({"id": pa.array(range(len(DOCS)), pa.int64()), "body": DOCS}))
    yield connection
    connection.close()


def test_embed_chunks_is_the_cores_chunk_table(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder
) -> None:
    kind = con.execute("SELECT typeof(embed_chunks('x'))").fetchall()[0][0]  # type: ignore[index]
    assert (
        kind == f'STRUCT("start" INTEGER, "end" INTEGER, tokens INTEGER, vector FLOAT[{tiny_encoder.dim}])[]'
    )
    lists = con.execute("SELECT id, embed_chunks(body) IS NULL FROM docs ORDER BY id").fetchall()
    assert [is_null for _, is_null in lists] == [False, True, False, False, False]
    rows = con.execute(
        'SELECT id, c.start, c."end", c.tokens, c.vector FROM docs, unnest(embed_chunks(body)) '
        "WITH ORDINALITY AS u(c, n) ORDER BY id, n"
    ).fetchall()
    table = tiny_encoder.encode_chunks(DOCS)
    expected = table.drop(["vector", "chunk"]).to_pylist()
    assert [dict(zip(("row", "start", "end", "tokens"), row[:4], strict=True)) for row in rows] == expected
    np.testing.assert_allclose(
        np.array([row[4] for row in rows], dtype=np.float32), chunks_of_table(table).vectors, atol=1e-6
    )
    passages = con.execute(
        'SELECT substring(body, c.start + 1, c."end" - c.start) FROM docs, '
        "unnest(embed_chunks(body)) WITH ORDINALITY AS u(c, n) WHERE id = 0 ORDER BY n"
    ).fetchall()
    ends = [(r["start"], r["end"]) for r in expected if r["row"] == 0]
    assert [row[0] for row in passages] == [DOCS[0][start:end] for start, end in ends]  # type: ignore[index]


def test_the_best_window_in_sql_is_the_cores(
    con: duckdb.DuckDBPyConnection, tiny_encoder: polyemb.Encoder
) -> None:
    query = "A man is playing a guitar on the street."
    rows = con.execute(BEST_WINDOW, {"query": query}).fetchall()
    chunks = chunks_of_table(tiny_encoder.encode_chunks(DOCS))
    pairs = top_chunk_pairs(tiny_encoder.encode([query]), chunks.vectors, 10, corpus_rows=chunks.row)
    assert [row[0] for row in rows] == pairs.corpus.tolist()
    assert [(row[1], row[2]) for row in rows] == list(
        zip(chunks.start[pairs.corpus_chunk].tolist(), chunks.end[pairs.corpus_chunk].tolist(), strict=True)
    )
    np.testing.assert_allclose([row[3] for row in rows], pairs.score, atol=1e-5)


def test_embed_chunks_errors_name_the_function(tiny_model_dir: object) -> None:
    connection = duckdb.connect()
    polyemb.duckdb.register(connection, polyemb.load(tiny_model_dir, max_seq_length=2), prefix="pe_")  # type: ignore[arg-type]
    with pytest.raises(duckdb.Error, match=r"pe_embed_chunks\(\): max_seq_length=2 leaves no room"):
        connection.execute("SELECT pe_embed_chunks('a text')").fetchall()
