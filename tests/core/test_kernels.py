"""The CPU's Linear layers through oneDNN: same products as torch's within float rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import polyemb
from polyemb import kernels
from polyemb.testing import SAMPLE_SENTENCES

needs_onednn = pytest.mark.skipif(
    not kernels.supports(torch.float32),
    reason="this torch build has no working oneDNN linear operators (the fallback is tested below)",
)

# The dtypes oneDNN's products take here.
FLOAT_DTYPES = [
    torch.float32,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            not kernels.supports(torch.bfloat16),
            reason="oneDNN's bf16 products need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, which "
            "this CPU lacks: bf16 runs on torch's own path (tested below)",
        ),
    ),
]


def stock_encoder(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, precision: str = "fp32"
) -> polyemb.Encoder:
    """The encoder as torch alone would run it: every Linear an ``nn.Linear`` through torch's BLAS."""
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "use_onednn", lambda model, rows: 0)
        return polyemb.load(model_dir, device="cpu", precision=precision)  # type: ignore[arg-type]


class FeedForward(torch.nn.Module):
    """A transformers-style feed-forward block: ``dense`` then ``intermediate_act_fn``."""

    def __init__(self, activation: torch.nn.Module, *, residual: bool = False) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(16, 24)
        self.intermediate_act_fn = activation
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.intermediate_act_fn(self.dense(x))
        return out + x.sum() if self.residual else out


@needs_onednn
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_is_the_same_product(dtype: torch.dtype, activation: str, bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias).to(dtype)
    for shape in [(7, 64), (3, 5, 64), (1, 1, 64)]:
        x = torch.randn(shape).to(dtype)
        with torch.inference_mode():
            expected = linear(x).float()
            if activation == "gelu":
                expected = torch.nn.functional.gelu(expected)
            got = kernels.OneDnnLinear(linear, activation, rows=8)(x)  # type: ignore[arg-type]
        assert got.shape == expected.shape and got.dtype == dtype
        # Contract: the same sums in another order. float32: within 1e-5 of the output's scale;
        # bfloat16 (8 bits of mantissa, rounded once where torch rounds before the GELU too): 2e-2.
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        assert (got.float() - expected).abs().max() <= tolerance * expected.abs().max()


@needs_onednn
def test_the_loaded_model_runs_through_onednn_with_gelu_fused(
    tiny_encoder: polyemb.Encoder, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_encoder._model
    kinds = [type(module).__name__ for module in model.modules()]
    layers = model.config.num_hidden_layers
    assert "Linear" not in kinds
    # Per layer: query, key, value, the attention output, the fused feed-forward block and the
    # down-projection (no pooler: mean pooling never reads it).
    assert kinds.count("OneDnnLinear") == 6 * layers
    assert all(isinstance(layer.intermediate, kernels.OneDnnLinear) for layer in model.encoder.layer)
    # The vectors are torch's own within float32 rounding, the contract of every CPU path.
    stock = stock_encoder(tiny_model_dir, monkeypatch)
    assert "OneDnnLinear" not in [type(module).__name__ for module in stock._model.modules()]
    texts = SAMPLE_SENTENCES
    np.testing.assert_allclose(tiny_encoder.encode(texts), stock.encode(texts), atol=1e-6)


@pytest.mark.slow
@needs_onednn
def test_minilm_vectors_match_torch_alone(
    minilm_encoder: polyemb.Encoder,
    minilm_dir: Path,
    sts_sentences: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = sts_sentences[:300]
    stock = stock_encoder(minilm_dir, monkeypatch)
    np.testing.assert_allclose(minilm_encoder.encode(texts), stock.encode(texts), atol=1e-6)
    bf16 = polyemb.load(minilm_dir, precision="bf16")
    stock_bf16 = stock_encoder(minilm_dir, monkeypatch, "bf16")
    # bf16 has no exact answer: the fused GELU rounds once where torch rounds twice. Both stay as
    # close to fp32 as the bf16 gate asks (mean row cosine >= 0.99; measured 0.99995).
    reference = minilm_encoder.encode(texts)
    for encoder in (bf16, stock_bf16):
        assert (encoder.encode(texts) * reference).sum(axis=1).mean() > 0.9995


@needs_onednn
def test_only_an_exact_erf_gelu_block_is_fused() -> None:
    exact = FeedForward(torch.nn.GELU())
    tanh = FeedForward(torch.nn.GELU(approximate="tanh"))
    more = FeedForward(torch.nn.GELU(), residual=True)  # computes more than gelu(dense(x))
    model = torch.nn.ModuleDict({"exact": exact, "tanh": tanh, "more": more}).eval()
    x = torch.randn(2, 3, 16)
    with torch.inference_mode():
        expected = {name: block(x) for name, block in model.items()}
    assert kernels.use_onednn(model, rows=8) == 3
    assert isinstance(model["exact"], kernels.OneDnnLinear)
    # Not fusable: only their dense layer is replaced, their own forward still runs.
    for name in ("tanh", "more"):
        assert isinstance(model[name], FeedForward) and isinstance(model[name].dense, kernels.OneDnnLinear)
    with torch.inference_mode():
        for name, block in model.items():
            torch.testing.assert_close(block(x), expected[name], atol=1e-5, rtol=1e-5)


def test_a_model_is_left_as_it_was_where_onednn_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: kernels.OneDnnLinear, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(kernels.OneDnnLinear, "forward", broken)
    kernels.supports.cache_clear()
    try:
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), FeedForward(torch.nn.GELU()))
        assert kernels.use_onednn(model, rows=8) == 0
        assert isinstance(model[0], torch.nn.Linear) and isinstance(model[1].dense, torch.nn.Linear)
    finally:
        kernels.supports.cache_clear()


