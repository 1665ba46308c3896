"""Short sequences' attention on the CPU (polyemb.attention) against transformers' SDPA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import polyemb
from polyemb import attention


class _Module(torch.nn.Module):
    is_causal = False


@pytest.fixture
def no_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without AMX, where models load with this attention, whatever CPU runs the tests."""
    monkeypatch.setattr(attention, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def _inputs(rows: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(rows, 4, length, 8, generator=generator).to(dtype) for _ in range(3))
    valid = (
        torch.arange(length)[None, :] < torch.randint(1, length + 1, (rows,), generator=generator)[:, None]
    )
    valid[0] = True  # one row unpadded
    return q, k, v, valid[:, None, None, :].expand(rows, 1, length, length)


# The scores are rounded to the half precision before the softmax, so outputs (about unit scale)
# move by up to a few of its steps from SDPA's.
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("mask_kind", ["bool", "bool-per-key", "additive", "additive-finite"])
def test_short_sequences_match_sdpa(dtype: torch.dtype, tolerance: float, mask_kind: str) -> None:
    q, k, v, valid = _inputs(6, 13, dtype)
    biases = torch.randn(valid.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    mask = {
        "bool": valid,
        "bool-per-key": valid[:, :, :1, :],  # one row of keys for every query
        "additive": torch.zeros(valid.shape, dtype=dtype).masked_fill_(~valid, float("-inf")),
        "additive-finite": biases.masked_fill_(~valid, float("-inf")),  # added to the scaled scores
    }[mask_kind]
    ours, _ = attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5)
    theirs, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=8**-0.5)
    assert ours.shape == theirs.shape == (6, 13, 4, 8)
    assert ours.dtype == dtype
    assert (ours.float() - theirs.float()).abs().max() < tolerance
    if mask_kind != "additive-finite":
        unmasked, _ = attention.attention(_Module(), q, k, v, None, scaling=8**-0.5)
        assert (unmasked[0].float() - ours[0].float()).abs().max() < tolerance  # row 0 has no padding
    # What transformers 5 passes every BERT-like self-attention: arguments set to None are absent.
    unused = {"position_ids": None, "encoder_hidden_states": None, "sliding_window": None}
    assert torch.equal(attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5, **unused)[0], ours)


def test_a_masked_key_whose_fp16_score_overflows_gets_no_weight() -> None:
    """fp16 scores reach inf past 65,504: a masked key's score is set to -inf, not -inf + inf (NaN)."""
    q, k, v, mask = _inputs(6, 13, torch.float16)
    padded = int((~mask[:, 0, 0, :]).nonzero()[0, 0]), int((~mask[:, 0, 0, :]).nonzero()[0, 1])
    q = q.abs() + 1
    k[padded[0], :, padded[1], :] = 60000.0  # its scores overflow; it is padding
    ours, _ = attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5)
    theirs, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=8**-0.5)
    assert torch.isfinite(ours).all()
    assert (ours.float() - theirs.float()).abs().max() < 1e-2


def test_a_mask_that_does_not_fit_the_scores_raises() -> None:
    q, k, v, mask = _inputs(2, 13, torch.bfloat16)
    for wrong in (torch.cat([mask, mask]), mask[None]):  # more rows; one dimension more
        with pytest.raises(RuntimeError):
            attention.attention(_Module(), q, k, v, wrong, scaling=8**-0.5)


class _Bare(torch.nn.Module):
    """A module without an ``is_causal`` flag: SDPA takes it as causal, so must we."""


@pytest.mark.parametrize(
    ("module", "length", "dtype", "extra"),
    [
        (_Module(), attention.SHORT + 1, torch.bfloat16, {}),  # long
        (_Module(), 7, torch.float32, {}),  # fp32
        (_Module(), 7, torch.bfloat16, {"is_causal": True}),  # causal by argument
        (_Bare(), 7, torch.bfloat16, {}),  # causal by default
        (_Module(), 7, torch.bfloat16, {"sliding_window": 4}),  # an argument it does not handle
        (_Module(), 7, torch.bfloat16, {"head_mask": torch.ones(4)}),  # a head mask it would ignore
    ],
    ids=["long", "fp32", "causal-argument", "causal-default", "other-argument", "head-mask"],
)
def test_everything_but_short_plain_half_attention_goes_to_sdpa(
    module: torch.nn.Module, length: int, dtype: torch.dtype, extra: dict[str, object]
) -> None:
    q, k, v, _ = _inputs(3, length, dtype)
    ours, _ = attention.attention(module, q, k, v, None, **extra)
    assert torch.equal(ours, sdpa_attention_forward(module, q, k, v, None, **extra)[0])


