"""Rows of tokens -> length-sorted, padded batches under a token budget -> the model, rows back in place.

The one way token rows reach the model: short texts, truncated texts and the windows of long
texts alike, so windows of many texts share batches exactly as short texts do. Torch-free: the
forward pass is handed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from polyemb._platform import has_amx
from polyemb.errors import InvalidInputError
from polyemb.options import is_int

__all__ = [
    "AMX_MULTIPLE",
    "MAX_ROWS",
    "PADDED",
    "TOKEN_BUDGET",
    "check_batch_size",
    "pad_multiple",
    "padded_lengths",
    "plan_batches",
    "power_of_two_parts",
    "run_batches",
]

# Default work per forward pass when the caller sets no batch_size: a token budget (rows x
# padded length) and a row cap, per device type.
TOKEN_BUDGET = {"cpu": 2_048, "cuda": 65_536, "mps": 16_384}
MAX_ROWS = {"cpu": 128, "cuda": 1_024, "mps": 256}
# Batch lengths are padded on the CPU at these precisions, so that a stream of texts meets a
# few dozen batch shapes instead of one per length: each new shape costs oneDNN a primitive to
# build and keep (its cache holds up to 1,024), and memory creeps up over a long stream. A length
# L goes up to a multiple of P / 8, P the largest power of two <= L (so by at most an eighth of
# it: 40 lengths up to 128); fp32 on CPUs with AMX goes up to a multiple of 8 instead
# (AMX_MULTIPLE). all-MiniLM-L6-v2, 2 CPUs (docs/performance.md has the tables):
# - AMD EPYC Zen 5 (AVX-512, no AMX): multiples of 16 and 8 cost bf16 1.3x and fp32 1.4x their
#   speed on short English sentences (the padding is up to as many tokens as the text); eighths
#   cost bf16 4% and fp32 nothing there, and hold the peak near the multiples' on long texts.
# - Intel Xeon with AMX: fp32 244 -> 229 texts/s and a peak of 1,179 -> 1,027 MiB with 8 (30,000
#   texts of two STS sentences in calls of 10,000). bf16 took multiples of 16 there (589 -> 652
#   texts/s and a peak of 1,278 -> 835 MiB, unpadded -> 16, 20,000 such texts) while SDPA ran
#   every length; since sequences below 16 keys take polyemb.attention's products there,
#   eighths ran 1.17x faster than 16 on STS English sentences and 1.05x on 11 languages' (1,500
#   each, medians of 6 in one process), as fast on 20,000 texts of two sentences (723 and 762
#   against 751 and 755 texts/s), at a peak of 884 against 786 MiB.
# int8 is not padded: 296 -> 247 texts/s with 16 on the Intel CPU (fbgemm's kernels); with
# oneDNN's on an AMD EPYC Zen 4, eighths against none gave 932 against 1,033 English texts/s and
# 495 against 475 on 11 languages (medians of 5): mixed, so unpadded as before; on the Intel CPU
# with oneDNN's, 8 and 16 against none: 2,040 and 1,968 against 1,982 on English, 1,185 and
# 1,137 against 1,209 on 11 languages.
PADDED = frozenset({("cpu", "bf16"), ("cpu", "fp32")})
AMX_MULTIPLE = {"fp32": 8}


def check_batch_size(batch_size: Any) -> int | None:
    """``batch_size`` as an int, or None; refuse what is neither None nor a positive whole number."""
    if batch_size is None:
        return None
    if not is_int(batch_size) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return int(batch_size)


def pad_multiple(device_type: str, precision: str, flags: frozenset[str] | None = None) -> int | None:
    """How batch lengths are padded here (:data:`PADDED`), as :func:`padded_lengths` takes it.

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ...
        precision: The encoder's precision.
        flags: The CPU's feature flags (:func:`polyemb._platform.cpu_flags` when None).

    Returns:
        None (not padded), the precision's multiple where it has one on CPUs with AMX, else 1
        (eighths).
    """
    if (device_type, precision) not in PADDED:
        return None
    return AMX_MULTIPLE.get(precision, 1) if has_amx(flags) else 1


def padded_lengths(sorted_lengths: np.ndarray, multiple: int | None, limit: int | None) -> np.ndarray:
    """Lengths rounded up for padding, never past ``limit`` nor below themselves.

    ``multiple`` None: the lengths as they are; above 1: each rounded up to a multiple of it; 1: a
    length L up to a multiple of P // 8, P the largest power of two <= L (by at most an eighth).
    Keeps the order of lengths sorted in decreasing order, as :func:`plan_batches` needs.
    """
    if multiple is None:
        return sorted_lengths
    if multiple > 1:
        step: np.ndarray | int = multiple
    else:
        powers = np.floor(np.log2(np.maximum(sorted_lengths, 1))).astype(np.int64)
        step = np.left_shift(1, np.maximum(0, powers - 3))
    rounded: np.ndarray = -(-sorted_lengths // step) * step
    if limit is None:
        return rounded
    capped: np.ndarray = np.maximum(np.minimum(rounded, limit), sorted_lengths)
    return capped


def power_of_two_parts(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into runs of 2^j rows, largest first (37 rows: 32, 4, 1)."""
    parts = []
    while start < end:
        size = 1 << ((end - start).bit_length() - 1)
        parts.append((start, start + size))
        start += size
    return parts


