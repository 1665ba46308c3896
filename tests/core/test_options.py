"""The choices polyemb takes: one Literal each, and the checks of names and numbers users give."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from pandas.testing import assert_frame_equal

import polyemb
from polyemb import options
from polyemb.errors import InvalidInputError
from polyemb.ivf import Ivf


@pytest.mark.parametrize(
    ("literal", "values"),
    [
        (options.Precision, options.PRECISIONS),
        (options.WeightPrecision, options.WEIGHT_PRECISIONS),
        (options.Delivery, options.DELIVERIES),
        (options.Score, options.SCORES),
        (options.JoinHow, options.JOIN_HOWS),
    ],
)
def test_each_tuple_is_its_literal(literal: object, values: tuple[str, ...]) -> None:
    assert values == get_args(literal)


def test_precisions_are_the_weight_precisions_and_auto() -> None:
    assert set(options.PRECISIONS) == {"auto", *options.WEIGHT_PRECISIONS}


def test_check_choice_returns_the_value_or_lists_the_choices() -> None:
    assert options.check_choice("score", "margin", options.SCORES) == "margin"
    for bad in ("Margin", None, 3):
        with pytest.raises(InvalidInputError, match=r"score must be one of 'cosine', 'margin', 'csls'"):
            options.check_choice("score", bad, options.SCORES)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None, np.int64(0), np.float64(2.0), np.bool_(True)])
def test_check_positive_int_refuses_what_is_not_an_int_of_at_least_one(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="k must be a positive int"):
        options.check_positive_int("k", bad)


def test_check_positive_int_returns_the_int() -> None:
    assert options.check_positive_int("k", 1) == 1
    # A numpy integer (a count computed with numpy, a frame's cell) is a whole number too.
    for value in (np.int64(3), np.int32(3), np.uint8(3)):
        taken = options.check_positive_int("k", value)
        assert taken == 3 and type(taken) is int


def test_numpy_integers_are_taken_wherever_a_whole_number_is(tiny_encoder: polyemb.Encoder) -> None:
    import pandas as pd

    import polyemb.pandas  # noqa: F401

    texts = pd.Series(["a cat", "a dog", "the sea", "a cat sat"])
    found = texts.emb.search("a cat", k=np.int64(2), encoder=tiny_encoder, batch_size=np.int64(2))
    assert_frame_equal(found, texts.emb.search("a cat", k=2, encoder=tiny_encoder))
    frame = texts.to_frame("t")
    joined = frame.emb.join(frame, "t", k=np.int64(2), encoder=tiny_encoder)
    assert_frame_equal(joined, frame.emb.join(frame, "t", k=2, encoder=tiny_encoder))
    settings = Ivf(nlist=np.int64(2), nprobe=np.int32(1))
    assert (type(settings.nlist), type(settings.nprobe)) == (int, int)


def test_check_mib_takes_a_finite_size_and_zero_only_where_allowed() -> None:
    assert options.check_mib("target_mb", 64) == 64.0 and isinstance(options.check_mib("t", 1), float)
    assert options.check_mib("broadcast_mb", 0, zero=True) == 0.0
    with pytest.raises(InvalidInputError, match="target_mb must be a number of MiB above 0, got 0"):
        options.check_mib("target_mb", 0)
    for bad in ("64", float("nan"), float("inf"), -1, -0.5, True, None):
        with pytest.raises(InvalidInputError, match="broadcast_mb must be a number of MiB, 0 or more"):
            options.check_mib("broadcast_mb", bad, zero=True)


@pytest.mark.parametrize("name", ["products", "_x", "a1_b2", "Z"])
def test_sql_names_are_identifiers(name: str) -> None:
    assert options.check_sql_name("name", name) == name
    assert options.check_sql_prefix(name) == name


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a b", "é", "a;drop", None])
def test_sql_names_refuse_what_needs_quoting(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="must be an SQL identifier"):
        options.check_sql_name("name", bad)


def test_a_prefix_may_be_empty_but_not_a_non_identifier() -> None:
    assert options.check_sql_prefix("") == ""
    for bad in ("1_", "pe-", None):
        with pytest.raises(InvalidInputError, match="prefix must be empty or start an SQL identifier"):
            options.check_sql_prefix(bad)
