"""Hypothesis properties of encode: order kept, neighbours irrelevant, duplicates identical."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polyemb

# Arbitrary unicode, lone surrogates and control characters included.
texts_strategy = st.text(alphabet=st.characters(codec=None, min_codepoint=0), max_size=60)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(texts=st.lists(texts_strategy, min_size=1, max_size=20))
def test_each_row_is_its_text_alone(tiny_encoder: polyemb.Encoder, texts: list[str]) -> None:
    """Order is kept and a text's vector does not depend on its batch neighbours."""
    together = tiny_encoder.encode(texts)
    alone = np.vstack([tiny_encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@SETTINGS
@given(texts=st.lists(texts_strategy, min_size=1, max_size=10), data=st.data())
def test_duplicates_are_identical_and_permutation_moves_rows(
    tiny_encoder: polyemb.Encoder, texts: list[str], data: st.DataObject
) -> None:
    doubled = texts + texts
    order = data.draw(st.permutations(range(len(doubled))))
    shuffled = [doubled[i] for i in order]
    vectors = tiny_encoder.encode(shuffled)
    by_text: dict[str, np.ndarray] = {}
    for text, vector in zip(shuffled, vectors, strict=True):
        if text in by_text:
            np.testing.assert_array_equal(by_text[text], vector)
        by_text[text] = vector
    reference = tiny_encoder.encode(doubled)
    np.testing.assert_allclose(vectors, reference[list(order)], atol=1e-5)


@SETTINGS
@given(texts=st.lists(st.one_of(st.none(), texts_strategy), max_size=20))
def test_nullable_keeps_null_positions(tiny_encoder: polyemb.Encoder, texts: list[str | None]) -> None:
    vectors, valid = tiny_encoder.encode_nullable(texts)
    assert valid.tolist() == [text is not None for text in texts]
    assert not vectors[~valid].any()
    assert np.isfinite(vectors).all()
    present = [text for text in texts if text is not None]
    if present:
        np.testing.assert_allclose(vectors[valid], tiny_encoder.encode(present), atol=1e-5)
