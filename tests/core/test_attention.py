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
def test_short_sequences_match_sdpa(dtype: torch.dtype, tolerance: float) -> None:
    q, k, v, mask = _inputs(6, 13, dtype)
    ours, _ = attention.attention(_Module(), q, k, v, mask, scaling=8**-0.5)
    theirs, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=8**-0.5)
    assert ours.shape == theirs.shape == (6, 13, 4, 8)
    assert ours.dtype == dtype
    assert (ours.float() - theirs.float()).abs().max() < tolerance
    unmasked, _ = attention.attention(_Module(), q, k, v, None, scaling=8**-0.5)
    assert (unmasked[0].float() - ours[0].float()).abs().max() < tolerance  # row 0 has no padding


def test_fp32_long_sequences_and_causal_modules_go_to_sdpa() -> None:
    q, k, v, mask = _inputs(2, attention.SHORT + 1, torch.bfloat16)
    ours, _ = attention.attention(_Module(), q, k, v, mask)
    assert torch.equal(ours, sdpa_attention_forward(_Module(), q, k, v, mask)[0])
    q, k, v, mask = _inputs(3, 7, torch.float32)
    ours, _ = attention.attention(_Module(), q, k, v, mask)
    assert torch.equal(ours, sdpa_attention_forward(_Module(), q, k, v, mask)[0])
    causal = _Module()
    causal.is_causal = True
    q, k, v, _ = _inputs(2, 5, torch.bfloat16)
    assert torch.equal(
        attention.attention(causal, q, k, v, None)[0], sdpa_attention_forward(causal, q, k, v, None)[0]
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.usefixtures("no_amx")
def test_the_encoder_uses_it_on_the_cpu_with_sdpas_vectors(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    texts = ["one", "two words here", "a somewhat longer text of several words", "x " * 20]
    encoder = polyemb.load(tiny_model_dir, precision=precision)  # type: ignore[arg-type]
    assert encoder._model.config._attn_implementation == attention.NAME
    vectors = encoder.encode(texts)  # one padded batch: the mask must reach the attention
    alone = np.vstack([encoder.encode([text]) for text in texts])
    monkeypatch.setattr(attention, "register", lambda: "sdpa")
    sdpa = polyemb.load(tiny_model_dir, precision=precision)  # type: ignore[arg-type]
    assert sdpa._model.config._attn_implementation == "sdpa"
    if precision == "fp32":  # SDPA's own path, through this module's registration
        assert np.abs(vectors - alone).max() < 1e-5
        assert np.abs(sdpa.encode(texts) - vectors).max() < 1e-6
    else:  # bf16 rounding (the bf16 contract of test_loading: row cosine above 0.97 here)
        assert (vectors * alone).sum(axis=1).min() > 0.999
        assert (sdpa.encode(texts) * vectors).sum(axis=1).min() > 0.999


@pytest.mark.usefixtures("no_amx")
def test_a_model_that_refuses_it_loads_with_sdpa(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention, "register", lambda: "polyemb_not_registered")
    encoder = polyemb.load(tiny_model_dir)
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


def test_only_cpus_without_amx_load_with_it(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    amx = frozenset({"avx512f", "amx_bf16", "amx_tile"})
    assert not attention.pays_off(torch.device("cpu"), amx)
    assert attention.pays_off(torch.device("cpu"), frozenset({"avx512f"}))
    assert not attention.pays_off(torch.device("cuda"), frozenset({"avx512f"}))
    monkeypatch.setattr(attention, "cpu_flags", lambda: amx)
    encoder = polyemb.load(tiny_model_dir, precision="bf16")
    assert encoder._model.config._attn_implementation == "sdpa"
