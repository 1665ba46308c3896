"""Long texts: windows, long_texts="mean", encode_chunks, and their edges.

The tiny model reads 32 tokens (2 of them special), so its windows hold 30 tokens of text and,
by default, share 8: a window starts every 22 tokens. Each character of CJK_TEXT is one of its
tokens, which makes texts of an exact number of tokens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import polyemb
from polyemb import windows
from polyemb.errors import InvalidInputError
from polyemb.testing import SAMPLE_SENTENCES

CJK_TEXT = "猫がマットの上に座っている。" * 8_000
ROOM = 30  # the tiny model's tokens of text per window
STEP = 22  # ROOM less the default stride of 8
PROPERTIES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def mean_encoder(tiny_model_dir: Path) -> polyemb.Encoder:
    return polyemb.load(tiny_model_dir, device="cpu", long_texts="mean")


@pytest.fixture(scope="module")
def whole(tiny_encoder: polyemb.Encoder) -> Tokenizer:
    """The tiny model's tokenizer, without truncation."""
    tokenizer = Tokenizer.from_str(tiny_encoder._tokenizer.to_str())
    tokenizer.no_truncation()
    return tokenizer


def cjk(tokens: int) -> str:
    return CJK_TEXT[:tokens]


def table_rows(table: Any) -> list[dict[str, Any]]:
    return table.drop(["vector"]).to_pylist()  # type: ignore[no-any-return]


def vectors(table: Any) -> np.ndarray:
    return np.array(table.column("vector").to_pylist(), dtype=np.float32)


def test_cjk_characters_are_one_token_each(whole: Tokenizer) -> None:
    assert len(whole.encode(cjk(77), add_special_tokens=False).ids) == 77


def test_texts_that_fit_get_the_truncate_vectors_bit_for_bit(
    tiny_encoder: polyemb.Encoder, mean_encoder: polyemb.Encoder
) -> None:
    texts = ["The cat sits on the mat.", "", "   ", "猫がマット", cjk(ROOM), "Kot siedzi na macie."]
    np.testing.assert_array_equal(mean_encoder.encode(texts), tiny_encoder.encode(texts))
    # A text that fits gets its truncate vector however long its neighbours are.
    mixed = [*texts, cjk(500), " ".join(SAMPLE_SENTENCES)]
    np.testing.assert_allclose(
        mean_encoder.encode(mixed)[: len(texts)], tiny_encoder.encode(texts), atol=1e-6
    )
    chunk = mean_encoder.encode_chunks([cjk(ROOM)])
    assert chunk.num_rows == 1
    np.testing.assert_array_equal(vectors(chunk)[0], tiny_encoder.encode([cjk(ROOM)])[0])


def test_exactly_one_window_and_one_token_more(
    tiny_encoder: polyemb.Encoder, mean_encoder: polyemb.Encoder
) -> None:
    fits, over = cjk(ROOM), cjk(ROOM + 1)
    table = mean_encoder.encode_chunks([fits, over])
    assert table_rows(table) == [
        {"row": 0, "chunk": 0, "start": 0, "end": ROOM, "tokens": 32},
        {"row": 1, "chunk": 0, "start": 0, "end": ROOM, "tokens": 32},
        {"row": 1, "chunk": 1, "start": STEP, "end": ROOM + 1, "tokens": ROOM + 1 - STEP + 2},
    ]
    np.testing.assert_array_equal(mean_encoder.encode([fits]), tiny_encoder.encode([fits]))
    assert not np.allclose(mean_encoder.encode([over]), tiny_encoder.encode([over]), atol=1e-3)


