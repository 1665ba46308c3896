"""The pandas .emb accessor against the core's own vectors and cosines."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import polyemb
import polyemb.pandas
from polyemb.ivf import Ivf, IvfReport
from polyemb.similarity import normalize_rows


@pytest.fixture(autouse=True)
def _default_tiny(tiny_encoder: polyemb.Encoder) -> None:
    polyemb.set_default_encoder(tiny_encoder)
    yield
    polyemb.set_default_encoder(None)


TEXTS = [
    "The cat sits on the mat.",
    None,
    "El gato está en la alfombra.",
    np.nan,
    pd.NA,
    "The cat sits on the mat.",
    "",
]


def text_series(**kwargs: object) -> pd.Series:
    return pd.Series(TEXTS, index=[10, 20, 30, 40, 50, 60, 70], name="title", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [object, "string", "str", pd.ArrowDtype(pa.string())])
def test_encode_matches_core_and_keeps_na_positions(tiny_encoder: polyemb.Encoder, dtype: object) -> None:
    series = text_series(dtype=dtype)
    vectors = series.emb.encode()
    assert vectors.dtype == pd.ArrowDtype(pa.list_(pa.float32(), tiny_encoder.dim))
    assert vectors.dtype == polyemb.pandas.vector_dtype(tiny_encoder.dim)
    assert vectors.index.equals(series.index) and vectors.name == "title"
    assert vectors.isna().tolist() == [False, True, False, True, True, False, False]
    matrix = vectors.emb.to_numpy()
    assert matrix.dtype == np.float32 and matrix.shape == (7, tiny_encoder.dim)
    assert np.isnan(matrix[[1, 3, 4]]).all()
    expected = tiny_encoder.encode(
        ["The cat sits on the mat.", "El gato está en la alfombra.", "The cat sits on the mat.", ""]
    )
    # The core encodes the same texts in other batches here: float32 rounding apart.
    np.testing.assert_allclose(matrix[[0, 2, 5, 6]], expected, rtol=0, atol=1e-6)


def test_explicit_encoder_overrides_default(tiny_model_dir: Path) -> None:
    other = polyemb.load(tiny_model_dir, max_seq_length=4)
    long_text = pd.Series(["one two three four five six seven eight nine ten"])
    np.testing.assert_allclose(
        long_text.emb.encode(encoder=other).emb.to_numpy(),
        other.encode(long_text.tolist()),
        rtol=0,
        atol=1e-6,
    )


def test_non_text_value_names_the_row_label() -> None:
    series = pd.Series(["fine", 3.5, "ok"], index=["a", "b", "c"], name="title")
    with pytest.raises(polyemb.InvalidInputError, match="row 'b' of Series 'title' is float"):
        series.emb.encode()
    with pytest.raises(polyemb.InvalidInputError, match="row 1 of the Series is bytes"):
        pd.Series(["x", b"y"]).emb.encode()


def test_nan_and_none_strings_are_texts_but_missing_values_are_na() -> None:
    vectors = pd.Series(["nan", "None", np.nan, None]).emb.encode()
    assert vectors.isna().tolist() == [False, False, True, True]


def test_to_numpy_round_trip_keeps_na_rows_na() -> None:
    vectors = pd.Series(["a cat", None, "a dog"]).emb.encode()
    back = pd.Series(list(vectors.emb.to_numpy()))
    assert back.emb.similarity("a cat").isna().tolist() == [False, True, False]
    with_nan = vectors.emb.to_numpy()
    with_nan[2, 0] = np.nan
    with pytest.raises(polyemb.InvalidInputError, match="position 2 holds NaN"):
        pd.Series(list(with_nan)).emb.similarity("a cat")


def test_similarity_with_query_and_series(tiny_encoder: polyemb.Encoder) -> None:
    series = text_series()
    scores = series.emb.similarity("a cat")
    assert scores.index.equals(series.index) and scores.dtype == np.float64
    assert scores.isna().tolist() == [False, True, False, True, True, False, False]
    query = tiny_encoder.encode(["a cat"])[0]
    assert scores[10] == pytest.approx(float(tiny_encoder.encode([TEXTS[0]])[0] @ query), abs=1e-6)

    other = pd.Series(["a dog", "x", None, "y", "z", "a cat", "w"], index=series.index)
    pairwise = series.emb.similarity(other)
    assert pairwise.isna().tolist() == [False, True, True, True, True, False, False]
    a, b = tiny_encoder.encode([TEXTS[0], "a dog"])
    assert pairwise[10] == pytest.approx(float(a @ b), abs=1e-6)
    # Vectors on either side give the same result as texts.
    np.testing.assert_allclose(series.emb.encode().emb.similarity(other), pairwise, atol=1e-6)
    np.testing.assert_allclose(series.emb.similarity(other.emb.encode()), pairwise, atol=1e-6)


def test_similarity_aligns_on_labels_like_pandas() -> None:
    left = pd.Series(["a cat", "a dog", "a bird"], index=["x", "y", "z"])
    right = pd.Series(["a bird", "a cat", "a dog"], index=["z", "x", "y"])
    np.testing.assert_allclose(left.emb.similarity(right), [1.0, 1.0, 1.0], atol=1e-6)
    with pytest.raises(polyemb.InvalidInputError, match="indexes do not match"):
        left.emb.similarity(pd.Series(["a", "b", "c"], index=["x", "y", "w"]))
    with pytest.raises(polyemb.InvalidInputError, match="indexes do not match"):
        left.emb.similarity(pd.Series(["a", "b"], index=["x", "y"]))
    with pytest.raises(polyemb.InvalidInputError, match="duplicate labels"):
        pd.Series(["a", "b"], index=[1, 1]).emb.similarity(pd.Series(["a", "b"], index=[1, 2]))


def test_search_texts_and_vectors(tiny_encoder: polyemb.Encoder) -> None:
    series = text_series()
    found = series.emb.search("The cat sits on the mat.", k=3)
    assert list(found.columns) == ["title", "score"]
    assert found.index.tolist()[:2] == [10, 60]  # the two identical rows, in row order
    assert found["score"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    assert found["score"].is_monotonic_decreasing
    assert len(series.emb.search("x", k=100)) == 4  # NA rows never match
    vectors = series.emb.encode()
    by_vector = vectors.emb.search(tiny_encoder.encode(["The cat sits on the mat."])[0], k=3)
    assert by_vector.index.tolist() == found.index.tolist()
    assert by_vector["title"].dtype == vectors.dtype  # still vectors, and of which model
    assert by_vector["title"].emb.similarity("The cat sits on the mat.").iloc[0] == pytest.approx(
        1.0, abs=1e-6
    )
    np.testing.assert_allclose(by_vector["score"], found["score"], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "chunks"), [("score", False), ("score", True), ("start", True), ("end", True)]
)
def test_search_refuses_a_series_named_as_one_of_its_columns(name: str, chunks: bool) -> None:
    # The values' column would be overwritten by the scores or the offsets, with no word.
    series = pd.Series(["a cat sat", "the dog ran"], index=["x", "y"], name=name)
    with pytest.raises(polyemb.InvalidInputError, match="rename the Series"):
        series.emb.search("cat", k=1, chunks=chunks)
    if name != "score":  # only the chunks' offsets take these names
        assert list(series.emb.search("cat", k=1).columns) == [name, "score"]


@pytest.mark.parametrize("chunks", [False, True])
@pytest.mark.parametrize("query", [None, pd.NA, 123, ["the cat"], np.zeros((2, 16))])
def test_search_refuses_a_query_that_is_not_a_text_or_one_vector(query: object, chunks: bool) -> None:
    # Refused before anything is encoded: the ints in the Series would be refused second.
    with pytest.raises(polyemb.InvalidInputError, match="query"):
        pd.Series([1, 2]).emb.search(query, k=1, chunks=chunks)  # type: ignore[arg-type]


def test_near_duplicates_pairs_and_groups() -> None:
    series = pd.Series(["a cat", "A CAT!", "a dog", "a cat", None, "stock prices"], index=list("abcdef"))
    pairs = series.emb.near_duplicates(0.999)
    assert pairs[["left", "right"]].values.tolist() == [["a", "d"]]
    assert pairs["left_text"].tolist() == ["a cat"] and pairs["score"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    groups = series.emb.near_duplicates(0.999, groups=True)
    assert groups.dtype == "Int64"
    assert groups.tolist() == [0, pd.NA, pd.NA, 0, pd.NA, pd.NA]
    everything = series.emb.near_duplicates(-1.0)
    assert len(everything) == 10  # 5 non-NA rows: every unordered pair once
    assert (
        everything["left"].map(list("abcdef").index) < everything["right"].map(list("abcdef").index)
    ).all()


def test_near_duplicates_matches_brute_force(tiny_encoder: polyemb.Encoder, sts_sentences: list[str]) -> None:
    series = pd.Series(sts_sentences[:200])
    pairs = series.emb.near_duplicates(0.9)
    unit = normalize_rows(tiny_encoder.encode(sts_sentences[:200]))
    full = unit @ unit.T
    expected = {(i, j) for i in range(200) for j in range(i + 1, 200) if full[i, j] >= 0.9}
    assert set(zip(pairs["left"], pairs["right"], strict=True)) == expected


def test_near_duplicates_keep_first_and_ivf(tiny_encoder: polyemb.Encoder) -> None:
    series = pd.Series(["a cat", None, "a cat", "stocks", "a cat", "stocks"], index=list("abcdef"))
    kept = series.emb.near_duplicates(0.999, keep="first")
    assert kept.index.tolist() == ["a", "b", "d"]  # the NA row is never a duplicate: kept
    assert series.emb.near_duplicates(0.999, keep="first", method="ivf").index.tolist() == ["a", "b", "d"]
    report = IvfReport()
    groups = series.emb.near_duplicates(0.999, groups=True, method=Ivf(nprobe=1), report=report)
    assert groups.tolist() == [0, pd.NA, 0, 1, 0, 1] and report.nlist == 2  # two distinct texts
    with pytest.raises(polyemb.InvalidInputError, match="groups=True or keep="):
        series.emb.near_duplicates(0.9, groups=True, keep="first")
    with pytest.raises(polyemb.InvalidInputError, match="keep must be one of 'first'"):
        series.emb.near_duplicates(0.9, keep="last")  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="threshold must be a cosine"):
        series.emb.near_duplicates(1.5, method="ivf")


def test_join_by_ivf_reports_what_it_chose(tiny_encoder: polyemb.Encoder, sts_sentences: list[str]) -> None:
    left = pd.DataFrame({"text": sts_sentences[:30]})
    right = pd.DataFrame({"text": sts_sentences[30:330]})
    report = IvfReport()
    joined = left.emb.join(right, "text", k=3, method=Ivf(nprobe=300), report=report)
    exact = left.emb.join(right, "text", k=3)
    # Every list probed: the exact answer.
    assert joined["text_y"].tolist() == exact["text_y"].tolist() and report.nprobe == report.nlist == 69
    with pytest.raises(polyemb.InvalidInputError, match="method must be one of"):
        left.emb.join(right, "text", method="annoy")  # type: ignore[arg-type]


def test_join_against_core_top_k(tiny_encoder: polyemb.Encoder) -> None:
    left = pd.DataFrame({"id": [1, 2, 3], "text": ["a cat", "a dog", None]})
    right = pd.DataFrame(
        {"id": [7, 8, 9], "text": ["the dog", "the cat", "stocks"], "price": [1.0, 2.0, 3.0]}
    )
    joined = left.emb.join(right, left_on="text", k=2)
    assert list(joined.columns) == ["id_x", "text_x", "id_y", "text_y", "price", "score"]
    assert joined["id_x"].tolist() == [1, 1, 2, 2]  # the NA left row has no match
    lv, rv = tiny_encoder.encode(["a cat", "a dog"]), tiny_encoder.encode(right["text"].tolist())
    full = lv @ rv.T
    for row in joined.itertuples():
        li = [1, 2].index(row.id_x)
        ri = [7, 8, 9].index(row.id_y)
        assert row.score == pytest.approx(float(full[li, ri]), abs=1e-6)
    best = joined.groupby("id_x")["score"].max()
    assert best[1] == pytest.approx(full[0].max(), abs=1e-6)

    kept = left.emb.join(right, "text", k=1, threshold=2.0, how="left")
    assert len(kept) == 3 and kept["score"].isna().all() and kept["id_y"].isna().all()
    suffixed = left.emb.join(right.rename(columns={"text": "name"}), "text", "name", suffixes=("_l", "_r"))
    assert list(suffixed.columns) == ["id_l", "text", "id_r", "name", "price", "score"]


def test_join_errors() -> None:
    left = pd.DataFrame({"text": ["a"]})
    with pytest.raises(
        polyemb.ColumnNotFoundError, match="column 'txt' is not in the left DataFrame.*Did you mean 'text'"
    ):
        left.emb.join(left, "txt")
    with pytest.raises(polyemb.InvalidInputError, match=r"per side; left_on is list \(\['text'\]\)"):
        left.emb.join(left, ["text"])  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="right_on is list"):
        left.emb.join(left, "text", ["text"])  # type: ignore[arg-type]
    with pytest.raises(polyemb.InvalidInputError, match="how must be"):
        left.emb.join(left, "text", how="outer")  # type: ignore[arg-type]
    with pytest.raises(
        polyemb.InvalidInputError,
        match="already have a column 'score': rename it, or choose another score_column",
    ):
        left.assign(score=1).emb.join(left, "text")


@pytest.mark.slow
def test_join_finds_real_paraphrases(minilm_encoder: polyemb.Encoder, sts_rows: list[dict[str, str]]) -> None:
    pairs = [r for r in sts_rows if r["lang"] == "en" and float(r["score"]) >= 3.5]
    assert len(pairs) >= 20
    left = pd.DataFrame({"pair": [r["pair"] for r in pairs], "sentence": [r["sentence1"] for r in pairs]})
    right = pd.DataFrame({"pair": [r["pair"] for r in pairs], "sentence": [r["sentence2"] for r in pairs]})
    right = right.sample(frac=1.0, random_state=0)
    joined = left.emb.join(right, "sentence", k=1, encoder=minilm_encoder)
    hit_rate = float((joined["pair_x"] == joined["pair_y"]).mean())
    print(f"paraphrase join: {len(pairs)} pairs, top-1 hit rate {hit_rate:.3f}")
    assert hit_rate >= 0.9


def test_parquet_round_trip_keeps_dtype_and_values(tmp_path: Path) -> None:
    frame = pd.DataFrame({"title": text_series().reset_index(drop=True)})
    frame["vector"] = frame["title"].emb.encode()
    path = tmp_path / "vectors.parquet"
    frame.to_parquet(path)
    back = pd.read_parquet(path)
    assert back["vector"].dtype == frame["vector"].dtype
    pd.testing.assert_series_equal(back["vector"], frame["vector"])
    np.testing.assert_array_equal(back["vector"].emb.to_numpy(), frame["vector"].emb.to_numpy())


def test_the_dtype_reader_only_takes_vector_strings() -> None:
    assert pd.api.types.pandas_dtype("Int64") == pd.Int64Dtype()
    assert pd.api.types.pandas_dtype("int64[pyarrow]") == pd.ArrowDtype(pa.int64())
    assert pd.api.types.pandas_dtype("list<item: double>[pyarrow]") == pd.ArrowDtype(pa.list_(pa.float64()))


def test_object_vectors_and_errors() -> None:
    series = pd.Series([np.array([1.0, 0.0]), None, [0.0, 1.0]])
    np.testing.assert_allclose(
        series.emb.similarity(pd.Series([[1.0, 0.0]] * 3)), [1.0, np.nan, 0.0], atol=1e-6
    )
    with pytest.raises(polyemb.InvalidInputError, match="holds texts"):
        pd.Series(["a"]).emb.to_numpy()
    with pytest.raises(polyemb.InvalidInputError, match="already holds vectors"):
        series.emb.encode()
    with pytest.raises(polyemb.InvalidInputError, match="different lengths"):
        pd.Series([[1.0, 2.0], [1.0]]).emb.to_numpy()


def test_empty_series() -> None:
    empty = pd.Series([], dtype=object)
    assert len(empty.emb.encode()) == 0
    assert len(empty.emb.similarity("x")) == 0
    assert len(empty.emb.search("x")) == 0
    assert len(empty.emb.near_duplicates()) == 0


def test_list_vector_series_without_a_vector_give_na_scores() -> None:
    # A list<float> column states no dimension: empty or all NA, it has none to read.
    nulls = pd.Series(pd.arrays.ArrowExtensionArray(pa.array([None, None], type=pa.list_(pa.float32()))))
    assert nulls.emb.similarity("a cat").isna().all() and len(nulls.emb.similarity("a cat")) == 2
    assert len(nulls.iloc[:0].emb.similarity("a cat")) == 0
    vectors = pd.Series(["a cat", "a dog"]).emb.encode()
    assert vectors.emb.similarity(nulls).isna().all()
    assert nulls.emb.similarity(vectors).isna().all()


# ---------------------------------------------------------------------- store and provenance


def test_accessor_methods_go_through_a_store(tiny_encoder: polyemb.Encoder, tmp_path: Path) -> None:
    store = polyemb.open_store(tmp_path / "store")
    series = text_series()
    first = series.emb.encode(store=store)
    np.testing.assert_allclose(
        first.emb.to_numpy()[[0, 2, 5, 6]],
        tiny_encoder.encode([TEXTS[0], TEXTS[2], TEXTS[5], TEXTS[6]]),
        rtol=0,
        atol=1e-6,
    )
    [model] = store.stats().models
    assert model.entries == 3  # three distinct texts; NA rows are not texts
    calls: list[int] = []
    original = polyemb.Encoder.encode

    def counting(self, texts, **options):  # type: ignore[no-untyped-def]
        texts = list(texts)
        calls.append(len(texts))
        return original(self, texts, **options)

    try:
        polyemb.Encoder.encode = counting  # type: ignore[method-assign]
        again = series.emb.encode(store=store)
        series.emb.similarity(series, store=store)
        series.emb.search("a query the store has not seen", k=2, store=store)
        series.emb.near_duplicates(0.99, store=store)
        pd.DataFrame({"t": series}).emb.join(
            pd.DataFrame({"t": ["", "El gato está en la alfombra."]}), "t", store=store
        )
    finally:
        polyemb.Encoder.encode = original  # type: ignore[method-assign]
    assert calls == [1]  # only the search query, a text the store did not hold, was embedded
    pd.testing.assert_series_equal(again, first)


def test_vectors_carry_their_model_and_two_models_are_never_compared(
    tiny_encoder: polyemb.Encoder, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from polyemb.testing import build_tiny_model

    other = polyemb.load(build_tiny_model(tmp_path / "other", seed=3))
    series = pd.Series(["a cat", "a dog", None], name="t")
    ours = series.emb.encode()
    theirs = series.emb.encode(encoder=other)
    assert ours.emb.model == tiny_encoder.provenance and theirs.emb.model == other.provenance
    both = f"{tiny_encoder.provenance}.*{other.provenance}"
    with pytest.raises(polyemb.ModelMismatchError, match=both):
        ours.emb.similarity(theirs)
    with pytest.raises(polyemb.ModelMismatchError, match=both):
        ours.emb.similarity("a cat", encoder=other)
    with pytest.raises(polyemb.ModelMismatchError, match="search compares"):
        ours.emb.search("a cat", encoder=other)
    with pytest.raises(polyemb.ModelMismatchError, match=both):
        pd.DataFrame({"v": ours}).emb.join(pd.DataFrame({"v": theirs}), "v")
    # The same model loaded from another folder is the same model.
    copy = polyemb.load(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    np.testing.assert_allclose(
        ours.emb.similarity(series.emb.encode(encoder=copy)), [1.0, 1.0, np.nan], atol=1e-6
    )
    # Vectors of unknown provenance (a plain list column) work as before.
    plain = pd.Series([None if v is pd.NA or v is None else list(v) for v in ours.tolist()])
    assert plain.emb.model is None
    np.testing.assert_allclose(plain.emb.similarity(theirs), theirs.emb.similarity(plain), atol=1e-6)


def test_the_dtype_reader_leaves_pandas_plotting_working() -> None:
    import matplotlib

    matplotlib.use("Agg")
    axes = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 0.25]}).plot.bar()  # walks the dtype registry
    assert len(axes.patches) == 4
