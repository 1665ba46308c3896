"""``precision="int8"``: the transformer's matrix products in int8 on CPUs with AVX-512 VNNI.

What is quantized, and how, was chosen by measurement on all-MiniLM-L6-v2 (AMD EPYC Zen 5; the
README's precision section has the commands and figures):

- The ``nn.Linear`` layers inside the transformer's layers: weights as int8 with one scale per
  output channel (one scale per tensor: mean row cosine to fp32 0.952 on 300 English sentences;
  per channel 0.978).
- Activations quantized on the fly per call, over the full 8-bit range (0.994). torch's own
  dynamic ``Linear`` keeps 7 bits (``reduce_range=True``) so that AVX2 kernels, which sum pairs
  of u8 x s8 products in 16 bits, cannot saturate; AVX-512 VNNI sums into 32 bits, so 8 bits are
  safe there and only there. Hence int8 is refused on CPUs without VNNI.
- Kept in float32: the feed-forward down-projections (``output.dense``) of the first
  :data:`FLOAT_LAYERS` layers. Quantizing one layer at a time, these two cost the most (mean row
  cosine 0.9961 and 0.9979 alone; every other layer 0.9983 or better). With everything
  quantized, the gate of ``polyemb check-precision`` failed on the 11 dev files (Spearman drops
  of 0.0057 on ja and 0.0056 on zh); with these two in float32 it passed (largest drop 0.0042,
  mean row cosine 0.9939), at 2.5x fp32's speed where all-int8 ran at 3.1x. Keeping every
  down-projection in float32 ran at 1.8x and still failed the gate (zh, 0.0052).
- Never quantized: the embedding tables (a 250k-token table quantized per tensor is noise, and a
  lookup costs nothing), LayerNorm, softmax and pooling, which stay float32.

The activation range is per call, so a text's int8 vector moves slightly with the texts batched
with it (cosine above 0.999 between two batchings): int8 vectors are approximate, as bf16 ones.
"""

from __future__ import annotations

import logging
import re
import warnings

import torch

from polyemb._platform import cpu_flags
from polyemb.errors import InvalidInputError

__all__ = ["FLOAT_LAYERS", "Int8Linear", "check_int8_supported", "quantize_linears"]

logger = logging.getLogger(__name__)

_ENGINES = ("x86", "fbgemm")


def check_int8_supported(device: torch.device) -> None:
    """Raise :class:`InvalidInputError` unless int8 can run here: CPU, VNNI, a fbgemm build of torch."""
    if device.type != "cpu":
        raise InvalidInputError(
            f"precision='int8' runs on the CPU only (device {device}); on a GPU use 'fp16' or 'bf16'"
        )
    if torch.backends.quantized.engine not in _ENGINES or not hasattr(torch, "quantize_per_channel"):
        raise InvalidInputError(
            f"precision='int8' needs torch's x86 quantized engine; this torch has "
            f"{torch.backends.quantized.supported_engines}. Use 'bf16' or 'fp32'"
        )
    if "avx512_vnni" not in cpu_flags():
        raise InvalidInputError(
            "precision='int8' needs a CPU with AVX-512 VNNI (Intel Cascade Lake and later, AMD Zen 4 "
            "and later); this CPU has none, so its int8 kernels would saturate. Use 'bf16' or 'fp32'"
        )


class Int8Linear(torch.nn.Module):
    """A float ``nn.Linear`` as int8 weights (per output channel) times activations quantized per call.

    Takes and returns float32, of any leading shape.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings():
            # torch 2.12+ warns that quantized tensors will go; the packed weights are all that
            # is kept, and check_int8_supported's message is the plan for the torch without them.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            quantized = torch.quantize_per_channel(weight, scales, zero_points, axis=0, dtype=torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(quantized, bias)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` with ``x`` quantized to 8 bits over its own range."""
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=False)
        return out

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


FLOAT_LAYERS = 2
"""The first layers whose feed-forward down-projection stays float32 (see the module docstring)."""

_DOWN_PROJECTION = re.compile(r"(?:^|\.)layer\.(\d+)\.output\.dense$")


def quantize_linears(model: torch.nn.Module) -> int:
    """Replace, in place, the ``nn.Linear`` layers under the model's ``encoder`` by :class:`Int8Linear`.

    All but the feed-forward down-projections of the first :data:`FLOAT_LAYERS` layers. The
    model must be float32 on the CPU. Returns how many layers were replaced.

    Raises:
        InvalidInputError: The model has no ``encoder`` module of Linear layers.
    """
    body = getattr(model, "encoder", None)
    if not isinstance(body, torch.nn.Module):
        raise InvalidInputError(
            f"precision='int8' needs a BERT-like transformer with an 'encoder' module; "
            f"{type(model).__name__} has none. Use 'bf16' or 'fp32'"
        )
    targets = []
    for name, module in body.named_modules():
        down = _DOWN_PROJECTION.search(name)
        if isinstance(module, torch.nn.Linear) and not (down and int(down.group(1)) < FLOAT_LAYERS):
            targets.append(name)
    if not targets:
        raise InvalidInputError(f"precision='int8': no Linear layers in {type(model).__name__}.encoder")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, child, Int8Linear(getattr(parent, child)))
    logger.info("int8: %d Linear layers quantized", len(targets))
    return len(targets)
