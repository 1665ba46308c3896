"""What every embedder shares (torch-free): text checks, NULL placement, provenance, the store key."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from polyemb.embedder import (
    VECTOR_FORMAT,
    VectorSpec,
    check_same_model,
    check_texts,
    place_nulls,
    replace_surrogates,
)
from polyemb.errors import InvalidInputError, ModelMismatchError

SPEC = VectorSpec("org/model", "abc123", dim=4, max_seq_length=128, precision="fp32", normalized=True)


def test_check_texts_takes_any_iterable_of_str() -> None:
    assert check_texts(iter(["a", "b"]), allow_none=False) == ["a", "b"]
    assert check_texts(("a", None), allow_none=True) == ["a", None]


@pytest.mark.parametrize("single", ["a text", b"bytes"])
def test_check_texts_refuses_a_single_text(single: object) -> None:
    with pytest.raises(InvalidInputError, match=r"single .*pass a list of texts"):
        check_texts(single, allow_none=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("nothing", [None, 5])
def test_check_texts_refuses_what_is_not_a_sequence(nothing: object) -> None:
    # A TypeError ("'NoneType' object is not iterable"), not a PolyembError.
    with pytest.raises(InvalidInputError, match="not a list of texts"):
        check_texts(nothing, allow_none=True)  # type: ignore[arg-type]


def test_check_texts_names_the_position_and_type_of_a_bad_item() -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[2\] is int \(42\), not a str") as caught:
        check_texts(["a", "b", 42], allow_none=True)
    assert caught.value.position == 2
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is None.*encode_nullable") as caught:
        check_texts(["a", None], allow_none=False)
    assert caught.value.position == 1


def test_check_texts_shortens_a_long_bad_value_in_the_message() -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_texts([list(range(1000))], allow_none=False)
    assert "..." in str(caught.value) and len(str(caught.value)) < 120


def test_place_nulls_puts_zero_rows_where_texts_are_none() -> None:
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.arange(len(texts) * 2, dtype=np.float32).reshape(-1, 2) + 1

    vectors, valid = place_nulls([None, "a", None, "b"], 2, encode)
    assert seen == [["a", "b"]]  # the present texts, in order, in one call
    np.testing.assert_array_equal(valid, [False, True, False, True])
    np.testing.assert_array_equal(vectors, [[0, 0], [1, 2], [0, 0], [3, 4]])
    assert vectors.dtype == np.float32


def test_place_nulls_does_not_call_the_encoder_for_no_text() -> None:
    def encode(texts: list[str]) -> np.ndarray:
        raise AssertionError("nothing to encode")

    vectors, valid = place_nulls([None, None], 3, encode)
    assert vectors.shape == (2, 3) and not valid.any() and not vectors.any()


def test_replace_surrogates_makes_any_str_utf8() -> None:
    text = "a\ud800b\udfffc"
    assert replace_surrogates(text) == "a\ufffdb\ufffdc"
    replace_surrogates(text).encode("utf-8")  # no UnicodeEncodeError
    assert replace_surrogates("plain é 😀") == "plain é 😀"


def test_same_model_compares_fingerprints_and_lets_unknown_pass() -> None:
    check_same_model("/a/folder@sha256:1", "org/model@sha256:1", "join")  # one model, two names
    check_same_model(None, "org/model@sha256:1", "join")
    check_same_model("org/model@sha256:1", None, "join")
    with pytest.raises(ModelMismatchError, match=r"join compares .*org/a@1.*org/b@2"):
        check_same_model("org/a@1", "org/b@2", "join")


def test_the_key_is_the_documented_hash_of_the_content() -> None:
    content = {
        "fingerprint": "abc123",
        "dim": 4,
        "max_seq_length": 128,
        "precision": "fp32",
        "normalized": True,
        "pooling": "mean",
        "format": VECTOR_FORMAT,
    }
    assert SPEC.content() == content
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert SPEC.key == "k" + hashlib.sha256(text.encode()).hexdigest()[:16]
    # Pinned: every store written so far is keyed by this formula; a change would orphan them.
    assert (
        SPEC.key
        == "k"
        + hashlib.sha256(
            b'{"dim":4,"fingerprint":"abc123","format":1,"max_seq_length":128,"normalized":true,'
            b'"pooling":"mean","precision":"fp32"}'
        ).hexdigest()[:16]
    )


def test_the_key_ignores_the_name_and_follows_every_setting() -> None:
    renamed = VectorSpec(**{**SPEC.__dict__, "model_id": "/another/folder"})
    assert renamed.key == SPEC.key and renamed.provenance == "/another/folder@abc123"
    for field, value in [
        ("fingerprint", "x"),
        ("dim", 8),
        ("max_seq_length", 64),
        ("precision", "bf16"),
        ("normalized", False),
        ("pooling", "cls"),
    ]:
        assert VectorSpec(**{**SPEC.__dict__, field: value}).key != SPEC.key, field
