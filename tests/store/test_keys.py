"""Store keys: the text hash (the same in Python and SQL) and the model key."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

import polyemb
from polyemb.embedder import VectorSpec
from polyemb.store import StoreError, text_hashes
from polyemb.store.keys import digest_words, hash_words, text_digests
from polyemb.testing import build_tiny_model


def test_the_text_hash_is_sha256_and_sql_computes_the_same(tmp_path: Path) -> None:
    texts = ["hello", "", "naïve café", "猫がマット", "emoji 😀", "lone \ud800 surrogate"]
    hashes = text_hashes(texts)
    assert hashes[0] == hashlib.sha256(b"hello").hexdigest()[:32]
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hashes)
    assert hashes[5] == text_hashes(["lone \ufffd surrogate"])[0]  # read as the encoder reads it
    sql = duckdb.execute("SELECT left(sha256(t), 32) FROM unnest($1::VARCHAR[]) AS u(t)", [texts[:5]])
    assert [row[0] for row in sql.fetchall()] == hashes[:5]


def test_digests_and_hex_hashes_give_the_same_words() -> None:
    texts = [f"text {i}" for i in range(50)]
    from_hex = hash_words(text_hashes(texts), "test")
    from_bytes = digest_words(text_digests(texts))
    np.testing.assert_array_equal(from_hex[0], from_bytes[0])
    np.testing.assert_array_equal(from_hex[1], from_bytes[1])
    assert int(from_hex[0][0]) == int(text_hashes(texts)[0][:16], 16)


@pytest.mark.parametrize("bad", ["abc", "g" * 32, " " + "0" * 31, None])
def test_a_malformed_hash_is_refused(bad: str | None) -> None:
    with pytest.raises(StoreError, match="32 hex digits"):
        hash_words(["0" * 32, bad], "the lookup")  # type: ignore[list-item]


def test_the_model_key_changes_with_everything_that_changes_a_vector(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = polyemb.load(tiny_model_dir).vector_spec()
    keys = {
        "base": base.key,
        "length": polyemb.load(tiny_model_dir, max_seq_length=16).vector_spec().key,
        "precision": polyemb.load(tiny_model_dir, precision="bf16").vector_spec().key,
        "not normalized": polyemb.load(tiny_model_dir).vector_spec(normalize=False).key,
        "other weights": polyemb.load(build_tiny_model(tmp_path / "seed1", seed=1)).vector_spec().key,
        "other revision": VectorSpec(**{**base.__dict__, "fingerprint": "0123abcd"}).key,
        "other pooling": VectorSpec(**{**base.__dict__, "pooling": "cls"}).key,
    }
    assert len(set(keys.values())) == len(keys), keys
    # The same content in another folder, or described without loading the weights: one key.
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert polyemb.load(copy).vector_spec().key == base.key
    assert polyemb.encoder.describe(tiny_model_dir).key == base.key


def test_a_key_of_today_stays_what_it_was() -> None:
    # Computed before the long-text setting existed: the default ("truncate") adds nothing to a
    # key, so every store written before reads the same folders.
    spec = VectorSpec(
        "sentence-transformers/all-MiniLM-L6-v2",
        "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
        384,
        256,
        "fp32",
        True,
    )
    assert spec.key == "kf93129372e413063"
    assert "long_texts" not in spec.content() and "stride" not in spec.content()


def test_the_long_text_setting_and_its_stride_are_in_the_key(tiny_model_dir: Path) -> None:
    truncate = polyemb.load(tiny_model_dir).vector_spec()
    mean = polyemb.load(tiny_model_dir, long_texts="mean").vector_spec()
    wider = polyemb.load(tiny_model_dir, long_texts="mean", stride=4).vector_spec()
    assert len({truncate.key, mean.key, wider.key}) == 3
    assert (mean.long_texts, mean.stride) == ("mean", 8)
    assert {"long_texts": "mean", "stride": 8}.items() <= mean.content().items()
    # A stride changes nothing that truncate encodes: same key.
    assert polyemb.load(tiny_model_dir, stride=4).vector_spec().key == truncate.key
    assert polyemb.encoder.describe(tiny_model_dir, long_texts="mean").key == mean.key
    assert polyemb.encoder.describe(tiny_model_dir, long_texts="mean", stride=4).key == wider.key
