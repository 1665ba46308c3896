"""The CPU's matrix products through oneDNN, with the feed-forward GELU fused into its product.

torch runs a float32 ``nn.Linear`` on the CPU through its BLAS, MKL in the PyPI builds, and MKL
takes a slower generic path on AMD CPUs. oneDNN, which the same torch builds ship, uses the
CPU's widest vector units on both vendors. Measured on an AMD EPYC Zen 5 (2 cores, the README's
precision section has the commands), for all-MiniLM-L6-v2's shapes: 210 GFLOP/s through MKL,
480 through oneDNN; 536 against 1,067 English sentences/s end to end in float32. bfloat16
products already go to oneDNN; there the gain is the fused GELU and weights packed once in
oneDNN's layout (1,210 against 1,515 sentences/s).

What changes: every ``nn.Linear`` becomes a :class:`OneDnnLinear` that holds only its packed
weight, and a feed-forward block that is exactly ``gelu(dense(x))`` (erf GELU, checked on the
numbers at load time) becomes one :class:`OneDnnLinear` with the GELU fused. Once the model is
ready, a block that computes ``LayerNorm(dense(x) + residual)`` (BERT's and XLM-R's attention
and feed-forward outputs) adds the residual in its product's last step (:func:`fuse_residuals`),
for oneDNN's float products and for int8's alike. The result is the
same product in a different summation order, equal to torch's within float rounding
(``test_kernels.py`` states the tolerance). When this torch lacks the oneDNN operators, or they
give a wrong answer on a probe, the model is left as it was.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch

__all__ = [
    "DenseAddNorm",
    "OneDnnLinear",
    "add_norm_parts",
    "fuse_residuals",
    "gelu_dense",
    "probe_linear",
    "replace_module",
    "supports",
    "use_onednn",
]

logger = logging.getLogger(__name__)

Activation = Literal["none", "gelu"]

# Rows per product a probe's weights are packed for (any value gives the same answer).
_PROBE_ROWS = 16
# How far a probe product may stray from torch's, relative to the output's scale.
_PROBE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


class OneDnnLinear(torch.nn.Module):
    """``activation(x @ weight.T + bias)`` by oneDNN, the weight packed once at construction.

    Takes and returns the linear layer's dtype, of any leading shape. The original layer is
    not kept: its weight lives on only in packed form.
    """

    def __init__(self, linear: torch.nn.Linear, activation: Activation = "none", *, rows: int) -> None:
        super().__init__()
        weight = linear.weight.detach()
        # oneDNN picks the packed layout for products of about this many rows.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self._bias = None if linear.bias is None else linear.bias.detach()
        self._activation = activation
        # "none" is erf GELU for the "gelu" post-op; the argument must be empty otherwise.
        self._algorithm = "none" if activation == "gelu" else ""
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._dtype = weight.dtype

    @property
    def takes_residual(self) -> bool:
        """Whether ``forward`` adds a residual in the product (no activation, and it probed right here)."""
        return self._activation == "none" and _adds_residual(self._dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The product, with the activation applied when one was fused; plus ``residual`` when given.

        ``residual`` (the output's shape and dtype) is added in the product's last step, where
        :attr:`takes_residual`; else after it.
        """
        if residual is not None and not (self.takes_residual and residual.dtype == x.dtype):
            return self._product(x) + residual
        return self._product(x, residual)

    def _product(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The product by oneDNN, ``residual`` added as its last step where given (unchecked: see forward)."""
        out: torch.Tensor
        if residual is None:
            out = torch.ops.mkldnn._linear_pointwise(
                x, self._packed, self._bias, self._activation, [], self._algorithm
            )
        else:
            out = torch.ops.mkldnn._linear_pointwise.binary(x, residual, self._packed, self._bias, "add")
        return out

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        features = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{features}, oneDNN, activation={self._activation}"


def replace_module(root: torch.nn.Module, name: str, replacement: torch.nn.Module) -> None:
    """Put ``replacement`` where ``root.get_submodule(name)`` was (``name`` non-empty, dotted)."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, replacement)


def probe_linear(in_features: int, out_features: int) -> torch.nn.Linear:
    """A float32 ``nn.Linear`` with seeded weights, for probes: torch's global random state is left alone."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the layer's own initialisation draws from it
        linear = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator) * in_features**-0.5)
        linear.bias.copy_(torch.randn(out_features, generator=generator) * 0.1)
    return linear


@functools.cache
def supports(dtype: torch.dtype) -> bool:
    """Whether this torch's oneDNN linear operators exist and agree with ``nn.Linear`` in ``dtype``."""
    onednn = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    if dtype not in _PROBE_TOLERANCE or not onednn:
        return False
    linear = probe_linear(48, 40).to(dtype)
    x = torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1)).to(dtype)
    try:
        with torch.inference_mode():
            for activation in ("none", "gelu"):
                expected = linear(x).float()
                if activation == "gelu":
                    expected = torch.nn.functional.gelu(expected)
                got = OneDnnLinear(linear, activation, rows=_PROBE_ROWS)(x).float()
                error = (got - expected).abs().max() / expected.abs().max()
                if not error <= _PROBE_TOLERANCE[dtype]:
                    logger.warning("oneDNN linear off by %.2g in %s on a probe: not used", error, dtype)
                    return False
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        # A torch without these operators (a build without oneDNN's x86 kernels, a release
        # that renamed them), or a CPU they refuse (bf16 on AVX2 alone, as on an AMD Zen 3:
        # "bf16 path needs ... avx512bw, avx512vl and avx512dq"), still encodes correctly on
        # torch's own path, only slower: a fact to log, not a reason to fail loading the model.
        logger.info("oneDNN linear not usable in %s (%s): torch's own path is used", dtype, exc)
        return False
    return True


