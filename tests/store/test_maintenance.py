"""Maintenance: stats, compaction and garbage collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import polyemb
from polyemb.store import open_store, text_hashes

TEXTS = [f"stored text number {i} " + "word " * (i % 5) for i in range(60)]


def test_stats_compact_and_gc(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = polyemb.load(tiny_model_dir)
    other = polyemb.load(tiny_model_dir, max_seq_length=16)
    store = open_store(tmp_path / "store")
    for start in range(0, 60, 10):  # six files
        store.encode(TEXTS[start : start + 10], encoder=first)
    open_store(tmp_path / "store").encode(TEXTS[:20], encoder=first)  # found: nothing written
    open_store(tmp_path / "store").encode(TEXTS[:5], encoder=other)
    # A duplicate entry, as two writers racing leave one: the same text in two files.
    dup = open_store(tmp_path / "store")
    dup.append(first.vector_spec(), text_hashes(TEXTS[:3]), first.encode(TEXTS[:3]))
    stats = {m.key: m for m in store.stats().models}
    main = stats[first.vector_spec().key]
    assert (main.entries, main.distinct, main.files) == (63, 60, 7)
    assert stats[other.vector_spec().key].entries == 5 and main.provenance == first.provenance
    for bad in ("64", float("nan"), 0, -1):  # refused before any file is read or moved
        with pytest.raises(polyemb.InvalidInputError, match="target_mb must be a number of MiB above 0"):
            store.compact(target_mb=bad)  # type: ignore[arg-type]
    assert store.stats().models == list(stats.values())
    report = store.compact()
    assert report.duplicates_dropped == 3 and report.files_after == 2
    main = {m.key: m for m in store.stats().models}[first.vector_spec().key]
    assert (main.entries, main.distinct, main.files) == (60, 60, 1)
    np.testing.assert_array_equal(
        open_store(tmp_path / "store").encode(TEXTS, encoder=first), first.encode(TEXTS)
    )
    with pytest.raises(polyemb.InvalidInputError, match="nothing dropped.*typo@sha256:0"):
        store.gc(["typo@sha256:0"])
    assert len(store.stats().models) == 2
    gc = store.gc([first.provenance])  # a provenance keeps every key of that content
    assert sorted(gc.kept) == sorted({first.vector_spec().key, other.vector_spec().key}) and not gc.dropped
    gc = store.gc(first.vector_spec().key)  # one model as a str, not a list of its characters
    assert gc.dropped == [other.vector_spec().key] and gc.bytes_freed > 0
    # batch_size is checked when every text is found in the store too, not only when one is missing.
    with pytest.raises(polyemb.InvalidInputError, match="batch_size"):
        store.encode(TEXTS[:2], encoder=first, batch_size=0)


def test_gc_keeps_a_model_whose_description_names_no_model(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "store")
    store.encode(TEXTS[:5], encoder=tiny_encoder)
    hand_made = tmp_path / "store" / "model=khandmade0000000"
    (hand_made / "run=r").mkdir(parents=True)
    (hand_made / "_model.json").write_text(json.dumps({"note": "copied from another store"}))
    report = store.gc([tiny_encoder.provenance])
    assert report.dropped == [] and "khandmade0000000" in report.kept and hand_made.is_dir()


@pytest.mark.parametrize("content", ['{"format": "polyemb-store", "version": "2"}', '["version", 1]'])
def test_a_malformed_marker_is_a_store_error(tmp_path: Path, content: str) -> None:
    open_store(tmp_path / "store")
    (tmp_path / "store" / "_polyemb_store.json").write_text(content)
    with pytest.raises(polyemb.StoreError, match="_polyemb_store.json"):
        open_store(tmp_path / "store")


def test_a_model_description_that_is_not_an_object_is_read_from_the_files(
    tiny_encoder: polyemb.Encoder, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "store")
    store.encode(TEXTS[:5], encoder=tiny_encoder)
    (store.model_folder(tiny_encoder.vector_spec().key) / "_model.json").write_text("[1, 2]")
    [model] = store.stats().models
    assert model.provenance == tiny_encoder.provenance and model.entries == 5
