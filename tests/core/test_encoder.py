"""Encoding: shapes, order, duplicates, hostile text, errors, NULLs, threads, pure pieces."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import polyemb
from polyemb.batching import pad_multiple, padded_lengths, power_of_two_parts, run_batches
from polyemb.encoder import mean_pool, plan_batches
from polyemb.testing import SAMPLE_SENTENCES


def test_output_is_c_contiguous_float32_in_input_order(tiny_encoder: polyemb.Encoder) -> None:
    vectors = tiny_encoder.encode(SAMPLE_SENTENCES)
    assert vectors.shape == (len(SAMPLE_SENTENCES), tiny_encoder.dim)
    assert vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]
    one_by_one = np.vstack([tiny_encoder.encode([text]) for text in SAMPLE_SENTENCES])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


def test_rows_are_unit_length_unless_asked_otherwise(tiny_encoder: polyemb.Encoder) -> None:
    unit = tiny_encoder.encode(SAMPLE_SENTENCES[:5])
    raw = tiny_encoder.encode(SAMPLE_SENTENCES[:5], normalize=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_duplicates_get_identical_rows(tiny_encoder: polyemb.Encoder) -> None:
    texts = ["b", "a", "b", "c", "a", "b"]
    vectors = tiny_encoder.encode(texts)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[5])
    np.testing.assert_array_equal(vectors[1], vectors[4])
    assert not np.array_equal(vectors[0], vectors[1])


def test_empty_input(tiny_encoder: polyemb.Encoder) -> None:
    vectors = tiny_encoder.encode([])
    assert vectors.shape == (0, tiny_encoder.dim)
    assert vectors.dtype == np.float32


def test_any_iterable_of_str(tiny_encoder: polyemb.Encoder) -> None:
    texts = ["one", "two", "three"]
    expected = tiny_encoder.encode(texts)
    # The same texts in the same order: the same batches, so the same vectors up to float32
    # rounding (a CPU may round a row differently from one call to the next; 1e-6 is far below
    # the 1e-2-scale differences between different texts).
    for same in (iter(texts), tuple(texts), np.array(texts), (text for text in texts)):
        np.testing.assert_allclose(tiny_encoder.encode(same), expected, rtol=0, atol=1e-6)


def test_empty_and_whitespace_texts_get_the_special_tokens_vector(tiny_encoder: polyemb.Encoder) -> None:
    vectors = tiny_encoder.encode(["", " ", "\t\n  "])
    assert np.isfinite(vectors).all()
    # The tokenizer drops whitespace, so all three are <s></s>: the same tokens. They are three
    # different texts, so three rows of a batch, which a CPU may round differently (AMD Zen 4:
    # 1.5e-8): equal within float32 rounding, not bitwise.
    np.testing.assert_allclose(vectors[1:], np.vstack([vectors[0], vectors[0]]), rtol=0, atol=1e-6)


HOSTILE = [
    "emoji 😀👍🏽👨‍👩‍👧",
    "עברית מימין לשמאל",
    "العربية من اليمين",
    "中文字符和日本語のテキスト",
    "control \x00\x01\x07\x1b[31m chars",
    "lone surrogate \ud800 here",
    "\udfff",
    "combining e\u0301\u0301\u0301",
    "zero\u200bwidth\ufeff",
    "x" * 100_000,
]


def test_hostile_text_never_crashes(tiny_encoder: polyemb.Encoder) -> None:
    vectors = tiny_encoder.encode(HOSTILE)
    assert vectors.shape == (len(HOSTILE), tiny_encoder.dim)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # A lone surrogate is read as U+FFFD (the same tokens, in another batch: float32 rounding).
    np.testing.assert_allclose(
        vectors[5], tiny_encoder.encode(["lone surrogate \ufffd here"])[0], rtol=0, atol=1e-6
    )


def test_truncation_is_counted_in_one_warning(
    tiny_encoder: polyemb.Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    long_text = "many words " * 100
    with caplog.at_level(logging.WARNING, logger="polyemb"):
        tiny_encoder.encode([long_text, "short", long_text, long_text + "x"])
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("3 of 4 texts")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="polyemb"):
        tiny_encoder.encode(["short", "texts"])
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]


def test_truncated_text_equals_its_first_tokens(tiny_encoder: polyemb.Encoder) -> None:
    words = "the cat sits on the mat and " * 20
    a, b = tiny_encoder.encode([words, words + " and then many more words after"])
    # The same tokens after truncation, in two rows of one batch: equal up to float32 rounding.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (None, "None"),
        (42, "int (42)"),
        (b"bytes", "bytes (b'bytes')"),
        (float("nan"), "float (nan)"),
        (["x"], "list"),
    ],
)
def test_non_string_names_position_and_type(tiny_encoder: polyemb.Encoder, bad: object, shown: str) -> None:
    with pytest.raises(polyemb.InvalidInputError, match=re.escape(f"texts[2] is {shown}")) as info:
        tiny_encoder.encode(["ok", "fine", bad])  # type: ignore[list-item]
    assert isinstance(info.value, ValueError)


def test_a_single_string_is_refused(tiny_encoder: polyemb.Encoder) -> None:
    with pytest.raises(polyemb.InvalidInputError, match=r"encode\(\[text\]\)"):
        tiny_encoder.encode("not a list")


def test_bad_batch_size(tiny_encoder: polyemb.Encoder) -> None:
    with pytest.raises(polyemb.InvalidInputError, match="batch_size"):
        tiny_encoder.encode(["x"], batch_size=0)


def test_encode_nullable_keeps_nulls_in_place(tiny_encoder: polyemb.Encoder) -> None:
    texts = [None, "a", None, "b", "a"]
    vectors, valid = tiny_encoder.encode_nullable(texts)
    assert valid.tolist() == [False, True, False, True, True]
    assert not vectors[~valid].any()
    np.testing.assert_allclose(vectors[valid], tiny_encoder.encode(["a", "b", "a"]), rtol=0, atol=1e-6)
    all_null, none_valid = tiny_encoder.encode_nullable([None, None])
    assert all_null.shape == (2, tiny_encoder.dim) and not none_valid.any()
    with pytest.raises(polyemb.InvalidInputError, match=r"texts\[1\] is int"):
        tiny_encoder.encode_nullable(["a", 1])  # type: ignore[list-item]


@pytest.mark.parametrize("batch_size", [None, 1, 3, 64])
def test_batch_size_does_not_change_vectors(tiny_encoder: polyemb.Encoder, batch_size: int | None) -> None:
    reference = tiny_encoder.encode(SAMPLE_SENTENCES, batch_size=1000)
    np.testing.assert_allclose(
        tiny_encoder.encode(SAMPLE_SENTENCES, batch_size=batch_size), reference, atol=1e-5
    )


def test_chunked_tokenization_keeps_order(
    tiny_encoder: polyemb.Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(50)]
    reference = tiny_encoder.encode(texts)
    monkeypatch.setattr("polyemb.encoder.TOKENIZE_CHUNK", 7)
    np.testing.assert_allclose(tiny_encoder.encode(texts), reference, atol=1e-5)


def test_threads_share_one_encoder(tiny_encoder: polyemb.Encoder, run_threads) -> None:  # type: ignore[no-untyped-def]
    texts = [f"thread test sentence {i} " + "word " * (i % 13) for i in range(300)]
    expected = tiny_encoder.encode(texts)

    def work(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for _ in range(5):
            rows = rng.choice(len(texts), size=40, replace=True)
            np.testing.assert_allclose(
                tiny_encoder.encode([texts[r] for r in rows]), expected[rows], atol=1e-5
            )

    run_threads(work, 8)


def test_progress_bar_reports_texts(
    tiny_encoder: polyemb.Encoder, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_encoder.encode(SAMPLE_SENTENCES, show_progress=True)
    assert f"{len(SAMPLE_SENTENCES)}/{len(SAMPLE_SENTENCES)}" in capsys.readouterr().err
    tiny_encoder.encode(SAMPLE_SENTENCES, show_progress=False)
    assert capsys.readouterr().err == ""


def test_repr_and_provenance(tiny_encoder: polyemb.Encoder) -> None:
    assert "dim=32" in repr(tiny_encoder)
    assert tiny_encoder.provenance.startswith(tiny_encoder.model_id + "@sha256:")


# ----------------------------------------------------------------- pure pieces


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 9.0], [9.0, 13.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = mean_pool(hidden.to(torch.float16), mask)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0], [7.0, 9.0]]))
    empty = mean_pool(hidden, torch.zeros(2, 3, dtype=torch.long))
    assert torch.isfinite(empty).all()


def test_plan_batches_respects_budget_and_rows() -> None:
    lengths = np.array([100, 90, 40, 30, 30, 10, 10, 10, 5])
    batches = plan_batches(lengths, max_tokens=200, max_rows=4)
    assert batches[0] == (0, 2)  # 2 x 100 tokens
    covered = [i for start, end in batches for i in range(start, end)]
    assert covered == list(range(len(lengths)))
    for start, end in batches:
        assert end - start <= 4
        assert (end - start) * lengths[start] <= 200 or end - start == 1
    assert plan_batches(np.array([500]), max_tokens=100, max_rows=8) == [(0, 1)]
    assert plan_batches(np.array([], dtype=np.int64), max_tokens=100, max_rows=8) == []


def test_padded_lengths_round_up_within_the_limit_and_stay_sorted() -> None:
    lengths = np.array([130, 128, 100, 33, 32, 17, 16, 1])
    padded = padded_lengths(lengths, 16, 128)
    # 130 is a row past the limit (a window never is, but the rule must not cut a row).
    assert padded.tolist() == [130, 128, 112, 48, 32, 32, 16, 16]
    assert (np.diff(padded) <= 0).all()
    assert padded_lengths(np.array([100]), 16, 100).tolist() == [100]  # never past max_seq_length
    assert padded_lengths(lengths, None, 128) is lengths
    assert padded_lengths(np.array([300, 129]), 16, 512).tolist() == [304, 144]  # multiples stay multiples
    # Multiple 1: up by at most an eighth (steps of 1 below 16, 2 to 31, 4 to 63, 8 to 127).
    eighths = padded_lengths(np.array([300, 129, 100, 63, 33, 17, 16, 15, 1]), 1, 512)
    assert eighths.tolist() == [320, 144, 104, 64, 36, 18, 16, 15, 1]
    assert pad_multiple("cpu", "bf16", frozenset({"amx_bf16"})) == 1  # eighths on every CPU
    assert pad_multiple("cpu", "fp32", frozenset({"amx_tile"})) == 8
    assert pad_multiple("cpu", "bf16", frozenset({"avx512_bf16"})) == 1
    assert pad_multiple("cpu", "int8", frozenset()) is None and pad_multiple("cuda", "bf16") is None
    everything = padded_lengths(np.arange(128, 0, -1), 1, 128)
    assert len(set(everything.tolist())) == 40
    assert ((everything - np.arange(128, 0, -1)) / np.arange(128, 0, -1) <= 1 / 8).all()


def test_power_of_two_parts() -> None:
    assert power_of_two_parts(3, 40) == [(3, 35), (35, 39), (39, 40)]  # 37 rows: 32, 4, 1
    assert power_of_two_parts(0, 64) == [(0, 64)]
    assert power_of_two_parts(5, 5) == []


def _run_token_counts(
    lengths: np.ndarray, shapes: list[tuple[int, int]], **options: object
) -> tuple[np.ndarray, int]:
    """run_batches over rows of ``lengths`` ones; each vector is its row's real tokens.

    Returns ``(vectors, rows reported done)``; the shape of each batch goes into ``shapes``.
    """
    rows = [[1] * int(n) for n in lengths]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        shapes.append(ids.shape)
        return mask.sum(axis=1, keepdims=True).astype(np.float32)

    out = np.zeros((len(rows), 1), np.float32)
    done = run_batches(lengths, rows.__getitem__, forward, out, pad_id=0, device_type="cpu", **options)  # type: ignore[arg-type]
    return out[:, 0], sum(done)


@pytest.mark.parametrize(("multiple", "most_widths"), [(16, 8), (1, 40)])
def test_bucketed_batches_bring_few_shapes_over_many_calls(multiple: int, most_widths: int) -> None:
    """With padding, full batches have one row count per width and a short one comes in 2^j rows."""
    rng = np.random.default_rng(0)
    shapes: list[tuple[int, int]] = []
    for call in range(40):
        lengths = rng.integers(1, 129, size=int(rng.integers(1, 400)))
        out, done = _run_token_counts(lengths, shapes, batch_size=None, multiple=multiple, limit=128)
        assert done == len(lengths)
        assert out.tolist() == lengths.tolist(), call  # padding is masked out, rows in place
    widths = {w for _, w in shapes}
    assert all(w % multiple == 0 for w in widths)
    assert len(widths) <= most_widths
    # Per width: its full row count and at most the 8 powers of two below 128.
    assert len(set(shapes)) <= len(widths) * 9


def test_run_batches_pads_to_the_multiple_and_puts_rows_back() -> None:
    lengths = np.array([3, 17, 1, 40, 16])
    shapes: list[tuple[int, int]] = []
    out, done = _run_token_counts(lengths, shapes, batch_size=1, multiple=16, limit=36)
    assert done == len(lengths)
    assert out.tolist() == lengths.tolist()
    # 40 > limit stays 40; 17 -> 32; 16, 3, 1 -> 16
    assert [w for _, w in shapes] == [40, 32, 16, 16, 16]


def test_large_calls_hand_free_heap_pages_back(
    tiny_encoder: polyemb.Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call of TRIM_MIN_TEXTS texts or more trims the C heap once; smaller calls never do."""
    import polyemb.encoder as encoder_module

    trims: list[int] = []
    monkeypatch.setattr(encoder_module, "release_free_memory", lambda: trims.append(1))
    monkeypatch.setattr(encoder_module, "TRIM_MIN_TEXTS", 6)
    texts = [f"text number {i}" for i in range(6)]
    tiny_encoder.encode(texts[:5])
    tiny_encoder.encode(texts[:2] * 5)  # 10 items, 2 distinct: what is encoded counts
    assert trims == []
    tiny_encoder.encode(texts)
    tiny_encoder.encode_chunks(texts)
    assert trims == [1, 1]