@functools.cache
def _adds_residual(dtype: torch.dtype) -> bool:
    """Whether oneDNN's product with an added tensor exists here and agrees with a product then an add."""
    if not supports(dtype):
        return False
    linear = probe_linear(48, 40).to(dtype)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 48, generator=generator).to(dtype)
    residual = torch.randn(3, 5, 40, generator=generator).to(dtype)
    try:
        with torch.inference_mode():
            expected = (linear(x) + residual).float()
            got = OneDnnLinear(linear, rows=_PROBE_ROWS)._product(x, residual).float()
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        # As in supports(): a torch without this operator keeps the add as a step of its own.
        logger.info("oneDNN product with an added residual not usable in %s (%s)", dtype, exc)
        return False
    error = (got - expected).abs().max() / expected.abs().max()
    if not error <= _PROBE_TOLERANCE[dtype]:
        logger.warning("oneDNN product with an added residual off by %.2g in %s: not used", error, dtype)
        return False
    return True


class DenseAddNorm(torch.nn.Module):
    """``LayerNorm(dense(x) + residual)`` with the residual added in ``dense``'s product.

    Takes the place of a block that computes exactly that (:func:`add_norm_parts`), under the
    same names for its two parts (``dense``, ``LayerNorm``) and with the same call,
    ``(hidden_states, input_tensor)``. ``dense`` takes the residual (``takes_residual``).
    """

    def __init__(self, dense: torch.nn.Module, layer_norm: torch.nn.LayerNorm) -> None:
        super().__init__()
        self.dense = dense
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out: torch.Tensor = self.LayerNorm(self.dense(hidden_states, residual=input_tensor))
        return out