def _count_sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Calls of transformers' SDPA attention, through the registry or from polyemb's fallback."""
    from transformers import AttentionInterface
    from transformers.integrations import sdpa_attention

    calls: list[None] = []

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, None]:
        calls.append(None)
        return sdpa_attention_forward(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", counted)
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", counted)
    return calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.usefixtures("no_amx")
def test_the_encoder_uses_it_on_the_cpu_with_sdpas_vectors(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    texts = ["one", "two words here", "a somewhat longer text of several words", "x " * 20]
    encoder = polyemb.load(tiny_model_dir, precision=precision)  # type: ignore[arg-type]
    expected = attention.NAME if precision == "bf16" else "sdpa"  # fp32 gained nothing: SDPA
    assert encoder._model.config._attn_implementation == expected
    sdpa_calls = _count_sdpa_calls(monkeypatch)
    vectors = encoder.encode(texts)  # one padded batch: the mask must reach the attention
    # bf16 runs the products (no SDPA call at all: every text is short); fp32 runs SDPA itself.
    assert (len(sdpa_calls) == 0) == (precision == "bf16")
    alone = np.vstack([encoder.encode([text]) for text in texts])
    monkeypatch.setattr(attention, "register", lambda: "sdpa")
    sdpa = polyemb.load(tiny_model_dir, precision=precision)  # type: ignore[arg-type]
    assert sdpa._model.config._attn_implementation == "sdpa"
    if precision == "fp32":  # the same SDPA both times
        assert np.abs(vectors - alone).max() < 1e-5
        assert np.abs(sdpa.encode(texts) - vectors).max() < 1e-6
    else:  # bf16 rounding (the bf16 contract of test_loading: row cosine above 0.97 here)
        assert (vectors * alone).sum(axis=1).min() > 0.999
        assert (sdpa.encode(texts) * vectors).sum(axis=1).min() > 0.999


@pytest.mark.usefixtures("no_amx")
def test_a_name_transformers_refuses_falls_back_to_sdpa(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention, "register", lambda: "polyemb_not_registered")
    encoder = polyemb.load(tiny_model_dir, precision="bf16")
    assert encoder._model.config._attn_implementation == "sdpa"
    assert encoder.encode(["still encodes"]).shape == (1, encoder.dim)


@pytest.mark.usefixtures("no_amx")
def test_padded_batches_reach_it_with_their_mask(tiny_model_dir: Path) -> None:
    """transformers gives a registered attention no mask unless a mask function is registered too."""
    from transformers import AttentionInterface

    seen: list[torch.Tensor | None] = []

    def spy(
        module: torch.nn.Module, *args: torch.Tensor | None, **kwargs: object
    ) -> tuple[torch.Tensor, None]:
        seen.append(args[3])
        return attention.attention(module, *args, **kwargs)  # type: ignore[arg-type]

    encoder = polyemb.load(tiny_model_dir, precision="bf16")
    AttentionInterface.register(attention.NAME, spy)
    try:
        encoder.encode(["one", "a somewhat longer text of several words"], batch_size=2)
    finally:
        AttentionInterface.register(attention.NAME, attention.attention)
    masks = [mask for mask in seen if mask is not None]
    assert seen and len(masks) == len(seen)  # every layer got the padding mask
    assert masks[0].dtype == torch.bool and not bool(masks[0].all())


def test_where_it_pays_off(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    zen = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})
    amx = zen | {"amx_bf16", "amx_tile"}
    assert attention.pays_off(cpu, bf16, zen) and attention.pays_off(cpu, torch.float16, zen)
    assert attention.pays_off(cpu, bf16, amx)  # below 16 keys only: see the next test
    assert not attention.pays_off(cpu, torch.float32, zen)  # fp32 gained nothing
    assert not attention.pays_off(cpu, bf16, frozenset({"avx2"}))  # not measured
    assert not attention.pays_off(torch.device("cuda"), bf16, zen)
    monkeypatch.setattr(attention, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    encoder = polyemb.load(tiny_model_dir, precision="bf16")
    assert encoder._model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_with_amx_only_sequences_below_16_keys_take_the_products(
    monkeypatch: pytest.MonkeyPatch, amx: bool
) -> None:
    flags = {"avx512f", "avx512_bf16"} | ({"amx_bf16", "amx_tile"} if amx else set())
    monkeypatch.setattr(attention, "cpu_flags", lambda: frozenset(flags))
    calls = _count_sdpa_calls(monkeypatch)
    limit = attention.SHORT_WITH_AMX if amx else attention.SHORT
    assert limit == (15 if amx else 64)
    for length, to_sdpa in [(7, False), (limit, False), (limit + 1, True)]:
        q, k, v, mask = _inputs(3, length, torch.bfloat16)
        before = len(calls)
        ours, _ = attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5)
        assert (len(calls) > before) == to_sdpa, length
        theirs, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=8**-0.5)
        assert (ours.float() - theirs.float()).abs().max() < 5e-2


def test_only_classes_that_use_the_registry_take_it() -> None:
    from transformers import MPNetConfig, XLMRobertaConfig

    from polyemb.loading import _takes_registered_attention

    assert _takes_registered_attention(XLMRobertaConfig())
    assert not _takes_registered_attention(MPNetConfig())  # MPNet runs its own attention code


@pytest.mark.parametrize("length", [1, 7, attention._VECTOR_SOFTMAX - 1, attention._VECTOR_SOFTMAX, 40])
def test_the_softmax_is_torchs_on_short_and_long_rows(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    scores = torch.randn(5, 3, length, length, generator=generator) * 8
    scores[:, :, :, length // 2 + 1 :] = float("-inf")  # masked keys, as padding leaves them
    expected = torch.softmax(scores, dim=-1)
    got = attention._softmax_(scores.clone())
    assert (got - expected).abs().max() < 1e-6
    assert torch.allclose(got.sum(dim=-1), torch.ones(5, 3, length))


def _keys_seen_by_sdpa(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The key length of each call of transformers' SDPA attention."""
    from transformers.integrations import sdpa_attention

    lengths: list[int] = []

    def spy(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *args: object, **kwargs: object):
        lengths.append(key.shape[2])
        return sdpa_attention_forward(module, query, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    return lengths


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none", "one-for-every-key"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_with_amx_keys_reach_sdpa_in_whole_blocks_with_the_same_attention(
    monkeypatch: pytest.MonkeyPatch, mask_kind: str, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(attention, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    seen = _keys_seen_by_sdpa(monkeypatch)
    block = attention.KEY_BLOCK_WITH_AMX
    for length, padded in [(block + 7, 2 * block), (2 * block + 1, 2 * block + 1), (3 * block, 3 * block)]:
        q, k, v, valid = _inputs(3, length, dtype)
        mask = {
            "bool": valid,
            "float": torch.zeros(valid.shape, dtype=dtype).masked_fill_(~valid, float("-inf")),
            "none": None,
            "one-for-every-key": valid[..., :1],  # (rows, 1, length, 1): SDPA broadcasts it
        }[mask_kind]
        ours, _ = attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5)
        assert seen[-1] == padded, length  # 7 keys past a block: padded; 1 or 0: as they are
        theirs, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=8**-0.5)
        assert ours.shape == theirs.shape == (3, length, 4, 8)
        # The same attention in another summation order: a few steps of the half precision.
        assert (ours.float() - theirs.float()).abs().max() < 2e-2


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        ({"avx512_bf16"}, torch.bfloat16),  # no AMX
        ({"avx512_bf16", "amx_bf16", "amx_tile"}, torch.float32),  # fp32 does not take AMX's blocks
    ],
    ids=["no-amx", "fp32"],
)
def test_keys_are_padded_only_for_half_precisions_with_amx(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], dtype: torch.dtype
) -> None:
    monkeypatch.setattr(attention, "cpu_flags", lambda: frozenset(flags))
    seen = _keys_seen_by_sdpa(monkeypatch)
    length = attention.SHORT + 7
    q, k, v, mask = _inputs(2, length, dtype)
    attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5)
    assert seen == [length]
