"""The Polars .emb namespaces against the core's own vectors, cosines, top-k and pairs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

import polyemb
import polyemb.polars
from polyemb.arrow import vector_model, vectors_to_arrow
from polyemb.similarity import normalize_rows


@pytest.fixture(autouse=True)
def _default_tiny(tiny_encoder: polyemb.Encoder) -> Iterator[None]:
    polyemb.set_default_encoder(tiny_encoder)
    yield
    polyemb.set_default_encoder(None)


TEXTS = [
    "The cat sits on the mat.",
    None,
    "El gato está en la alfombra.",
    None,
    "The cat sits on the mat.",
    "",
]
PRESENT = [0, 2, 4, 5]


def present(texts: list[str | None]) -> list[str]:
    return [t for t in texts if t is not None]


@pytest.mark.parametrize(
    "dtype",
    [pl.String, pl.Categorical, pl.Enum(["", "The cat sits on the mat.", "El gato está en la alfombra."])],
)
def test_encode_matches_core_and_keeps_null_positions(
    tiny_encoder: polyemb.Encoder, dtype: pl.DataType
) -> None:
    series = pl.Series("title", TEXTS, dtype=dtype)
    vectors = series.emb.encode()
    assert vectors.dtype == pl.Array(pl.Float32, tiny_encoder.dim) and vectors.name == "title"
    assert vectors.is_null().to_list() == [False, True, False, True, False, False]
    matrix = vectors.emb.to_numpy()
    assert matrix.dtype == np.float32 and matrix.shape == (6, tiny_encoder.dim)
    assert np.isnan(matrix[[1, 3]]).all()
    np.testing.assert_allclose(matrix[PRESENT], tiny_encoder.encode(present(TEXTS)), rtol=0, atol=1e-6)


def test_expression_gives_the_series_answer_eager_and_lazy() -> None:
    frame = pl.DataFrame({"id": range(6), "title": TEXTS})
    expected = frame["title"].emb.encode().emb.to_numpy()
    encode = pl.col("title").emb.encode().alias("v")
    eager = frame.with_columns(encode)
    lazy = frame.lazy().with_columns(encode).collect()
    streamed = frame.lazy().with_columns(encode).collect(engine="streaming")
    for result in (eager, lazy, streamed):
        assert result.columns == ["id", "title", "v"]
        # The streaming engine may cut the rows into batches of its own: float32 rounding apart.
        np.testing.assert_allclose(result["v"].emb.to_numpy(), expected, rtol=0, atol=1e-6)
    # Like every Polars expression, it keeps its input's name.
    assert frame.select(pl.col("title").emb.encode()).columns == ["title"]


def test_explicit_encoder_overrides_default(tiny_model_dir: Path) -> None:
    other = polyemb.load(tiny_model_dir, max_seq_length=4)
    text = ["one two three four five six seven eight nine ten"]
    np.testing.assert_allclose(
        pl.Series(text).emb.encode(encoder=other).emb.to_numpy(), other.encode(text), rtol=0, atol=1e-6
    )
    frame = pl.DataFrame({"t": text}).select(pl.col("t").emb.encode(encoder=other, batch_size=1))
    np.testing.assert_allclose(frame["t"].emb.to_numpy(), other.encode(text), rtol=0, atol=1e-6)


def test_null_and_nan_are_missing_and_the_strings_are_texts(tiny_encoder: polyemb.Encoder) -> None:
    # Polars strings hold no NaN: from pandas, None, NaN and pd.NA all arrive as NULL.
    series = pl.from_pandas(pd.Series(["None", None, "nan", np.nan, pd.NA, "NULL"], dtype=object))
    vectors = series.emb.encode()
    assert vectors.is_null().to_list() == [False, True, False, True, True, False]
    np.testing.assert_allclose(
        vectors.emb.to_numpy()[[0, 2, 5]], tiny_encoder.encode(["None", "nan", "NULL"]), atol=1e-6
    )
    assert pl.Series("t", [None, None]).emb.encode().null_count() == 2  # an all-NULL column (type Null)


def test_to_numpy_round_trip_keeps_null_rows_null(tiny_encoder: polyemb.Encoder) -> None:
    # to_numpy writes a NULL row as NaN; read back, it was a zero vector: a score of 0.0 and a
    # match like any other, where the row had been NULL.
    vectors = pl.Series("v", ["a cat", None, "a dog"]).emb.encode()
    back = pl.Series("v", vectors.emb.to_numpy())
    assert back.emb.similarity("a cat").is_null().to_list() == [False, True, False]
    assert back.emb.search("a cat", k=5)["index"].to_list() == [0, 2]
    with_nan = vectors.emb.to_numpy()
    with_nan[0, 0] = np.nan
    with pytest.raises(polyemb.InvalidInputError, match="position 0 holds NaN"):
        pl.Series("v", with_nan).emb.similarity("a cat")


def test_similarity_with_text_series_and_expressions(tiny_encoder: polyemb.Encoder) -> None:
    series = pl.Series("title", TEXTS)
    scores = series.emb.similarity("a cat")
    assert scores.dtype == pl.Float64 and scores.name == "similarity"
    assert scores.is_null().to_list() == [False, True, False, True, False, False]
    query = tiny_encoder.encode(["a cat"])[0]
    assert scores[0] == pytest.approx(float(tiny_encoder.encode([TEXTS[0]])[0] @ query), abs=1e-6)  # type: ignore[list-item]

    other = pl.Series("other", ["a dog", "x", None, "y", "a cat", "w"])
    pairwise = series.emb.similarity(other)
    assert pairwise.is_null().to_list() == [False, True, True, True, False, False]
    a, b = tiny_encoder.encode([TEXTS[0], "a dog"])  # type: ignore[list-item]
    assert pairwise[0] == pytest.approx(float(a @ b), abs=1e-6)
    # Vectors on either side, or both, give the same answer as texts.
    np.testing.assert_allclose(series.emb.encode().emb.similarity(other), pairwise, atol=1e-6)
    np.testing.assert_allclose(series.emb.similarity(other.emb.encode()), pairwise, atol=1e-6)
    np.testing.assert_allclose(series.emb.encode().emb.similarity(other.emb.encode()), pairwise, atol=1e-6)

    frame = pl.DataFrame({"title": series, "other": other}).with_columns(
        pl.col("title").emb.encode().alias("v"), pl.col("other").emb.encode().alias("w")
    )
    result = (
        frame.lazy()
        .select(
            pl.col("title").emb.similarity("a cat").alias("to_text"),
            pl.col("title").emb.similarity(pl.col("other")).alias("texts"),
            pl.col("v").emb.similarity(pl.col("w")).alias("vectors"),
            pl.col("v").emb.similarity(pl.lit("a cat")).alias("to_literal"),
        )
        .collect()
    )
    for name, expected in [
        ("to_text", scores),
        ("texts", pairwise),
        ("vectors", pairwise),
        ("to_literal", scores),
    ]:
        assert result[name].is_null().to_list() == expected.is_null().to_list(), name
        np.testing.assert_allclose(result[name], expected, atol=1e-6, err_msg=name)


def test_similarity_errors() -> None:
    series = pl.Series("title", ["a", "b", "c"])
    with pytest.raises(polyemb.InvalidInputError, match="column 'title' has 3 rows and column 'x' has 2"):
        series.emb.similarity(pl.Series("x", ["a", "b"]))
    with pytest.raises(polyemb.InvalidInputError, match="other must be a Series or a str, got int"):
        series.emb.similarity(3)  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="other must be a str or an expression"):
        pl.col("title").emb.similarity(["a"])  # type: ignore[arg-type]
    # A one-row side meets every row of the other, whichever side it is.
    np.testing.assert_allclose(pl.Series(["a"]).emb.similarity(series).to_numpy(), series.emb.similarity("a"))
    with pytest.raises(
        TypeError, match=r"unexpected keyword arguments \['batchsize'\]; the encoding options"
    ):
        pl.col("title").emb.encode(batchsize=8)  # type: ignore[call-arg]


def test_search_texts_and_vectors(tiny_encoder: polyemb.Encoder) -> None:
    series = pl.Series("title", TEXTS)
    found = series.emb.search("The cat sits on the mat.", k=3)
    assert found.columns == ["index", "title", "score"]
    assert found["index"].to_list()[:2] == [0, 4]  # the two identical rows, in row order
    assert found["title"][0] == TEXTS[0]
    assert found["score"][0] == pytest.approx(1.0, abs=1e-6)
    assert found["score"].is_sorted(descending=True)
    assert len(series.emb.search("x", k=100)) == 4  # NULL rows never match
    by_vector = series.emb.encode().emb.search(tiny_encoder.encode(["The cat sits on the mat."])[0], k=3)
    assert by_vector["index"].to_list() == found["index"].to_list()
    np.testing.assert_allclose(by_vector["score"], found["score"], atol=1e-6)
    assert pl.Series(["a"]).emb.search("a").columns == ["index", "value", "score"]
    with pytest.raises(polyemb.InvalidInputError, match="rename the Series"):
        pl.Series("score", ["a"]).emb.search("a")
    for name in ("start", "end"):  # the chunks' offsets take these names
        with pytest.raises(polyemb.InvalidInputError, match="rename the Series"):
            pl.Series(name, ["a cat sat"]).emb.search("cat", chunks=True)
        assert pl.Series(name, ["a"]).emb.search("a").columns == ["index", name, "score"]


def test_near_duplicates_pairs_and_groups() -> None:
    series = pl.Series("t", ["a cat", "A CAT!", "a dog", "a cat", None, "stock prices"])
    pairs = series.emb.near_duplicates(0.999)
    assert pairs.columns == ["left", "right", "score", "left_text", "right_text"]
    assert pairs.select("left", "right").rows() == [(0, 3)]
    assert pairs["left_text"].to_list() == ["a cat"] and pairs["score"][0] == pytest.approx(1.0, abs=1e-6)
    groups = series.emb.near_duplicates(0.999, groups=True)
    assert isinstance(groups, pl.Series) and groups.dtype == pl.Int64 and groups.name == "group"
    assert groups.to_list() == [0, None, None, 0, None, None]
    everything = series.emb.near_duplicates(-1.0)
    assert len(everything) == 10  # 5 non-NULL rows: every unordered pair once
    assert (everything["left"] < everything["right"]).all()
    vectors = series.emb.encode().emb.near_duplicates(0.999)
    assert vectors.columns == ["left", "right", "score"] and vectors.select("left", "right").rows() == [
        (0, 3)
    ]


def test_near_duplicates_matches_brute_force(tiny_encoder: polyemb.Encoder, sts_sentences: list[str]) -> None:
    pairs = pl.Series(sts_sentences[:200]).emb.near_duplicates(0.9)
    unit = normalize_rows(tiny_encoder.encode(sts_sentences[:200]))
    full = unit @ unit.T
    expected = {(i, j) for i in range(200) for j in range(i + 1, 200) if full[i, j] >= 0.9}
    assert set(pairs.select("left", "right").rows()) == expected


def test_join_against_core_top_k(tiny_encoder: polyemb.Encoder) -> None:
    left = pl.DataFrame({"id": [1, 2, 3], "text": ["a cat", "a dog", None]})
    right = pl.DataFrame(
        {"id": [7, 8, 9], "text": ["the dog", "the cat", "stocks"], "price": [1.0, 2.0, 3.0]}
    )
    joined = left.emb.join(right, left_on="text", k=2)
    assert joined.columns == ["id_x", "text_x", "id_y", "text_y", "price", "score"]
    assert joined["id_x"].to_list() == [1, 1, 2, 2]  # the NULL left row has no match
    full = tiny_encoder.encode(["a cat", "a dog"]) @ tiny_encoder.encode(right["text"].to_list()).T
    for row in joined.iter_rows(named=True):
        li, ri = [1, 2].index(row["id_x"]), [7, 8, 9].index(row["id_y"])
        assert row["score"] == pytest.approx(float(full[li, ri]), abs=1e-6)
    assert joined.filter(pl.col("id_x") == 1)["score"].max() == pytest.approx(full[0].max(), abs=1e-6)

    kept = left.emb.join(right, "text", k=1, threshold=2.0, how="left")
    assert kept["id_x"].to_list() == [1, 2, 3]
    assert kept["score"].is_null().all() and kept["id_y"].is_null().all() and kept["price"].is_null().all()
    suffixed = left.emb.join(right.rename({"text": "name"}), "text", "name", suffixes=("_l", "_r"))
    assert suffixed.columns == ["id_l", "text", "id_r", "name", "price", "score"]
    margin = left.emb.join(right, "text", k=1, score="margin", score_column="m")
    assert margin.columns[-2:] == ["m", "cosine"]
    np.testing.assert_allclose(margin["cosine"], [full[0].max(), full[1].max()], atol=1e-6)


def test_join_errors() -> None:
    left = pl.DataFrame({"text": ["a"]})
    with pytest.raises(
        polyemb.ColumnNotFoundError, match="column 'txt' is not in the left DataFrame.*Did you mean 'text'"
    ):
        left.emb.join(left, "txt")
    with pytest.raises(polyemb.ColumnNotFoundError, match="not in the right DataFrame"):
        left.emb.join(left, "text", "name")
    with pytest.raises(polyemb.InvalidInputError, match=r"per side; left_on is list \(\['text'\]\)"):
        left.emb.join(left, ["text"])  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="right_on is Expr"):
        left.emb.join(left, "text", pl.col("text"), chunks=True)  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="how must be"):
        left.emb.join(left, "text", how="outer")  # type: ignore[arg-type]
    with pytest.raises(
        polyemb.InvalidInputError,
        match="already have a column 'score': rename it, or choose another score_column",
    ):
        left.with_columns(score=1).emb.join(left, "text")
    with pytest.raises(polyemb.InvalidInputError, match=r"got LazyFrame: call \.collect\(\) on it first"):
        left.emb.join(left.lazy(), "text")  # type: ignore[arg-type]


def test_empty_frames() -> None:
    empty = pl.Series("t", [], dtype=pl.String)
    assert empty.emb.encode().dtype == pl.Array(pl.Float32, 32) and len(empty.emb.encode()) == 0
    assert len(empty.emb.similarity("x")) == 0
    assert len(empty.emb.search("x")) == 0
    assert len(empty.emb.near_duplicates()) == 0
    assert len(empty.emb.near_duplicates(groups=True)) == 0
    frame = pl.DataFrame({"t": empty})
    assert frame.lazy().with_columns(pl.col("t").emb.encode().alias("v")).collect(
        engine="streaming"
    ).shape == (0, 2)
    joined = frame.emb.join(pl.DataFrame({"t": ["a"]}), "t")
    assert joined.columns == ["t_x", "t_y", "score"] and joined.is_empty()
    assert pl.DataFrame({"t": ["a"]}).emb.join(frame, "t", how="left").rows() == [("a", None, None)]


def test_list_vector_columns_without_a_vector_give_null_scores(tiny_encoder: polyemb.Encoder) -> None:
    # A List(Float32) column (the type of any list<float> Parquet column) states no dimension,
    # so one that is empty or all NULL has none to read: NULL in, NULL out, not an error.
    vectors = pl.Series("v", ["a cat", "a dog"]).emb.encode().cast(pl.List(pl.Float32))
    nulls = pl.Series("v", [None, None], dtype=pl.List(pl.Float32))
    assert nulls.emb.similarity("a cat").to_list() == [None, None]
    assert nulls.emb.similarity(vectors).to_list() == [None, None]
    assert vectors.emb.similarity(nulls).to_list() == [None, None]
    assert vectors.head(0).emb.similarity("a cat").dtype == pl.Float64
    assert len(vectors.head(0).emb.similarity("a cat")) == 0
    # In a query, a batch may hold only the NULL rows.
    frame = pl.DataFrame({"v": pl.concat([vectors, nulls])})
    found = frame.lazy().filter(pl.col("v").is_null()).select(pl.col("v").emb.similarity("a cat")).collect()
    assert found.to_series().to_list() == [None, None]
    # Valid vectors of no dimension are still an error, not a score.
    with pytest.raises(polyemb.InvalidInputError, match="dimension 0 and 32"):
        pl.Series("v", [[], []], dtype=pl.List(pl.Float32)).emb.similarity("a cat")


def test_vectors_errors() -> None:
    with pytest.raises(polyemb.InvalidInputError, match="column 't' holds texts"):
        pl.Series("t", ["a"]).emb.to_numpy()
    with pytest.raises(polyemb.InvalidInputError, match="already holds vectors"):
        pl.Series("v", [[1.0, 0.0]]).emb.encode()
    with pytest.raises(polyemb.InvalidInputError, match="different lengths"):
        pl.Series("v", [[1.0, 2.0], [1.0]]).emb.to_numpy()
    # A List of floats (not only an Array) is a vector column.
    np.testing.assert_allclose(
        pl.Series([[1.0, 0.0], None, [0.0, 1.0]]).emb.similarity(pl.Series([[1.0, 0.0]])).to_numpy(),
        [1.0, np.nan, 0.0],
    )


# ---------------------------------------------------------------------- store and provenance


def test_methods_go_through_a_store(
    tiny_encoder: polyemb.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = polyemb.open_store(tmp_path / "store")
    series = pl.Series("t", TEXTS)
    first = series.emb.encode(store=store)
    np.testing.assert_allclose(first.emb.to_numpy()[PRESENT], tiny_encoder.encode(present(TEXTS)), atol=1e-6)
    [model] = store.stats().models
    assert model.entries == 3  # three distinct texts; NULL rows are not texts
    calls: list[int] = []
    original = polyemb.Encoder.encode

    def counting(self, texts, **options):  # type: ignore[no-untyped-def]
        texts = list(texts)
        calls.append(len(texts))
        return original(self, texts, **options)

    monkeypatch.setattr(polyemb.Encoder, "encode", counting)
    again = series.emb.encode(store=store)
    series.emb.similarity(series, store=store)
    series.emb.search("a query the store has not seen", k=2, store=store)
    series.emb.near_duplicates(0.99, store=store)
    pl.DataFrame({"t": series}).emb.join(
        pl.DataFrame({"t": ["", "El gato está en la alfombra."]}), "t", store=store
    )
    pl.DataFrame({"t": series}).lazy().select(pl.col("t").emb.encode(store=store)).collect(engine="streaming")
    assert calls == [1]  # only the search query, a text the store did not hold, was embedded
    assert again.equals(first)


def test_polars_drops_the_provenance_that_pandas_keeps(tiny_encoder: polyemb.Encoder) -> None:
    # docs/polars.md says so: Polars keeps no Arrow field metadata, so a vector column cannot
    # tell which model made it. If a Polars release starts keeping it, this fails: then say so
    # in the docs, as the adapter already reads it (and refuses two models, as pandas does).
    array = vectors_to_arrow(np.eye(2, dtype=np.float32), None, tiny_encoder.provenance)
    assert vector_model(array.type) == tiny_encoder.provenance
    assert vector_model(pl.Series(array).to_arrow().type) is None
    assert vector_model(pl.Series(["a"]).emb.encode().to_arrow().type) is None


def test_two_models_where_the_adapter_knows_both(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    from polyemb.testing import build_tiny_model

    other = polyemb.load(build_tiny_model(tmp_path / "other", seed=3))
    texts = pl.Series("t", ["a cat", "a dog", None])
    # Texts on both sides are encoded by one model, whichever is given.
    np.testing.assert_allclose(
        texts.emb.similarity(texts, encoder=other).to_numpy(), [1.0, 1.0, np.nan], atol=1e-6
    )
    mine, theirs = texts.emb.encode(), texts.emb.encode(encoder=other)
    mixed = mine.emb.similarity(theirs)  # of unknown provenance: compared, as pandas does plain lists
    assert mixed.null_count() == 1 and not np.allclose(mixed.drop_nulls(), 1.0, atol=1e-3)


@pytest.mark.parametrize("chunks", [False, True])
@pytest.mark.parametrize("query", [None, 123, ["the cat"], np.zeros((2, 16))])
def test_search_refuses_a_query_that_is_not_a_text_or_one_vector(query: object, chunks: bool) -> None:
    # Refused before anything is encoded: the ints in the Series would be refused second.
    with pytest.raises(polyemb.InvalidInputError, match="query"):
        pl.Series([1, 2]).emb.search(query, k=1, chunks=chunks)  # type: ignore[arg-type]


def test_chunks_search_and_join_by_best_window_as_pandas(tiny_encoder: polyemb.Encoder) -> None:
    import polyemb.pandas  # the reference answers
    from polyemb.testing import SAMPLE_SENTENCES

    docs = [" ".join(SAMPLE_SENTENCES[i : i + 9]) for i in range(0, 27, 3)] + [None, "short", ""]
    series = pl.Series("body", docs)
    chunks = series.emb.chunks(stride=4)
    reference = pd.Series(docs, dtype=object).emb.chunks(stride=4)
    assert chunks["index"].to_list() == reference.index.tolist()
    assert chunks.select("chunk", "start", "end", "tokens").rows() == list(
        reference[["chunk", "start", "end", "tokens"]].itertuples(index=False, name=None)
    )
    assert chunks["vector"].dtype == pl.Array(pl.Float32, tiny_encoder.dim)
    for row in chunks.filter(pl.col("index") == 0).iter_rows(named=True):  # offsets into the text
        assert docs[0][row["start"] : row["end"]].strip()

    found = series.emb.search("a man plays the guitar", k=4, chunks=True)
    expected = pd.Series(docs, dtype=object).emb.search("a man plays the guitar", k=4, chunks=True)
    assert found.columns == ["index", "body", "score", "start", "end"]
    assert found["index"].to_list() == expected.index.tolist()
    assert found.select("start", "end").rows() == list(zip(expected["start"], expected["end"], strict=True))
    np.testing.assert_allclose(found["score"], expected["score"], atol=1e-6)

    left = pl.DataFrame({"id": [1, 2, 3], "q": ["a man plays guitar", None, "snow and dogs"]})
    right = pl.DataFrame({"id": list(range(len(docs))), "body": docs})
    for score in ("cosine", "margin"):
        joined = left.emb.join(right, "q", "body", k=2, chunks=True, score=score, how="left")  # type: ignore[arg-type]
        wanted = left.to_pandas().emb.join(
            right.to_pandas(),
            "q",
            "body",
            k=2,
            chunks=True,
            score=score,
            how="left",  # type: ignore[arg-type]
        )
        assert joined.columns == list(wanted.columns)
        assert joined.select("id_x", "id_y", "start", "end").rows() == [
            tuple(None if pd.isna(v) else int(v) for v in row)
            for row in wanted[["id_x", "id_y", "start", "end"]].itertuples(index=False, name=None)
        ]
        np.testing.assert_allclose(joined["score"].fill_null(np.nan), wanted["score"], atol=1e-6)
    # A column named as one of the offsets the join adds: the hint names those, not score_column.
    with pytest.raises(
        polyemb.InvalidInputError, match=r"'end': rename it \(the join adds score, start, end\)"
    ):
        left.with_columns(end=1).emb.join(right, "q", "body", chunks=True)


def test_chunks_need_texts() -> None:
    vectors = pl.Series("v", np.eye(3, dtype=np.float32))
    with pytest.raises(polyemb.InvalidInputError, match="holds vectors; chunks are cut from texts"):
        vectors.emb.chunks()
    with pytest.raises(polyemb.InvalidInputError, match="holds vectors; chunks are cut from texts"):
        vectors.emb.search(np.ones(3), chunks=True)
    frame = pl.DataFrame({"t": ["a", "b"]})
    with pytest.raises(polyemb.InvalidInputError, match="use method='exact'"):
        frame.emb.join(frame, "t", chunks=True, method="ivf")
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        pl.Series(["a"]).emb.chunks(batchsize=2)  # type: ignore[call-arg]
