"""The pandas accessor over chunks: .emb.chunks(), search and join by best window, against the core."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import polyemb
import polyemb.pandas
from polyemb.chunks import chunks_of_table
from polyemb.errors import ColumnNotFoundError, InvalidInputError
from polyemb.maxsim import join_chunk_rows, top_chunk_pairs
from polyemb.testing import SAMPLE_SENTENCES

DOCS = [
    " ".join(SAMPLE_SENTENCES[:12]),  # far over the tiny model's 32 tokens
    None,
    "",
    " ".join(SAMPLE_SENTENCES[12:]),
    "Kot siedzi na macie.",
]


@pytest.fixture(autouse=True)
def _default_tiny(tiny_encoder: polyemb.Encoder) -> None:
    polyemb.set_default_encoder(tiny_encoder)
    yield
    polyemb.set_default_encoder(None)


def docs() -> pd.Series:
    return pd.Series(DOCS, index=["a", "b", "c", "d", "e"], name="body")


def test_chunks_are_the_cores_rows_on_the_texts_labels(tiny_encoder: polyemb.Encoder) -> None:
    frame = docs().emb.chunks(stride=4)
    table = tiny_encoder.encode_chunks(DOCS, stride=4)
    assert list(frame.columns) == ["row", "chunk", "start", "end", "tokens", "vector"]
    assert frame.index.tolist() == [["a", "b", "c", "d", "e"][r] for r in table.column("row").to_pylist()]
    assert "b" not in frame.index  # NA texts have no rows
    for name in ("row", "chunk", "start", "end", "tokens"):
        assert frame[name].tolist() == table.column(name).to_pylist()
    np.testing.assert_array_equal(frame["vector"].emb.to_numpy(), chunks_of_table(table).vectors)
    assert frame["vector"].emb.model == tiny_encoder.provenance
    passages = [DOCS[0][s:e] for s, e in zip(frame.loc["a", "start"], frame.loc["a", "end"], strict=True)]
    assert passages[0].startswith("The cat sits") and all(passages)


def test_chunks_under_repeated_labels_say_which_text_by_position(tiny_encoder: polyemb.Encoder) -> None:
    texts = [DOCS[0], DOCS[3], None, DOCS[3]]
    body = pd.Series(texts, index=["a", "a", "b", "a"], name="body")
    frame = body.emb.chunks(stride=4)
    table = tiny_encoder.encode_chunks(texts, stride=4)
    assert frame["row"].tolist() == table.column("row").to_pylist()
    assert set(frame["row"]) == {0, 1, 3} and (frame.index == "a").all()
    found = body.to_numpy()[frame["row"]]  # the docstring's recipe
    passages = [text[s:e] for text, s, e in zip(found, frame["start"], frame["end"], strict=True)]
    first = frame["row"] == 0
    assert passages[0].startswith("The cat sits") and first.sum() > 1
    assert [p for p, one in zip(passages, first, strict=True) if not one] == [
        p for p, one in zip(passages, frame["row"] == 1, strict=True) if one
    ] * 2


def test_search_by_chunks_gives_the_best_windows_offsets(tiny_encoder: polyemb.Encoder) -> None:
    query = "A man is playing a guitar on the street."
    found = docs().emb.search(query, k=3, chunks=True)
    table = tiny_encoder.encode_chunks(DOCS)
    chunks = chunks_of_table(table)
    pairs = top_chunk_pairs(tiny_encoder.encode([query]), chunks.vectors, 3, corpus_rows=chunks.row)
    assert list(found.columns) == ["body", "score", "start", "end"]
    assert found.index.tolist() == [["a", "b", "c", "d", "e"][r] for r in pairs.corpus.tolist()]
    np.testing.assert_allclose(found["score"], pairs.score, atol=1e-6)
    assert found["start"].tolist() == chunks.start[pairs.corpus_chunk].tolist()
    assert found["end"].tolist() == chunks.end[pairs.corpus_chunk].tolist()
    plain = docs().emb.search(query, k=3)
    assert "start" not in plain.columns


def test_join_by_chunks_is_the_cores_join(tiny_encoder: polyemb.Encoder) -> None:
    queries = ["A man plays the guitar.", None, "Dogs run in snow.", "xyz"]
    left = pd.DataFrame({"q": queries, "id": [1, 2, 3, 4]})
    right = pd.DataFrame({"body": DOCS, "id": [10, 20, 30, 40, 50]})
    joined = left.emb.join(right, "q", "body", k=2, chunks=True, how="left", threshold=0.3)
    lvec, lvalid = tiny_encoder.encode_nullable(queries)
    chunks = chunks_of_table(tiny_encoder.encode_chunks(DOCS))
    rows = join_chunk_rows(lvec, lvalid, chunks.vectors, chunks.row, 2, threshold=0.3, how="left")
    assert list(joined.columns) == ["q", "id_x", "body", "id_y", "score", "start", "end"]
    assert joined["id_x"].tolist() == left["id"].to_numpy()[rows.left].tolist()
    np.testing.assert_allclose(joined["score"].to_numpy(dtype=float), rows.score, atol=1e-6)
    unmatched = rows.chunk < 0
    assert joined["start"].isna().tolist() == unmatched.tolist()
    assert joined["start"][~unmatched].tolist() == chunks.start[rows.chunk[~unmatched]].tolist()
    assert joined["end"].dtype == "Int64"
    margin = left.emb.join(right, "q", "body", k=1, chunks=True, score="margin")
    assert list(margin.columns)[-4:] == ["score", "cosine", "start", "end"]


def test_chunks_need_texts_and_name_bad_rows(tiny_encoder: polyemb.Encoder) -> None:
    vectors = docs().emb.encode()
    with pytest.raises(InvalidInputError, match="holds vectors; chunks are cut from texts"):
        vectors.emb.chunks()
    with pytest.raises(InvalidInputError, match="holds vectors"):
        vectors.emb.search("x", chunks=True)
    with pytest.raises(InvalidInputError, match="row 'y' of Series 'body' is int"):
        pd.Series(["text", 5], index=["x", "y"], name="body").emb.chunks()
    frame = pd.DataFrame({"v": list(tiny_encoder.encode(["a", "b"]))})
    with pytest.raises(InvalidInputError, match="holds vectors"):
        pd.DataFrame({"q": ["a"]}).emb.join(frame, "q", "v", chunks=True)
    with pytest.raises(ColumnNotFoundError):
        pd.DataFrame({"q": ["a"]}).emb.join(pd.DataFrame({"body": ["b"]}), "q", "bdy", chunks=True)
    with pytest.raises(InvalidInputError, match="stride"):
        docs().emb.chunks(stride=30)
    clash = pd.DataFrame({"q": ["a man"], "start": [1]})
    # start is one of the offsets the join adds, not its score column: the hint says so.
    with pytest.raises(
        InvalidInputError,
        match=r"already have a column 'start': rename it \(the join adds score, start, end\)",
    ):
        clash.emb.join(pd.DataFrame({"body": DOCS[:1]}), "q", "body", chunks=True)
