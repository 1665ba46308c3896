"""Attention over short sequences on the CPU: two batched products and a float32 softmax.

torch's fused CPU attention (SDPA's flash kernel) is built for long sequences. Sentences are
short: all-MiniLM-L6-v2 reads about 15 tokens per English STS sentence, where attention is about
2% of a layer's arithmetic but took 27% of bf16's time (AMD EPYC Zen 5, torch profiler). For
12 heads of 32 (MiniLM's), bf16, per call on that CPU: 136 rows of 15 tokens, flash 6.0 ms and
these products 3.8 ms; 64 rows of 32, 3.0 against 1.5; 37 rows of 55, 5.1 against 2.2; but
16 rows of 128, 6.1 against 11.9. So sequences of up to :data:`SHORT` keys go through the
products, longer ones (and causal ones, and every other device) through SDPA as before. End
to end, bf16, 1,500 sentences, best of 3 against SDPA in one process: 1.06x and 1.16x on
English, 1.03x on the 11 languages (docs/performance.md). On CPUs with AMX the flash kernel is
slow only below 16 keys (Intel Xeon, 2,048 tokens a call: 136 rows of 15, 4.12 ms against 1.61
for the products; 64 rows of 32, 1.01 against 2.40), so there the products take up to
:data:`SHORT_WITH_AMX` keys: int8 (unpadded) ran 1.15x faster on STS English (1,991 -> 2,295
texts/s), and bf16, padded by eighths since (multiples of 16 before), 1.17x (``batching``). Only
half precisions (bf16, fp16) take this path: fp32 gained nothing end to end (893 against 898
texts/s), so fp32 keeps SDPA and its vectors; int8 takes it where its non-int8 work is bf16
(``quantize.activation_dtype``) and :func:`pays_off` says so.

On CPUs with AMX, the sequences that go to SDPA get their keys padded to whole blocks of 16
(:func:`_keys_in_blocks`, masked out): the flash kernel takes the keys past the last block on a
slow path. In one process taking turns, 1,500 sentences, medians of 6 (Intel Xeon, 2 CPUs):
int8 1.04x on STS English and 1.07x on the 11 languages, bf16 1.04x and 1.05x.

The scores come from the weights' dtype; the softmax is float32 and its probabilities are cast
back for the product with the values (``tests/core/test_attention.py`` states the tolerance).

:func:`register` adds the function to transformers' attention registry under :data:`NAME`, with
SDPA's mask (a boolean mask, or none when no row is padded); ``load_transformer`` asks for it
where :func:`pays_off`, for model classes that run attention through that registry.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from polyemb._platform import cpu_flags, has_amx, has_bf16_units

__all__ = ["NAME", "SHORT", "SHORT_WITH_AMX", "attention", "pays_off", "register"]

NAME = "polyemb_short"
SHORT = 64
"""Keys per sequence up to which the products run; SDPA beyond."""
SHORT_WITH_AMX = 15
"""The same on CPUs with AMX, whose flash kernel is fast from 16 keys."""
KEY_BLOCK_WITH_AMX = 16
"""On CPUs with AMX, SDPA gets keys in whole blocks of this many (see :func:`_keys_in_blocks`)."""
# Keys past the last whole block from which padding them to a block pays (see _keys_in_blocks).
_PADDED_FROM = 5
# Keys from which torch's softmax is vectorised (see _softmax_).
_VECTOR_SOFTMAX = 16
# Arguments the products handle (by ignoring them: they change nothing for an encoder); any
# other given a value (softcap, sliding_window, position_bias, ...) sends the call to SDPA.
# Arguments passed as None are absent: transformers 5 passes position_ids=None and
# encoder_hidden_states=None to every BERT-like self-attention.
_PLAIN_ARGUMENTS = frozenset({"is_causal", "output_attentions"})


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention as transformers' interface calls it.

    ``(batch, heads, length, dim)`` in, ``(batch, length, heads, dim)`` out.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Causal as SDPA decides it: the argument, else the module's flag, else causal.
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    given = {name for name, argument in kwargs.items() if argument is not None}
    plain = not dropout and causal is False and given <= _PLAIN_ARGUMENTS
    amx = has_amx(cpu_flags())
    short = key.shape[2] <= (SHORT_WITH_AMX if amx else SHORT)
    ungrouped = query.shape[1] == key.shape[1]
    half = query.dtype in (torch.bfloat16, torch.float16)
    cpu = query.device.type == "cpu"
    if cpu and amx and plain and half and ungrouped and not short:
        key, value, attention_mask = _keys_in_blocks(key, value, attention_mask)
    if not (cpu and short and ungrouped and plain and half):
        fused: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return fused
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2))
    if attention_mask is None:
        scores = scores.float().mul_(scale)
    else:
        # Scaled, in float32, and the mask added, in one pass. For 73 rows of 28 tokens, 12 heads,
        # a bool mask per query as transformers gives it (Intel Xeon): conversion, scaling and
        # masked_fill_ 0.49 ms; the mask made additive, then this add, 0.18; the same scores
        # where they are finite (bf16's are: its range is float32's).
        # expand_as: a mask that does not fit the scores raises, as an add in place would.
        mask = attention_mask
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, float("-inf"))
        scores = torch.add(mask.float().expand_as(scores), scores, alpha=scale)
        if attention_mask.dtype == torch.bool and query.dtype == torch.float16:
            # fp16 scores can reach inf, and -inf + inf is NaN: a masked key's score is set.
            scores.masked_fill_(~attention_mask, float("-inf"))
    probabilities = _softmax_(scores).to(value.dtype)
    out: torch.Tensor = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
    return out, None


def _keys_in_blocks(
    key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys and values padded to whole blocks of :data:`KEY_BLOCK_WITH_AMX`, the padding masked out.

    On CPUs with AMX, SDPA's flash kernel takes the keys past the last whole block of 16 on a
    slow path: per call of about 2,048 tokens, 12 heads of 32, bf16 (Intel Xeon, 2 CPUs), 31 keys
    2.50 ms against 0.95 for 32, 63 keys 3.26 against 1.21 for 64. Padding the keys (not the
    queries) to the next block, copy included: 23 keys 1.99 -> 1.40 ms, 39 keys 2.38 -> 2.05,
    90 keys 2.66 -> 1.69, 127 keys 3.70 -> 1.83; with up to 4 keys past a block it cost up to
    1.35x (33 keys 1.50 -> 2.04), so those stay as they are. The output is the same
    attention: a masked key gets no weight.
    """
    length = key.shape[2]
    tail = length % KEY_BLOCK_WITH_AMX
    if tail < _PADDED_FROM:
        return key, value, mask
    padding = KEY_BLOCK_WITH_AMX - tail
    if mask is None:
        mask = torch.ones(1, 1, 1, length, dtype=torch.bool, device=key.device)
    elif mask.shape[-1] != length:
        if mask.shape[-1] != 1:
            return key, value, mask  # not a mask over these keys: SDPA says what is wrong with it
        mask = mask.expand(*mask.shape[:-1], length)  # one value for every key: spelt out first
    if mask.dtype == torch.bool:
        mask = torch.nn.functional.pad(mask, (0, padding), value=False)
    else:  # an additive float mask
        mask = torch.nn.functional.pad(mask, (0, padding), value=float("-inf"))
    pad = (0, 0, 0, padding)
    return torch.nn.functional.pad(key, pad), torch.nn.functional.pad(value, pad), mask


