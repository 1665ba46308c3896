"""``precision="int8"``: the transformer's matrix products in int8 on CPUs with AVX-512 VNNI.

What is quantized, and how, was chosen by measurement (all-MiniLM-L6-v2, 300 held-out English
sentences, mean row cosine to fp32; see the README's precision section):

- Every ``nn.Linear`` inside the transformer's layers: weights as int8 with one scale per output
  channel (one per tensor gave 0.952; per channel 0.978).
- Activations quantized on the fly per call, over the full 8-bit range (0.994). torch's own
  dynamic ``Linear`` keeps 7 bits (``reduce_range=True``) so that AVX2 kernels, which sum pairs
  of u8 x s8 products in 16 bits, cannot saturate; AVX-512 VNNI sums into 32 bits, so 8 bits are
  safe there and only there. Hence int8 is refused on CPUs without VNNI.
- Never quantized: the embedding tables (a 250k-token table quantized per tensor is noise, and a
  lookup costs nothing), LayerNorm, softmax and pooling, which stay float32.

The most sensitive layers, one at a time, are the feed-forward down-projections
(``output.dense``); keeping them in float32 raised the mean row cosine from 0.994 to 0.996 but
cost most of the speed, so they are quantized too.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from polyemb.errors import InvalidInputError

__all__ = ["Int8Linear", "check_int8_supported", "quantize_linears"]

logger = logging.getLogger(__name__)

_ENGINES = ("x86", "fbgemm")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


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
    if "avx512_vnni" not in _cpu_flags():
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


def quantize_linears(model: torch.nn.Module) -> int:
    """Replace, in place, every ``nn.Linear`` under the model's ``encoder`` by an :class:`Int8Linear`.

    The model must be float32 on the CPU. Returns how many layers were replaced (0 means the
    model has no ``encoder`` module of Linear layers, which is refused).
    """
    body = getattr(model, "encoder", None)
    if not isinstance(body, torch.nn.Module):
        raise InvalidInputError(
            f"precision='int8' needs a BERT-like transformer with an 'encoder' module; "
            f"{type(model).__name__} has none. Use 'bf16' or 'fp32'"
        )
    replaced = 0
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    if not replaced:
        raise InvalidInputError(f"precision='int8': no Linear layers in {type(model).__name__}.encoder")
    logger.info("int8: %d Linear layers quantized", replaced)
    return replaced
