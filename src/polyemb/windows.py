"""Long texts as windows of ``max_seq_length`` tokens: tokenize whole, cut with overlap, map to characters.

A text is tokenized once without special tokens. Its tokens are cut into windows of
``max_seq_length`` tokens less the model's special tokens, each window starting ``window - stride``
tokens after the previous one (so consecutive windows share ``stride`` tokens), the last one
ending at the text's last token: the pieces the ``tokenizers`` library's own truncation with a
stride gives. Each window then gets the special tokens a short text gets, so a text that fits in
one window is exactly the token sequence ``long_texts="truncate"`` encodes.

A text longer than :data:`SEGMENT_CHARS` characters is tokenized in overlapping segments, spliced
where both segments tokenize the overlap alike (the tokenizer's output for a whole 10 MB text
would take about 80 bytes a character at once); where no such place is found, it is tokenized
whole. Either way the tokens are those of the whole text.

Torch-free: the encoder runs the windows through the model, the rest of polyemb reads offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyemb.embedder import replace_surrogates
from polyemb.errors import InvalidInputError, UnsupportedModelError

__all__ = [
    "SEGMENT_CHARS",
    "EncodedWindows",
    "Template",
    "Tokens",
    "Windower",
    "Windows",
    "check_stride",
    "cut",
    "default_stride",
    "encode_batch",
    "mean_of_windows",
    "special_template",
    "tokenize",
]

logger = logging.getLogger(__name__)

# Characters tokenized at a time in a long text, and how far consecutive segments overlap: the
# middle half of the overlap is where two segments' tokens must agree to be spliced, so a word
# must be shorter than a quarter of the overlap for a splice to be found inside or after it.
SEGMENT_CHARS = 65_536
SEGMENT_OVERLAP = 2_048
# Segments of one text handed to the tokenizer at once (it tokenizes a batch on all cores).
SEGMENT_GROUP = 8


@dataclass(frozen=True)
class Template:
    """The special tokens a model's tokenizer puts around one text: ``prefix + text + suffix``."""

    prefix: np.ndarray  # int64 token ids
    suffix: np.ndarray

    @property
    def specials(self) -> int:
        """How many special tokens every window carries."""
        return len(self.prefix) + len(self.suffix)


def special_template(tokenizer: Any) -> Template:
    """Find the special tokens a tokenizer adds to one text (``[CLS] ... [SEP]``, ``<s> ... </s>``).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` without truncation.

    Raises:
        UnsupportedModelError: The tokenizer does more than put fixed tokens before and after a
            text, so a window cannot be given the special tokens the way a short text is.
    """
    candidates: set[tuple[tuple[int, ...], tuple[int, ...]]] | None = None
    for probe in ("windows of tokens", "ventanas 窓, 1 2 3"):
        plain = list(tokenizer.encode(probe, add_special_tokens=False).ids)
        full = list(tokenizer.encode(probe, add_special_tokens=True).ids)
        splits = {
            (tuple(full[:p]), tuple(full[p + len(plain) :]))
            for p in range(len(full) - len(plain) + 1)
            if full[p : p + len(plain)] == plain
        }
        candidates = splits if candidates is None else candidates & splits
    alone = tuple(tokenizer.encode("", add_special_tokens=True).ids)
    found = {split for split in candidates or set() if split[0] + split[1] == alone}
    if len(found) != 1:
        raise UnsupportedModelError(
            "this model's tokenizer does not put fixed special tokens around a text, so long texts "
            "cannot be cut into windows that each read like a short text; use long_texts='truncate'"
        )
    prefix, suffix = found.pop()
    return Template(np.array(prefix, dtype=np.int64), np.array(suffix, dtype=np.int64))