def _softmax_(scores: torch.Tensor) -> torch.Tensor:
    """The softmax over the last dimension, in place where that dimension is short.

    torch's CPU softmax takes a scalar path below :data:`_VECTOR_SOFTMAX` elements on the last
    dimension: for 136 rows of 15 tokens, 12 heads, it took 3.3 ms where the five vectorised
    passes below take 0.7 (AMD EPYC Zen 4, 2 threads; from 16 keys on torch's is faster, 0.33 ms
    for 128 rows of 16). English sentences are about 15 tokens.
    """
    if scores.shape[-1] >= _VECTOR_SOFTMAX:
        return torch.softmax(scores, dim=-1)
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    return scores.div_(scores.sum(dim=-1, keepdim=True))


def pays_off(device: torch.device, dtype: torch.dtype, flags: frozenset[str] | None = None) -> bool:
    """Whether to load a model with this attention: where it was measured to pay.

    That is bf16 or fp16 on an x86 CPU with bfloat16 units: AVX512-BF16 (AMD Zen 4 and 5), or
    AMX (Intel Sapphire Rapids and later), where only sequences below 16 keys take the products
    (:data:`SHORT_WITH_AMX`; SDPA's flash kernel measured faster from 16: 37 rows of 55 tokens,
    4.18 ms against 5.91 for the products). fp32 gained nothing; other CPUs were not measured.

    Args:
        device: Where the model runs.
        dtype: The model's weights' dtype.
        flags: The CPU's feature flags (:func:`polyemb._platform.cpu_flags` when None).

    Returns:
        True where ``load_transformer`` should ask for :data:`NAME`.
    """
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    return has_bf16_units(cpu_flags() if flags is None else flags)


@functools.cache
def register() -> str:
    """Register :func:`attention` and SDPA's mask under :data:`NAME` with transformers; returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