@pytest.mark.parametrize("stride", [0, 1, 8, ROOM - 1])
def test_windows_are_the_tokenizers_own_pieces_with_special_tokens(
    mean_encoder: polyemb.Encoder, whole: Tokenizer, stride: int
) -> None:
    texts = [" ".join(SAMPLE_SENTENCES), cjk(75), "😀 emoji 👍🏽 and e\u0301 accents " * 9]
    table = mean_encoder.encode_chunks(texts, stride=stride)
    reference = Tokenizer.from_str(whole.to_str())
    reference.enable_truncation(max_length=32, stride=stride)
    expected = []
    for row, text in enumerate(texts):
        first = reference.encode(text)
        for chunk, piece in enumerate([first, *first.overflowing]):
            assert piece.ids[0] == 0 and piece.ids[-1] == 2  # <s> ... </s> on every window
            spans = [
                span
                for span, special in zip(piece.offsets, piece.special_tokens_mask, strict=True)
                if not special
            ]
            expected.append(
                {
                    "row": row,
                    "chunk": chunk,
                    "start": spans[0][0],
                    "end": spans[-1][1],
                    "tokens": len(piece.ids),
                }
            )
    assert table_rows(table) == expected


def test_mean_is_the_token_weighted_mean_of_the_window_vectors(mean_encoder: polyemb.Encoder) -> None:
    text = " ".join(SAMPLE_SENTENCES)
    table = mean_encoder.encode_chunks([text])
    weights = np.array(table.column("tokens").to_pylist(), dtype=np.float64)
    mean = (vectors(table) * weights[:, None]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(mean_encoder.encode([text])[0], mean / np.linalg.norm(mean), atol=1e-6)
    raw = mean_encoder.encode_chunks([text], normalize=False)
    raw_mean = (vectors(raw) * weights[:, None]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(mean_encoder.encode([text], normalize=False)[0], raw_mean, atol=1e-5)


def test_chunk_rows_nulls_duplicates_and_empty_texts(
    tiny_encoder: polyemb.Encoder, mean_encoder: polyemb.Encoder
) -> None:
    long = cjk(60)
    table = tiny_encoder.encode_chunks([long, None, "", "   ", long, "short"])
    rows = table.column("row").to_pylist()
    assert rows == [0, 0, 0, 2, 3, 4, 4, 4, 5]  # None (row 1) has no rows
    assert table_rows(table)[3:5] == [
        {"row": 2, "chunk": 0, "start": 0, "end": 0, "tokens": 2},
        {"row": 3, "chunk": 0, "start": 0, "end": 0, "tokens": 2},
    ]
    found = vectors(table)
    np.testing.assert_array_equal(found[:3], found[5:8])  # a duplicate's chunks are its twin's
    np.testing.assert_allclose(found[3:5], tiny_encoder.encode(["", "   "]), atol=1e-6)
    assert table.column("vector").type.value_field.metadata == {
        b"polyemb.model": tiny_encoder.provenance.encode()
    }
    # The encoder's setting does not change the chunks.
    assert table.equals(mean_encoder.encode_chunks([long, None, "", "   ", long, "short"]))
    empty = tiny_encoder.encode_chunks([None, None])
    assert empty.num_rows == 0 and empty.schema.equals(table.schema)


def test_a_text_of_100_000_tokens(tiny_encoder: polyemb.Encoder) -> None:
    text = cjk(100_000)
    table = tiny_encoder.encode_chunks([text])
    count = 1 + -(-(100_000 - ROOM) // STEP)
    assert table.num_rows == count
    starts, ends = table.column("start").to_numpy(), table.column("end").to_numpy()
    np.testing.assert_array_equal(starts, np.arange(count) * STEP)
    assert ends[-1] == len(text) and (ends - starts <= ROOM).all()
    found = vectors(table)
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)
    # Windows of equal text have equal vectors wherever they fall in a long text.
    assert 14 * 11 % STEP == 0  # CJK_TEXT repeats every 14 characters, windows start every 22
    np.testing.assert_allclose(found[7], found[14], atol=1e-6)


EDGES = [
    "猫がマットの上に座っている。" * 5,  # CJK without spaces
    "😀👍🏽👨\u200d👩\u200d👧 " * 12,  # emoji, skin tones, ZWJ sequences
    "e\u0301 a\u0308 " * 30,  # combining marks
    "nul\x00inside " * 20 + "\x00",
    "x\udfffy \ud83d\ude00 split pair " * 10,  # lone surrogates
    "مرحبا بالعالم עברית " * 10,
]


@pytest.mark.parametrize("text", EDGES, ids=["cjk", "emoji", "combining", "nul", "surrogates", "rtl"])
def test_offsets_lie_on_characters_and_cover_each_window(
    tiny_encoder: polyemb.Encoder, whole: Tokenizer, text: str
) -> None:
    table = tiny_encoder.encode_chunks([text])
    assert table.num_rows > 1
    spans = whole.encode(_clean(text), add_special_tokens=False).offsets
    for row in table_rows(table):
        assert 0 <= row["start"] <= row["end"] <= len(text)
        inside = [span for span in spans if row["start"] <= span[0] and span[1] <= row["end"]]
        assert len(inside) >= row["tokens"] - 2  # every token of the window lies in text[start:end]
    assert np.isfinite(vectors(table)).all()


def _clean(text: str) -> str:
    return polyemb.embedder.replace_surrogates(text)


def test_a_window_boundary_inside_a_character(tmp_path: Path) -> None:
    """A byte-level tokenizer cuts an emoji into several tokens: windows still start and end on characters."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["[CLS]", "[SEP]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(["plain words only"] * 10, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 1)]
    )
    text = "ab😀cd猫é" * 3
    windower = windows.Windower(tokenizer)
    found = windower.encode(
        [text], window=5, stride=1, offsets=True, dim=1, run=lambda lengths, rows, out: None
    )
    pieces = tokenizer.encode(text, add_special_tokens=False)
    assert len(pieces.ids) > len(text)  # some characters are several tokens
    assert found.starts is not None and found.ends is not None
    for start, end in zip(found.starts.tolist(), found.ends.tolist(), strict=True):
        assert 0 <= start < end <= len(text)
    assert found.starts[0] == 0 and found.ends[-1] == len(text)
    # Two windows may share the character their boundary falls in, and no character is lost.
    assert all(b <= a for a, b in zip(found.ends[:-1].tolist(), found.starts[1:].tolist(), strict=True))


@PROPERTIES
@given(
    text=st.text(alphabet=st.characters(codec=None), max_size=300),
    stride=st.integers(min_value=0, max_value=ROOM - 1),
)
def test_windows_cover_every_token_in_order(
    tiny_encoder: polyemb.Encoder, whole: Tokenizer, text: str, stride: int
) -> None:
    table = tiny_encoder.encode_chunks([text], stride=stride)
    tokens = whole.encode(_clean(text), add_special_tokens=False)
    n = len(tokens.ids)
    assert table.num_rows == (1 if n <= ROOM else 1 + -(-(n - ROOM) // (ROOM - stride)))
    rows = table_rows(table)
    assert sum(row["tokens"] - 2 for row in rows) - stride * (len(rows) - 1) == n
    for row in rows:
        assert 0 <= row["start"] <= row["end"] <= len(text)
    if n:
        assert rows[0]["start"] == tokens.offsets[0][0] and rows[-1]["end"] == tokens.offsets[-1][1]


def test_segments_are_spliced_into_the_whole_texts_tokens(
    whole: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "SEGMENT_CHARS", 300)
    monkeypatch.setattr(windows, "SEGMENT_OVERLAP", 80)
    texts = [
        " ".join(SAMPLE_SENTENCES) * 3,
        cjk(2_000),
        "a" * 3_000,  # one word, longer than a segment
        " " * 1_000 + "x" + " " * 1_000,
        "😀👍🏽" * 400,
        "nul\x00 " * 300,
        "x\udfffy " * 400,
    ]
    for text in texts:
        spliced = windows.tokenize(whole, [text], offsets=True)[0]
        reference = whole.encode(_clean(text), add_special_tokens=False)
        np.testing.assert_array_equal(spliced.ids, reference.ids)
        assert spliced.starts is not None and spliced.ends is not None
        spans = np.stack([spliced.starts, spliced.ends], axis=1).reshape(-1, 2)
        np.testing.assert_array_equal(spans, np.array(reference.offsets).reshape(-1, 2))


@PROPERTIES
@given(
    parts=st.lists(
        st.sampled_from([*SAMPLE_SENTENCES, "  ", "\n\n", "😀", "\u3000", "aaaaaaaaaaaa", "\x00"]),
        max_size=80,
    )
)
def test_splicing_gives_the_whole_texts_tokens_whatever_the_text(
    whole: Tokenizer, parts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "SEGMENT_CHARS", 200)
    monkeypatch.setattr(windows, "SEGMENT_OVERLAP", 64)
    text = "".join(parts)
    spliced = windows.tokenize(whole, [text], offsets=True)[0]
    reference = whole.encode(text, add_special_tokens=False)
    assert spliced.ids.tolist() == reference.ids
    assert list(zip(spliced.starts.tolist(), spliced.ends.tolist(), strict=True)) == reference.offsets  # type: ignore[union-attr]


MEMORY_CHILD = """
import resource, sys
from pathlib import Path
from polyemb import windows
from polyemb.loading import load_tokenizer, read_spec
tokenizer, _, _ = load_tokenizer(read_spec(Path(sys.argv[1])))
text = ("The cat sits on the mat. Die Katze sitzt auf der Matte. " * 200_000)[:10_000_000]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tokens = windows.tokenize(tokenizer, [text], offsets=True)[0]
print(len(tokens.ids), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_10_mb_text_is_tokenized_in_bounded_memory(tiny_model_dir: Path) -> None:
    # Whole, the tokenizer's output for this text takes over 2 GB at once; in segments, its
    # tokens as arrays and a few segments' output.
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(tiny_model_dir)], capture_output=True, text=True, check=True
    )
    tokens, grown_mb = map(int, result.stdout.split())
    assert tokens > 2_000_000
    assert grown_mb < 600, grown_mb


@pytest.mark.parametrize("stride", [-1, ROOM, 100, 2.5, True, "8"])
def test_a_stride_windows_cannot_share_is_refused(
    tiny_encoder: polyemb.Encoder, tiny_model_dir: Path, stride: Any
) -> None:
    with pytest.raises(InvalidInputError, match="stride"):
        tiny_encoder.encode_chunks(["text"], stride=stride)
    with pytest.raises(InvalidInputError, match="stride"):
        polyemb.load(tiny_model_dir, long_texts="mean", stride=stride)


def test_bad_settings_are_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="long_texts must be one of 'truncate', 'mean'"):
        polyemb.load(tiny_model_dir, long_texts="chunk")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no room for text"):
        polyemb.load(tiny_model_dir, max_seq_length=2, long_texts="mean")
    short = polyemb.load(tiny_model_dir, max_seq_length=2)  # truncate needs no room to spare
    with pytest.raises(InvalidInputError, match="no room for text"):
        short.encode_chunks(["text"])
    with pytest.raises(InvalidInputError, match=r"texts\[1\]"):
        short.encode_chunks(["text", 3])  # type: ignore[list-item]


def test_the_encoder_names_its_setting(tiny_encoder: polyemb.Encoder, mean_encoder: polyemb.Encoder) -> None:
    assert (tiny_encoder.long_texts, tiny_encoder.stride) == ("truncate", 8)
    assert (mean_encoder.long_texts, mean_encoder.stride) == ("mean", 8)
    assert "long_texts" not in repr(tiny_encoder) and "long_texts='mean', stride=8" in repr(mean_encoder)