def test_float16_is_left_to_torch() -> None:
    # Left to torch on purpose: oneDNN's float16 products need AVX-512 FP16, which few CPUs have.
    assert not kernels.supports(torch.float16)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).half()
    assert kernels.use_onednn(model, rows=8) == 0


def test_probes_leave_torchs_random_state_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    first, second = kernels.probe_linear(6, 3), kernels.probe_linear(6, 3)
    assert torch.equal(torch.rand(4), expected)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)  # seeded


class AddNorm(torch.nn.Module):
    """A transformers-style output block: ``LayerNorm(dropout(dense(x)) + residual)``, or another order."""

    def __init__(self, *, norm_first: bool = False) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(16, 8)
        self.dropout = torch.nn.Dropout(0.1)
        self.LayerNorm = torch.nn.LayerNorm(8)
        self.norm_first = norm_first

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.dense(hidden_states))
        if self.norm_first:  # computes something else: LayerNorm(dense(x)) + residual
            return self.LayerNorm(out) + input_tensor
        return self.LayerNorm(out + input_tensor)


@needs_onednn
def test_only_a_block_computing_layernorm_of_product_plus_residual_adds_it_in_the_product() -> None:
    model = torch.nn.ModuleDict({"block": AddNorm(), "other": AddNorm(norm_first=True)}).eval()
    x, residual = torch.randn(2, 3, 16), torch.randn(2, 3, 8)
    with torch.inference_mode():
        expected = {name: block(x, residual) for name, block in model.items()}
    assert kernels.fuse_residuals(model) == 0  # torch's own Linear takes no residual
    kernels.use_onednn(model, rows=8)
    assert kernels.fuse_residuals(model) == 1
    assert isinstance(model["block"], kernels.DenseAddNorm)
    assert isinstance(model["other"], AddNorm)  # left as it was, its own forward runs
    with torch.inference_mode():
        for name, block in model.items():
            torch.testing.assert_close(block(x, residual), expected[name], atol=1e-5, rtol=1e-5)


@needs_onednn
def test_the_loaded_model_adds_its_residuals_in_the_products(tiny_encoder: polyemb.Encoder) -> None:
    for layer in tiny_encoder._model.encoder.layer:
        assert isinstance(layer.attention.output, kernels.DenseAddNorm)
        assert isinstance(layer.output, kernels.DenseAddNorm)
        # The names the blocks had: int8's calibration and the linked pairs look them up.
        assert isinstance(layer.output.dense, kernels.OneDnnLinear)


@needs_onednn
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_the_residual_is_added_in_the_product_or_after_it(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(dtype)
    layer = kernels.OneDnnLinear(linear, rows=8)
    assert layer.takes_residual
    x, residual = torch.randn(3, 5, 64).to(dtype), torch.randn(3, 5, 48).to(dtype)
    with torch.inference_mode():
        expected = linear(x).float() + residual.float()
        fused = layer(x, residual)
        # Another dtype than the product's: added after it, as a step of its own.
        mixed = layer(x, residual.double())
    assert fused.dtype == dtype and mixed.dtype == torch.float64
    # The contract of the product (above), the add rounded once with it in bf16.
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for got in (fused, mixed):
        assert (got.float() - expected).abs().max() <= tolerance * expected.abs().max()
    assert not kernels.OneDnnLinear(linear, "gelu", rows=8).takes_residual  # after the GELU: no
    # Where the probe finds the operator missing or wrong, blocks are not fused.
    monkeypatch.setattr(kernels, "_adds_residual", lambda dtype: False)
    assert not layer.takes_residual
    block = AddNorm().eval()
    kernels.use_onednn(block, rows=8)
    assert kernels.add_norm_parts(block) is None