def default_stride(window: int) -> int:
    """The default overlap of consecutive windows: a quarter of the window (32 of 128 tokens).

    A sentence of up to that many tokens then lies whole in some window wherever the cuts fall,
    for 4/3 of the tokens of cutting without overlap.

    Args:
        window: Tokens per window, special tokens included (``max_seq_length``).
    """
    return max(0, window // 4)


def check_stride(stride: Any, window: int, specials: int) -> int:
    """Return ``stride`` if consecutive windows can share that many tokens, else raise.

    Raises:
        InvalidInputError: ``stride`` is not an int from 0 to the window's text tokens less one,
            or the window holds no text at all.
    """
    room = window - specials
    if room < 1:
        raise InvalidInputError(
            f"max_seq_length={window} leaves no room for text beside the model's {specials} special "
            "tokens, so texts cannot be cut into windows; load with a larger max_seq_length"
        )
    if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride < room:
        raise InvalidInputError(
            f"stride is the tokens consecutive windows share: an int from 0 to {room - 1} for windows "
            f"of {window} tokens ({specials} of them special); got {stride!r}"
        )
    return stride


# --------------------------------------------------------------------------- tokenizing


@dataclass(frozen=True)
class Tokens:
    """One text's tokens, without special tokens.

    Attributes:
        ids: int32 token ids.
        starts: int32 character offset where each token starts in the text, or None when the
            offsets were not asked for.
        ends: int32 character offset where each token ends, or None.
    """

    ids: np.ndarray
    starts: np.ndarray | None
    ends: np.ndarray | None


def tokenize(tokenizer: Any, texts: Sequence[str], *, offsets: bool) -> list[Tokens]:
    """Every text's tokens, without special tokens (texts longer than :data:`SEGMENT_CHARS` in segments).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` without truncation.
        texts: The texts.
        offsets: Whether to find each token's character offsets (slower).

    Returns:
        One :class:`Tokens` per text, in order.
    """
    out: list[Tokens | None] = [None] * len(texts)
    short = [i for i, text in enumerate(texts) if len(text) <= SEGMENT_CHARS]
    encodings = _encode(tokenizer, [texts[i] for i in short], offsets=offsets)
    for i, encoding in zip(short, encodings, strict=True):
        out[i] = _tokens(encoding, 0, offsets=offsets)
    for i, text in enumerate(texts):
        if out[i] is None:
            out[i] = _tokenize_long(tokenizer, text)
    return out  # type: ignore[return-value]


def encode_batch(tokenizer: Any, texts: list[str], *, offsets: bool, specials: bool) -> list[Any]:
    """The tokenizer's encodings of ``texts`` (character offsets only if asked: they cost time).

    Lone surrogates, which cannot cross into Rust as UTF-8, are read as U+FFFD: one character
    too, so offsets into the cleaned text are offsets into the original.
    """
    encode = tokenizer.encode_batch if offsets else tokenizer.encode_batch_fast
    try:
        return encode(texts, add_special_tokens=specials)  # type: ignore[no-any-return]
    except TypeError:
        return encode([replace_surrogates(text) for text in texts], add_special_tokens=specials)  # type: ignore[no-any-return]


def _encode(tokenizer: Any, texts: list[str], *, offsets: bool) -> list[Any]:
    return encode_batch(tokenizer, texts, offsets=offsets, specials=False)


def _tokens(encoding: Any, shift: int, *, offsets: bool) -> Tokens:
    # int32: a 10 MB text is millions of tokens, and ids and character offsets fit.
    ids = np.array(encoding.ids, dtype=np.int32)
    if not offsets:
        return Tokens(ids, None, None)
    spans = np.array(encoding.offsets, dtype=np.int32).reshape(-1, 2) + np.int32(shift)
    return Tokens(ids, spans[:, 0].copy(), spans[:, 1].copy())


def _tokenize_long(tokenizer: Any, text: str) -> Tokens:
    """A long text's tokens, segment by segment, each spliced to the last; whole if no splice is found."""
    step = SEGMENT_CHARS - SEGMENT_OVERLAP
    bounds = [
        (start, min(len(text), start + SEGMENT_CHARS))
        for start in range(0, len(text) - SEGMENT_OVERLAP, step)
    ]
    parts: list[Tokens] = []
    head: Tokens | None = None
    for group in range(0, len(bounds), SEGMENT_GROUP):
        spans = bounds[group : group + SEGMENT_GROUP]
        encodings = _encode(tokenizer, [text[a:b] for a, b in spans], offsets=True)
        for (start, _), encoding in zip(spans, encodings, strict=True):
            tail = _tokens(encoding, start, offsets=True)
            if head is None:
                head = tail
                continue
            # The middle half of the overlap: far from where either segment was cut.
            quarter = SEGMENT_OVERLAP // 4
            spliced = _splice(head, tail, start + quarter, start + SEGMENT_OVERLAP - quarter)
            if spliced is None:
                logger.debug(
                    "no place to splice the tokens of a %d-character text; tokenizing it whole", len(text)
                )
                return _tokens(_encode(tokenizer, [text], offsets=True)[0], 0, offsets=True)
            kept, head = spliced
            parts.append(kept)
    if head is not None:
        parts.append(head)
    return Tokens(
        *(np.concatenate([getattr(part, name) for part in parts]) for name in ("ids", "starts", "ends"))
    )


def _splice(head: Tokens, tail: Tokens, low: int, high: int) -> tuple[Tokens, Tokens] | None:
    """``(head's tokens before the splice, tail's from it)``, spliced in ``[low, high)``; None if none fits.

    The splice is the first token of the longest run of tokens, ending at ``high``, that both
    segments give alike (ids and offsets): where both read the text the same way. A zone where
    neither has a token (whitespace) splices at ``high`` when no token of either crosses it.
    """
    hs, ts = head.starts, tail.starts
    if hs is None or ts is None or head.ends is None or tail.ends is None:
        return None
    if np.any(np.diff(hs) < 0) or np.any(np.diff(ts) < 0):
        return None  # offsets out of order: a tokenizer this splicing cannot follow
    h0, h1 = np.searchsorted(hs, [low, high])
    t0, t1 = np.searchsorted(ts, [low, high])
    mine = np.stack([head.ids[h0:h1], hs[h0:h1], head.ends[h0:h1]], axis=1)
    theirs = np.stack([tail.ids[t0:t1], ts[t0:t1], tail.ends[t0:t1]], axis=1)
    if not len(mine) and not len(theirs):
        crossing = bool(np.any((hs < low) & (head.ends > low))) or bool(
            np.any((ts < low) & (tail.ends > low))
        )
        if crossing:
            return None
        h, t = int(h1), int(t1)
    else:
        common = _common_suffix(mine, theirs)
        if common == 0:
            return None
        h, t = int(h1) - common, int(t1) - common
    return _slice(head, 0, h), _slice(tail, t, len(tail.ids))


def _common_suffix(a: np.ndarray, b: np.ndarray) -> int:
    """How many rows at the end of ``a`` and ``b`` are equal."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = np.all(a[len(a) - n :] == b[len(b) - n :], axis=1)[::-1]
    return n if same.all() else int(np.argmin(same))


def _slice(tokens: Tokens, start: int, end: int) -> Tokens:
    def part(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[start:end]

    return Tokens(tokens.ids[start:end], part(tokens.starts), part(tokens.ends))


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    """The windows of many texts, flat and in order: text by text, first window first.

    Attributes:
        owner: int64 index of the text of each window.
        first: int64 index of its first token in the text's tokens (special tokens not counted).
        last: int64 index one past its last token.
    """

    owner: np.ndarray
    first: np.ndarray
    last: np.ndarray

    def __len__(self) -> int:
        return len(self.owner)

    def counts(self, texts: int) -> np.ndarray:
        """Windows of each of the ``texts`` texts (every text has at least one)."""
        return np.bincount(self.owner, minlength=texts)


def cut(lengths: np.ndarray, room: int, stride: int) -> Windows:
    """Cut texts of ``lengths`` tokens into windows of at most ``room`` tokens sharing ``stride``.

    A text of at most ``room`` tokens (an empty one too) is one window; a longer one has windows
    starting every ``room - stride`` tokens until one reaches its end, as the ``tokenizers``
    library's truncation with a stride cuts.

    Example:
        >>> w = cut(np.array([3, 10]), room=4, stride=1)
        >>> w.owner.tolist(), w.first.tolist(), w.last.tolist()
        ([0, 1, 1, 1], [0, 0, 3, 6], [3, 4, 7, 10])
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        empty = np.zeros(0, dtype=np.int64)
        return Windows(empty, empty, empty)
    step = room - stride
    counts = np.where(lengths <= room, 1, 1 + -(-(lengths - room) // step))
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    starts_of_text = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    index = np.arange(len(owner), dtype=np.int64) - np.repeat(starts_of_text, counts)
    first = index * step
    last = np.minimum(first + room, lengths[owner])
    return Windows(owner, first, last)


Run = Callable[[np.ndarray, Callable[[int], np.ndarray], np.ndarray], None]
"""``run(lengths, tokens_of, out)``: encode rows of ``lengths`` tokens into ``out`` (the encoder's)."""


class Windower:
    """Cuts texts into windows and has them encoded: a tokenizer without truncation and its template."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.template = special_template(self.tokenizer)

    def encode(
        self, texts: Sequence[str], *, window: int, stride: int, offsets: bool, dim: int, run: Run
    ) -> EncodedWindows:
        """Every window of ``texts``, encoded by ``run`` (all texts' windows in one call).

        Args:
            texts: The texts.
            window: Tokens per window, special tokens included.
            stride: Tokens consecutive windows share.
            offsets: Whether to find each window's character offsets.
            dim: Length of each vector.
            run: Encodes token rows (see :data:`Run`).
        """
        tokens = tokenize(self.tokenizer, texts, offsets=offsets)
        lengths = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(tokens))
        windows = cut(lengths, window - self.template.specials, stride)
        sizes = windows.last - windows.first + self.template.specials
        prefix, suffix = self.template.prefix, self.template.suffix

        def tokens_of(row: int) -> np.ndarray:
            ids = tokens[windows.owner[row]].ids[windows.first[row] : windows.last[row]]
            return np.concatenate((prefix, ids, suffix))

        vectors = np.empty((len(windows), dim), dtype=np.float32)
        run(sizes, tokens_of, vectors)
        starts = ends = None
        if offsets:
            starts, ends = _char_offsets(tokens, windows)
        return EncodedWindows(windows.owner, sizes.astype(np.int32), vectors, starts, ends)


def _char_offsets(tokens: list[Tokens], windows: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Each window's ``[start, end)`` in its text's characters (0, 0 for a window of no tokens)."""
    lengths = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(tokens))
    base = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    empty = np.zeros(0, dtype=np.int32)
    all_starts = np.concatenate([empty, *(t.starts for t in tokens if t.starts is not None)])
    all_ends = np.concatenate([empty, *(t.ends for t in tokens if t.ends is not None)])
    some = windows.last > windows.first
    starts = np.zeros(len(windows), dtype=np.int64)
    ends = np.zeros(len(windows), dtype=np.int64)
    at = base[windows.owner[some]]
    starts[some] = all_starts[at + windows.first[some]]
    ends[some] = np.maximum(all_ends[at + windows.last[some] - 1], starts[some])
    return starts.astype(np.int32), ends.astype(np.int32)


@dataclass(frozen=True)
class EncodedWindows:
    """The encoded windows of some texts, text by text.

    Attributes:
        owner: int64 index of the text of each window (each text has at least one).
        tokens: int32 tokens of each window, special tokens included.
        vectors: (windows, dim) float32.
        starts: int32 character offset where each window starts in its text, or None.
        ends: int32 character offset where it ends, or None.
    """

    owner: np.ndarray
    tokens: np.ndarray
    vectors: np.ndarray
    starts: np.ndarray | None
    ends: np.ndarray | None

    @classmethod
    def concat(cls, parts: Sequence[EncodedWindows], dim: int) -> EncodedWindows:
        """Parts of consecutive texts as one, their text numbers running on."""
        shift = 0
        owners = []
        for part in parts:
            owners.append(part.owner + shift)
            shift += int(part.owner[-1]) + 1 if len(part.owner) else 0
        empty = np.zeros(0, dtype=np.int32)
        return cls(
            np.concatenate([np.zeros(0, dtype=np.int64), *owners]),
            np.concatenate([empty, *(p.tokens for p in parts)]),
            np.concatenate([np.zeros((0, dim), dtype=np.float32), *(p.vectors for p in parts)]),
            np.concatenate([empty, *(p.starts for p in parts if p.starts is not None)]),
            np.concatenate([empty, *(p.ends for p in parts if p.ends is not None)]),
        )

    def means(self, texts: int, *, normalize: bool) -> np.ndarray:
        """Each text's vector: its windows' vectors averaged by their tokens (:func:`mean_of_windows`)."""
        return mean_of_windows(self.vectors, self.owner, self.tokens, texts, normalize=normalize)


def mean_of_windows(
    vectors: np.ndarray, owner: np.ndarray, weights: np.ndarray, texts: int, *, normalize: bool
) -> np.ndarray:
    """Each text's window vectors averaged, weighted by ``weights``; then unit length if ``normalize``.

    A text of one window gets that window's vector unchanged (bit for bit).

    Args:
        vectors: (windows, dim) float32.
        owner: The text of each window; each text has one or more, consecutive.
        weights: One weight per window (its tokens).
        texts: How many texts.
        normalize: Scale each averaged vector to unit length.

    Returns:
        (texts, dim) float32.
    """
    if texts == 0:
        return np.zeros((0, vectors.shape[1]), dtype=np.float32)
    counts = np.bincount(owner, minlength=texts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out = vectors[starts].copy()
    many = np.flatnonzero(counts > 1)
    if len(many):
        weighted = vectors.astype(np.float64) * np.asarray(weights, dtype=np.float64)[:, None]
        sums = np.add.reduceat(weighted, starts, axis=0)[many]
        means = sums / np.add.reduceat(np.asarray(weights, dtype=np.float64), starts)[many, None]
        if normalize:
            norms = np.linalg.norm(means, axis=1, keepdims=True)
            means = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
        out[many] = means.astype(np.float32)
    return out