def plan_batches(lengths: np.ndarray, *, max_tokens: int, max_rows: int) -> list[tuple[int, int]]:
    """Split rows sorted by decreasing length into ``[start, end)`` batches.

    Each batch holds at most ``max_rows`` rows and at most ``max_tokens`` tokens once padded to
    its first (longest) row, and always at least one row.
    """
    batches: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        rows = max(1, min(max_rows, max_tokens // max(1, int(lengths[start]))))
        end = min(n, start + rows)
        batches.append((start, end))
        start = end
    return batches


def run_batches(
    lengths: np.ndarray,
    tokens_of: Callable[[int], Sequence[int] | np.ndarray],
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray],
    out: np.ndarray,
    *,
    pad_id: int,
    device_type: str,
    batch_size: int | None,
    multiple: int | None = None,
    limit: int | None = None,
) -> Iterator[int]:
    """Run every row through ``forward`` in length-sorted batches, writing row ``i`` to ``out[i]``.

    Args:
        lengths: Tokens of each row.
        tokens_of: Row index -> its token ids (special tokens included).
        forward: ``(ids, mask)`` int64 matrices -> one float32 vector per row.
        out: Where the vectors go, one row per row of ``lengths``.
        pad_id: The padding token.
        device_type: ``"cpu"``, ``"cuda"``, ``"mps"``: picks the default token budget.
        batch_size: Rows per batch; None: by the device's token budget.
        multiple: Pad each batch's length as :func:`padded_lengths` does (:func:`pad_multiple`);
            the last (short) batch then also goes in parts of 2^j rows, so that a stream of calls
            brings no new shape with each call. None: each batch as long as its longest row.
        limit: ... but never past this many (the model's ``max_seq_length``), unless a row is longer.

    Yields:
        The rows done after each batch.
    """
    if not len(lengths):
        return
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = padded_lengths(lengths[order], multiple, limit)
    kind = device_type if device_type in TOKEN_BUDGET else "cuda"
    if batch_size is None:
        plan = plan_batches(sorted_lengths, max_tokens=TOKEN_BUDGET[kind], max_rows=MAX_ROWS[kind])
    else:
        plan = plan_batches(
            sorted_lengths, max_tokens=batch_size * int(sorted_lengths[0]), max_rows=batch_size
        )
    if multiple is not None:
        # Only the last batch can be short; its parts of 2^j rows keep the shapes few.
        plan = plan[:-1] + power_of_two_parts(*plan[-1])
    for start, end in plan:
        rows = order[start:end]
        width = int(sorted_lengths[start])
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            tokens = tokens_of(int(row))
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
        out[rows] = forward(ids, mask)
        yield len(rows)