def add_norm_parts(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.LayerNorm] | None:
    """``(dense, LayerNorm)`` of a module computing exactly ``LayerNorm(dense(x) + residual)``, else None.

    Transformers' attention and feed-forward outputs (BERT, XLM-RoBERTa ``*SelfOutput`` and
    ``*Output``; their dropout does nothing in eval mode) have this shape. ``dense`` must take
    a residual (``takes_residual``). A probe confirms the module computes nothing else: its
    ``dense`` is swapped for a float layer for one call and the output compared exactly.
    """
    dense, layer_norm = getattr(module, "dense", None), getattr(module, "LayerNorm", None)
    if not isinstance(layer_norm, torch.nn.LayerNorm) or not getattr(dense, "takes_residual", False):
        return None
    assert dense is not None  # takes_residual is False on None
    dtype = layer_norm.weight.dtype if layer_norm.weight is not None else torch.float32
    probe = probe_linear(dense.in_features, dense.out_features).to(dtype)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, dense.in_features, generator=generator).to(dtype)
    residual = torch.randn(2, 3, dense.out_features, generator=generator).to(dtype)
    module.dense = probe
    try:
        with torch.inference_mode():
            same = torch.equal(module(x, residual), layer_norm(probe(x) + residual))
    except (RuntimeError, TypeError):
        same = False
    finally:
        module.dense = dense
    return (dense, layer_norm) if same else None


def fuse_residuals(model: torch.nn.Module) -> int:
    """Replace, in place, each block computing ``LayerNorm(dense(x) + residual)`` by :class:`DenseAddNorm`.

    For a model whose products are :class:`OneDnnLinear` or int8's, ready to run (int8's
    calibration reads its layers' outputs without the residual: fuse after it). Returns how
    many blocks now add their residual in the product.
    """
    fused = 0
    for name, module in list(model.named_modules()):
        parts = add_norm_parts(module) if name else None
        if parts is not None:
            replace_module(model, name, DenseAddNorm(*parts))
            fused += 1
    logger.info("%d blocks add their residual in the product", fused)
    return fused


def _is_erf_gelu(activation: object) -> bool:
    if not callable(activation):
        return False
    probe = torch.linspace(-6.0, 6.0, 97)
    try:
        with torch.inference_mode():
            got = activation(probe)
    except (RuntimeError, TypeError):
        return False
    return isinstance(got, torch.Tensor) and torch.allclose(got, torch.nn.functional.gelu(probe), atol=1e-6)


def gelu_dense(module: torch.nn.Module) -> torch.nn.Linear | None:
    """The ``dense`` layer of a module whose forward is exactly ``erf_gelu(dense(x))``, else None.

    Transformers' feed-forward blocks (BERT, XLM-RoBERTa, MPNet ``*Intermediate``) have this
    shape; a probe input confirms that the module computes nothing else.
    """
    dense = getattr(module, "dense", None)
    activation = getattr(module, "intermediate_act_fn", None)
    if not isinstance(dense, torch.nn.Linear) or not _is_erf_gelu(activation):
        return None
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, dense.in_features, generator=generator).to(dense.weight.dtype)
    try:
        with torch.inference_mode():
            same = torch.equal(module(probe), activation(dense(probe)))  # type: ignore[misc]
    except (RuntimeError, TypeError):
        return None
    return dense if same else None


def use_onednn(model: torch.nn.Module, *, rows: int) -> int:
    """Replace, in place, the model's float ``nn.Linear`` layers by :class:`OneDnnLinear`.

    Feed-forward blocks that compute ``erf_gelu(dense(x))`` become one fused layer. Does nothing
    when :func:`supports` is False for the weights' dtype. The model must be on the CPU, in
    eval mode. ``rows`` is the typical rows per product (tokens per batch), for the weights'
    packed layout. Returns how many layers now run through oneDNN.
    """
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(done + ".") for done in replaced):
            continue  # the model itself, or inside a block already fused
        dense = gelu_dense(module)
        if dense is not None and supports(dense.weight.dtype):
            replacement = OneDnnLinear(dense, "gelu", rows=rows)
        elif isinstance(module, torch.nn.Linear) and supports(module.weight.dtype):
            replacement = OneDnnLinear(module, rows=rows)
        else:
            continue
        replace_module(model, name, replacement)
        replaced.append(name)
    logger.info("%d Linear layers run through oneDNN", len(replaced))
    return len(replaced)