def test_release_free_memory_is_safe_to_call() -> None:
    from polyemb._platform import _malloc_trim, release_free_memory

    assert release_free_memory() is None
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None  # the trim really runs where it matters


_HEAP_CHOICES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POLYEMB_KEEP_HEAP", "0"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("MALLOC_TRIM_THRESHOLD_", "0"),
        ("MALLOC_TOP_PAD_", "0"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_heap_settings_are_left_alone_where_the_user_chose(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    from polyemb import _platform

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_platform, "_mallopt", lambda: lambda option, size: calls.append((option, size)) or 1)
    for name in (*_HEAP_CHOICES, "LD_PRELOAD", "POLYEMB_KEEP_HEAP"):
        monkeypatch.delenv(name, raising=False)
    _platform.keep_heap_between_batches.cache_clear()
    try:
        monkeypatch.setenv(variable, value)
        assert _platform.keep_heap_between_batches() is False
        assert calls == []
        _platform.keep_heap_between_batches.cache_clear()
        monkeypatch.delenv(variable)
        assert _platform.keep_heap_between_batches() is True
        assert calls == [(-3, 32 << 20), (-1, 64 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    finally:
        _platform.keep_heap_between_batches.cache_clear()


def test_heap_settings_off_glibc_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from polyemb import _platform

    monkeypatch.setattr(_platform, "_mallopt", lambda: None)  # macOS, musl
    monkeypatch.delenv("POLYEMB_KEEP_HEAP", raising=False)
    _platform.keep_heap_between_batches.cache_clear()
    try:
        assert _platform.keep_heap_between_batches() is False
    finally:
        _platform.keep_heap_between_batches.cache_clear()


_HEAP_CHILD = "from polyemb._platform import keep_heap_between_batches as k; print(k(), k())"


def test_glibc_takes_the_heap_settings_in_a_fresh_process() -> None:
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the heap settings are glibc's (mallopt); this libc keeps its own defaults")
    environment = {name: value for name, value in os.environ.items() if name not in _HEAP_CHOICES}
    environment.pop("LD_PRELOAD", None)
    printed = {}
    for keep in ("0", "1"):
        child = subprocess.run(
            [sys.executable, "-c", _HEAP_CHILD],
            env={**environment, "POLYEMB_KEEP_HEAP": keep},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        printed[keep] = child.stdout.split()
    # glibc's mallopt accepted both values (it returns 0 for one it refuses), once per process.
    assert printed == {"0": ["False", "False"], "1": ["True", "True"]}


def test_loading_a_cpu_encoder_keeps_the_heap(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polyemb.encoder as encoder_module

    calls: list[int] = []
    monkeypatch.setattr(encoder_module, "keep_heap_between_batches", lambda: calls.append(1) or True)
    polyemb.load(tiny_model_dir, device="cpu")
    assert calls == [1]


def test_a_process_forked_after_encoding_encodes_on_one_thread(tiny_encoder: polyemb.Encoder) -> None:
    # gunicorn --preload, multiprocessing's fork: torch's OpenMP threads of the parent are not in
    # the child, whose first parallel step would wait for them forever.
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as on any machine of 2 CPUs or more, even where this one has 1
    try:
        expected = tiny_encoder.encode(SAMPLE_SENTENCES)  # the parent runs its threads
        _encode_in_a_forked_child(tiny_encoder, expected)
        assert torch.get_num_threads() == 2  # the parent keeps its threads
    finally:
        torch.set_num_threads(before)


def _encode_in_a_forked_child(tiny_encoder: polyemb.Encoder, expected: np.ndarray) -> None:
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if everything held
        code = 9
        try:
            signal.alarm(60)  # a hang ends as SIGALRM, not as a stuck suite
            said: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("polyemb").addHandler(handler)
            vectors = tiny_encoder.encode(SAMPLE_SENTENCES)
            tiny_encoder.encode(SAMPLE_SENTENCES[:2])
            code = (
                2 * (not np.allclose(vectors, expected, rtol=0, atol=1e-6))
                + 4 * (torch.get_num_threads() != 1)
                + 8 * (sum("runs on one thread" in message for message in said) != 1)  # said once
            )
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_process_forked_while_another_thread_encodes_encodes_too(tiny_encoder: polyemb.Encoder) -> None:
    # A pool forked while a thread of the parent encodes: the Encoder's lock, held by that
    # thread, is copied held, and that thread is not in the child.
    with tiny_encoder._lock:  # as a thread in the middle of a chunk holds it
        pid = os.fork()
        if pid == 0:
            code = 9
            try:
                signal.alarm(60)  # a hang ends as SIGALRM, not as a stuck suite
                code = int(tiny_encoder.encode(["after the fork"]).shape != (1, tiny_encoder.dim))
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


FORK_WITHOUT_A_MODEL = """
import os, signal, torch
torch.set_num_threads(2)
import polyemb  # imported, no model loaded: torch's threads never ran
pid = os.fork()
if pid == 0:
    signal.alarm(60)
    x = torch.randn(256, 256)
    (x @ x).sum()
    os._exit(0 if torch.get_num_threads() == 2 else 3)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_of_a_process_that_loaded_no_model_keeps_its_threads() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK_WITHOUT_A_MODEL], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


def test_an_encoder_says_how_to_get_it_to_another_process(tiny_encoder: polyemb.Encoder) -> None:
    import copy
    import pickle

    clone = copy.copy(tiny_encoder)  # the same model, as before
    np.testing.assert_array_equal(clone.encode(["a copy"]), tiny_encoder.encode(["a copy"]))

    with pytest.raises(TypeError, match=r"load it in each worker process, e.g. polyemb.load\(...\)"):
        pickle.dumps(tiny_encoder)
