"""Activations as u8 (:func:`quantize_rows`), and what int8 layers hand each other of them.

:class:`SharedInput`: one quantization of an input for the sibling layers that read it (Q, K, V);
:class:`FloatChannels`: a feed-forward block's outlier channels, computed in float beside its
int8 products. The layer that uses them is :class:`polyemb.quantize.linear.Int8Linear`.
"""

from __future__ import annotations

import math

import torch

from polyemb.errors import InvalidInputError

__all__ = ["FloatChannels", "Quantized", "SharedInput", "quantize_rows"]

Quantized = tuple[torch.Tensor, float, int]
"""An activation as u8 bytes, its scale and its zero point: ``x ~ scale * (u8 - zero_point)``."""


def quantize_rows(rows: torch.Tensor, steps: tuple[float, int] | None = None) -> Quantized:
    """``rows`` (2-D, any float dtype, not empty) as u8 over ``steps`` (scale, zero point) or their range.

    Their own range includes 0, and takes one pass (``aminmax``) before the one that rounds:
    torch's dynamic quantizer takes the minimum and the maximum in two passes (2,048 x 1,536
    float32 on an AMD EPYC Zen 4: 0.55 ms against 0.36). The scale follows torch's choice where
    the range is empty or not finite. Over fixed ``steps``, values beyond the range are clipped
    to its ends.
    """
    rows = rows.float().contiguous()
    if steps is None:
        low, high = (bound.item() for bound in torch.aminmax(rows))
        if not (math.isfinite(low) and math.isfinite(high)):
            low = high = 0.0  # NaN or infinity in: no range to step through, and no crash either
        # All zeros, or a range float32 cannot step through: torch's choice of scale.
        steps = _steps(low, high) or (0.1, 0)
    scale, zero_point = steps
    quantized = torch.quantize_per_tensor(rows, scale, zero_point, torch.quint8)
    # The quint8 tensor's bytes, read in place as the uint8 tensor the kernel takes (int_repr()
    # would copy: 0.33 ms per 2,048 x 384 call).
    u8 = torch.empty(0, dtype=torch.uint8).set_(
        quantized.untyped_storage(), quantized.storage_offset(), quantized.shape, quantized.stride()
    )
    return u8, scale, zero_point


class SharedInput:
    """The last activation quantized, for sibling layers that read the same tensor (Q, K and V).

    An attention block hands one tensor to its query, key and value products in turn; the first
    quantizes it and the next two reuse that (2 of every 3 quantizations of the block's input
    saved). A hit needs the very same tensor object, unchanged since (its version counter, where
    it has one: tensors made in inference mode, as the Encoder's are, have none, and there the
    object is what is checked). What is kept lives for one call of the parent module only:
    :func:`quantize_linears` clears it as the parent starts and ends, also when it raises. Not
    for two threads running one model at once: the Encoder runs its model from one thread at a
    time (its lock).
    """

    def __init__(self) -> None:
        self._source: torch.Tensor | None = None
        self._version = -1
        self._quantized: Quantized | None = None

    def lookup(self, x: torch.Tensor) -> Quantized | None:
        """The quantization of ``x`` if it is the tensor last kept, unchanged; else None."""
        if x is not self._source or self._version_of(x) != self._version:
            return None
        return self._quantized

    def keep(self, x: torch.Tensor, quantized: Quantized) -> None:
        """Remember ``quantized`` as the quantization of ``x``, as ``x`` is now."""
        self._source, self._version, self._quantized = x, self._version_of(x), quantized

    def clear(self, *_: object) -> None:
        """Forget what was kept (takes and ignores a forward hook's arguments)."""
        self._source = self._quantized = None

    @staticmethod
    def _version_of(x: torch.Tensor) -> int:
        return -1 if x.is_inference() else x._version


class FloatChannels:
    """A feed-forward block's outlier channels, computed beside its int8 products (their GELU in float32).

    The block (``up``, its GELU fused) and its down-projection (``down``) run in int8 with these
    channels left out: out of the range the block hands its output on in, and out of the
    down-projection's int8 weights (:meth:`Int8Linear.leave_out`). What they add to the
    down-projection's output, ``gelu(x @ up[c].T + b[c]) @ down[:, c].T``, the block computes
    from its own input as it quantizes it (smoothed, see :meth:`Int8Linear.smooth`; ``up_weight``
    is the block's :meth:`Int8Linear.smoothed_weight`): the channels' GELU outputs, computed in
    float32 and kept in ``dtype`` (the down-projection's output dtype), go with the u8 tensor
    the block returns (:meth:`hand`); the down-projection adds their product with its columns
    into its own output, in place (:meth:`add_to`). One call at a time: the Encoder runs its
    model from one thread at a time (its lock).
    """

    def __init__(
        self,
        up_weight: torch.Tensor,
        up_bias: torch.Tensor | None,
        down_weight: torch.Tensor,
        channels: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.channels = channels
        self._up_weight = up_weight[channels].float()
        self._up_bias = None if up_bias is None else up_bias[channels].float()
        # In the output's dtype, (channels, out_features) as addmm_ reads it transposed: a float32
        # part added to a bf16 product was converted on the way (0.6 ms a call for 2,048 x 384
        # on an Intel Xeon, 6% of int8's time on MiniLM), and a product then an add wrote the
        # whole output twice.
        self._down_weight = down_weight[:, channels].T.to(dtype).contiguous()
        self._handed: tuple[torch.Tensor, torch.Tensor] | None = None

    def hand(self, rows: torch.Tensor, handed: torch.Tensor) -> None:
        """Keep the channels' GELU outputs, from the block's input, with the block's output ``handed``.

        ``rows``: that input, 2-D float32, as the block quantizes it (smoothed).
        """
        hidden = torch.nn.functional.gelu(torch.nn.functional.linear(rows, self._up_weight, self._up_bias))
        self._handed = (handed, hidden.to(self._down_weight.dtype))

    def add_to(self, out: torch.Tensor, handed: torch.Tensor) -> None:
        """Add the channels' part to the down-projection's 2-D output ``out``, in place, once.

        Raises:
            InvalidInputError: ``handed`` is not the tensor the block returned last (something
                came between the block and its down-projection).
        """
        kept, self._handed = self._handed, None
        if kept is None or kept[0] is not handed:
            raise InvalidInputError(
                "an int8 down-projection with outlier channels in float must read its feed-forward "
                "block's output as the block returned it"
            )
        out.addmm_(kept[1], self._down_weight)


def _steps(low: float, high: float) -> tuple[float, int] | None:
    """The u8 scale and zero point of ``[low, high]`` widened to hold 0; None where it has no steps."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0
    if not (math.isfinite(scale) and scale > 0.0 and math.isfinite(1.0 / scale)):
        return None
    return scale, min(255, max(0, round(-low / scale)))
