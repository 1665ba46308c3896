"""Rows of tokens -> length-sorted, padded batches under a token budget -> the model, rows back in place.

The one way token rows reach the model: short texts, truncated texts and the windows of long
texts alike, so windows of many texts share batches exactly as short texts do. Torch-free: the
forward pass is handed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from polyemb.errors import InvalidInputError

__all__ = [
    "MAX_ROWS",
    "PAD_MULTIPLE",
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
# Padded lengths rounded up to a multiple of this, per (device type, precision): a stream of
# texts then meets a few dozen batch shapes instead of one per length, and each new shape costs
# oneDNN a primitive to build and keep (its cache holds up to 1,024), so memory creeps up over a
# long stream. all-MiniLM-L6-v2 on texts of two STS sentences, Intel Xeon with AMX, 2 CPUs
# (docs/performance.md): bf16 589 -> 652 texts/s and a peak of 1,278 -> 835 MiB with 16 (20,000
# texts); fp32 244 -> 229 texts/s and a peak of 1,179 -> 1,027 MiB with 8 (30,000 texts in calls
# of 10,000; memory after each call rose 55 MiB unpadded, 10 padded). int8 stays at 1: 296 -> 247
# texts/s with 16, more than its shapes cost.
PAD_MULTIPLE = {("cpu", "bf16"): 16, ("cpu", "fp32"): 8}


def check_batch_size(batch_size: Any) -> None:
    """Refuse a ``batch_size`` that is neither None nor a positive int."""
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise InvalidInputError(f"batch_size must be a positive int or None, got {batch_size!r}")


def pad_multiple(device_type: str, precision: str) -> int:
    """The multiple that padded lengths are rounded up to on this device at this precision."""
    return PAD_MULTIPLE.get((device_type, precision), 1)


def padded_lengths(sorted_lengths: np.ndarray, multiple: int, limit: int | None) -> np.ndarray:
    """Each length rounded up to ``multiple``, never past ``limit`` (nor below the length itself).

    Keeps the order of lengths sorted in decreasing order, as :func:`plan_batches` needs.
    """
    if multiple <= 1:
        return sorted_lengths
    rounded: np.ndarray = -(-sorted_lengths // multiple) * multiple
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
    multiple: int = 1,
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
        multiple: Pad each batch to a multiple of this many tokens (:data:`PAD_MULTIPLE`); above
            1, the last (short) batch also goes in parts of 2^j rows, so that a stream of calls
            brings no new shape with each call.
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
    if multiple > 1:
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
