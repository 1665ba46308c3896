"""``precision="int8"``: the transformer's matrix products as u8 x s8 on x86 CPUs with AVX2 (best: VNNI).

What is quantized, and how, was chosen by measurement on all-MiniLM-L6-v2 (AMD EPYC Zen 5 and
Zen 4, the 7-bit weights on a Zen 3; docs/performance.md has the commands and figures):

- The ``nn.Linear`` layers inside the transformer's layers: weights as int8 with one scale per
  output channel (one scale per tensor: mean row cosine to fp32 0.952 on 300 English sentences;
  per channel 0.978).
- Activations quantized per call, one scale per call over the full 8-bit range (0.994), as u8
  with a zero point; the three products of an attention block (Q, K, V) read one tensor and
  quantize it once (:class:`SharedInput`).
- Weights over 8 bits (-127 to 127) where the CPU has AVX-512 VNNI or AMX, whose products sum
  u8 x s8 into 32 bits; over 7 bits (-63 to 63) on CPUs with AVX2 but neither (AMD Zen 2 and 3,
  Intel Haswell to Skylake), whose kernels sum each pair of products in 16 bits first: 2 x 255 x
  63 = 32,130 fits there, where 8-bit weights saturate (an all-positive product, 2,048 x 384 x
  384, was off by 7% of its scale with 8 bits on an AMD EPYC Zen 3, 0.2% with 7;
  :func:`weight_steps`). int8 is refused on CPUs without AVX2.
- Kept int8 between layers: each feed-forward block writes its output as u8 over a range fixed
  at load time (:func:`calibrate`, on 88 sentences written for it in 11 languages,
  :mod:`polyemb._calibration`), which its down-projection reads as it is: no float32 output of
  4 bytes a value, no range pass, no rounding pass (1.08x end to end, 1,500 English sentences,
  AMD EPYC Zen 4; same mean row cosine to fp32).
- Outlier channels in float (:class:`FloatChannels`): in all-MiniLM-L6-v2's first four layers,
  one or two of a feed-forward block's 1,536 outputs reach 13.8 to 24.7 on the calibration
  sentences, where every other output stays below 5.9 (on 440 sentences in 11 languages, about
  3% of the tokens took them above half their largest value). One range for all outputs
  spends most of u8's steps on those few values: that is why the first two layers'
  down-projections had to stay float (with them in int8 the gate failed: Spearman drops of
  0.0057 on ja and 0.0056 on zh on a Zen 5; mean row cosine 0.98942 on a Zen 3). Now the
  channels whose calibration maximum exceeds :data:`OUTLIER_FACTOR` times the 99th percentile
  of the channels' maxima are computed in float32 beside the int8 products (a few dot products
  per token), the down-projection's int8 weights leave them out, and the u8 range covers the
  other channels only; every down-projection is int8. On an AMD EPYC Zen 3 (7-bit weights) the
  gate passed, its largest Spearman drop 0.0049 (ru) and mean row cosine 0.99399 (with the two
  float down-projections: 0.0022, zh, and 0.99290), at 1.08x their speed on STS English and
  1.07x on 11 languages.
- Never quantized: the embedding tables (a lookup costs nothing), LayerNorm, attention's own
  products, softmax and pooling.

The products run through oneDNN's u8s8 kernel (``onednn::qlinear_pointwise``, in every x86 torch
wheel), the feed-forward GELU fused into its product as in :mod:`polyemb.kernels`. Everything
that is not an int8 product runs in :func:`activation_dtype`: bfloat16 on CPUs with bfloat16
units (with the bf16 path's attention where that pays off), float32 elsewhere. An activation is
quantized from float32 (one pass for its range and one to round it, :func:`quantize_rows`) and
read by the kernel in place. The weights are quantized from the loaded ones (bfloat16 where
the activations are: its rounding moves a weight by at most half an int8 step, and the row
cosines to fp32 measured the same as from float32 weights and activations: mean 0.99509 against
0.99508 on 1,500 English sentences).

Most activation ranges are per call, so a text's int8 vector moves slightly with the texts
batched with it (cosine above 0.999 between two batchings): int8 vectors are approximate, as
bf16 ones. The fixed ranges depend only on the model (with its ``max_seq_length``) and this
CPU's arithmetic.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import torch

from polyemb._platform import cpu_flags, has_bf16_units
from polyemb.errors import InvalidInputError
from polyemb.kernels import Activation, gelu_dense, probe_linear, replace_module
from polyemb.similarity import cosine

__all__ = [
    "LINKED_MIN_COSINE",
    "OUTLIER_FACTOR",
    "FloatChannels",
    "Int8Linear",
    "SharedInput",
    "activation_dtype",
    "calibrate",
    "check_int8_supported",
    "link",
    "linked_pairs",
    "outlier_channels",
    "quantize_linears",
    "quantize_rows",
    "weight_steps",
]

logger = logging.getLogger(__name__)

# torch 2.12+ warns, once per process, that quantized tensors will go: the dynamic quantizer's
# quint8 result is read in place and never kept, and a torch without it gets the refusal of
# check_int8_supported. The probe below takes that one warning.
_DEPRECATION = ".*quantized tensor creation functions.*"
# How far a probe product may stray from float32's, relative to the output's scale (int8's
# rounding of weights and activations: about 1%).
_PROBE_TOLERANCE = 5e-2


def activation_dtype(flags: frozenset[str] | None = None) -> torch.dtype:
    """What int8 computes in besides its products: bfloat16 where the CPU has bfloat16 units, else float32.

    ``flags``: the CPU's feature flags (this CPU's when None).
    """
    return torch.bfloat16 if has_bf16_units(flags) else torch.float32


def weight_steps(flags: frozenset[str] | None = None) -> int | None:
    """The largest int8 weight this CPU's products take without saturating; None where int8 cannot run.

    127 with AVX-512 VNNI or AMX (u8 x s8 summed into 32 bits); 63 with AVX2 alone (each pair
    of u8 x s8 products summed in 16 bits first: 2 x 255 x 63 = 32,130 <= 32,767); None
    without AVX2. ``flags``: the CPU's feature flags (this CPU's when None).
    """
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags or "amx_int8" in flags:
        return 127
    return 63 if "avx2" in flags else None


def check_int8_supported(device: torch.device) -> None:
    """Raise :class:`InvalidInputError` unless int8 can run here: AVX2 and torch's oneDNN int8 operators."""
    if device.type != "cpu":
        raise InvalidInputError(
            f"precision='int8' runs on the CPU only (device {device}); on a GPU use 'fp16' or 'bf16'"
        )
    if weight_steps() is None:
        raise InvalidInputError(
            "precision='int8' needs a CPU with AVX2 (fastest with AVX-512 VNNI: Intel Cascade Lake "
            "and later, AMD Zen 4 and later); this CPU has neither. Use 'bf16' or 'fp32'"
        )
    if not _supported():
        raise InvalidInputError(
            f"precision='int8' needs torch's oneDNN int8 operators (onednn::qlinear_pointwise and "
            f"quantized tensors), which torch {torch.__version__} lacks or computes wrongly "
            f"here. Use 'bf16' or 'fp32'"
        )


@functools.cache
def _supported() -> bool:
    """Whether the operators exist and agree with float32 on a probe product."""
    linear = probe_linear(48, 40)
    x = torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1))
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATION)
            probes: tuple[tuple[Activation, torch.dtype], ...] = (
                ("none", torch.float32),
                ("gelu", torch.bfloat16),
            )
            for activation, out_dtype in probes:
                expected = linear(x)
                if activation == "gelu":
                    expected = torch.nn.functional.gelu(expected)
                got = Int8Linear(linear, activation, rows=16, out_dtype=out_dtype)(x).float()
                if not _close(got, expected):
                    return False
            # A feed-forward block handing its down-projection u8 over a fixed range.
            down_linear = probe_linear(40, 48)
            block = Int8Linear(linear, "gelu", rows=16, out_dtype=torch.float32)
            down = Int8Linear(down_linear, rows=16, out_dtype=torch.float32)
            hidden = torch.nn.functional.gelu(linear(x))
            link(block, down, float(hidden.min()), float(hidden.max()))
            if not _close(down(block(x)), down_linear(hidden)):
                return False
            # All-positive inputs and weights: the u8 x s8 pair sums are at their largest, so a
            # kernel that sums them in 16 bits saturates unless weight_steps() allows for it.
            with torch.no_grad():
                linear.weight.abs_()
            if not _close(Int8Linear(linear, rows=16, out_dtype=torch.float32)(x.abs()), linear(x.abs())):
                return False
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        # What a torch without these operators raises (a build without oneDNN's x86 kernels, a
        # release that removed quantized tensors or renamed the ops). Not a crash to pass on:
        # check_int8_supported turns it into a refusal that names bf16 and fp32, and the log
        # keeps the cause.
        logger.warning("oneDNN int8 operators not usable (%s): int8 refused", exc)
        return False
    return True


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    error = (got.float() - expected).abs().max() / expected.abs().max()
    if not error <= _PROBE_TOLERANCE:
        logger.warning("oneDNN int8 product off by %.2g on a probe: int8 refused", error)
        return False
    return True


Quantized = tuple[torch.Tensor, float, int]
"""An activation as u8 bytes, its scale and its zero point: ``x ~ scale * (u8 - zero_point)``."""


def quantize_rows(rows: torch.Tensor) -> Quantized:
    """``rows`` (2-D, any float dtype, not empty) as u8 over their own range, which includes 0.

    One pass for the range (``aminmax``) and one to round: torch's dynamic quantizer takes the
    minimum and the maximum in two passes (2,048 x 1,536 float32 on an AMD EPYC Zen 4: 0.55 ms
    against 0.36). The scale follows torch's choice where the range is empty or not finite.
    """
    rows = rows.float().contiguous()
    low, high = (bound.item() for bound in torch.aminmax(rows))
    if not (math.isfinite(low) and math.isfinite(high)):
        low = high = 0.0  # NaN or infinity in: no range to step through, and no crash either
    # All zeros, or a range float32 cannot step through: torch's choice of scale.
    scale, zero_point = _steps(low, high) or (0.1, 0)
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
    """A feed-forward block's outlier channels, computed in float32 beside its int8 products.

    The block (``up``, its GELU fused) and its down-projection (``down``) run in int8 with these
    channels left out: out of the range the block hands its output on in, and out of the
    down-projection's int8 weights (:meth:`Int8Linear.leave_out`). What they add to the
    down-projection's output, ``gelu(x @ up[c].T + b[c]) @ down[:, c].T``, the block computes in
    float32 from its own input and hands on with the u8 tensor it returns (:meth:`hand`); the
    down-projection adds it to its product (:meth:`take`). One call at a time: the Encoder runs
    its model from one thread at a time (its lock).
    """

    def __init__(
        self,
        up_weight: torch.Tensor,
        up_bias: torch.Tensor | None,
        down_weight: torch.Tensor,
        channels: torch.Tensor,
    ) -> None:
        self.channels = channels
        self._up_weight = up_weight[channels].float()
        self._up_bias = None if up_bias is None else up_bias[channels].float()
        self._down_weight = down_weight[:, channels].float().contiguous()
        self._handed: tuple[torch.Tensor, torch.Tensor] | None = None

    def hand(self, rows: torch.Tensor, handed: torch.Tensor) -> None:
        """Keep the channels' part of the down-projection's output, from the block's input (2-D float32)."""
        hidden = torch.nn.functional.gelu(torch.nn.functional.linear(rows, self._up_weight, self._up_bias))
        self._handed = (handed, torch.nn.functional.linear(hidden, self._down_weight))

    def take(self, handed: torch.Tensor) -> torch.Tensor:
        """The part kept with ``handed``, once.

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
        return kept[1]


class Int8Linear(torch.nn.Module):
    """``activation(x @ weight.T + bias)``: int8 weights per output channel, ``x`` as u8 per call.

    Takes any float dtype, of any leading shape, or u8 over ``input_range`` (a linked block's
    output, see :func:`link`); returns ``out_dtype``, or u8 over ``output_range`` once linked.
    The weights are rounded to ``steps`` steps each side of 0 (:func:`weight_steps` for this CPU
    when None). The original weight is kept as ``float_weight`` only with ``keep_float`` (for
    :meth:`leave_out` and :class:`FloatChannels`, until :func:`calibrate` drops it); else it
    lives on only in oneDNN's packed int8 form.
    """

    def __init__(
        self,
        linear: torch.nn.Linear,
        activation: Activation = "none",
        *,
        rows: int,
        out_dtype: torch.dtype,
        steps: int | None = None,
        keep_float: bool = False,
    ) -> None:
        super().__init__()
        steps = weight_steps() if steps is None else steps
        if steps is None:
            raise InvalidInputError("precision='int8' needs a CPU with AVX2; see check_int8_supported")
        self.steps = steps
        self._rows = rows
        self._quantize(linear.weight.detach().float())
        # A plain tensor attribute, not the layer: a submodule would be seen (and packed) by
        # kernels.use_onednn, and saved with the model.
        self.float_weight = linear.weight.detach() if keep_float else None
        self._zero_points = torch.zeros(linear.out_features, dtype=torch.long)
        self._bias = None if linear.bias is None else linear.bias.detach().float()
        self._activation = activation
        self._algorithm = "none" if activation == "gelu" else ""  # "none": erf GELU
        self.out_dtype = out_dtype
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.shared: SharedInput | None = None
        # (scale, zero point) of a u8 output, and of a u8 input: see link().
        self.output_range: tuple[float, int] | None = None
        self.input_range: tuple[float, int] | None = None
        # A block's outlier channels in float, handed on (out) or added (in): see FloatChannels.
        self.outliers_out: FloatChannels | None = None
        self.outliers_in: FloatChannels | None = None

    def _quantize(self, weight: torch.Tensor) -> None:
        self._scales = (weight.abs().amax(dim=1) / self.steps).clamp(min=1e-12)
        quantized = torch.round(weight / self._scales[:, None]).clamp(-self.steps, self.steps).to(torch.int8)
        # oneDNN picks the packed layout for products of about this many rows.
        self._packed = torch.ops.onednn.qlinear_prepack(quantized, [self._rows, weight.shape[1]])

    def leave_out(self, channels: torch.Tensor) -> None:
        """Quantize the weights again with the input ``channels``' columns as 0 (none: as loaded).

        Raises:
            InvalidInputError: The layer was made without ``keep_float``, or its float weight was
                dropped since.
        """
        if self.float_weight is None:
            raise InvalidInputError(f"{type(self).__name__}: no float weights kept to quantize again")
        weight = self.float_weight.float().clone()
        weight[:, channels] = 0.0
        self._quantize(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The product of ``x`` (quantized over its own range unless it is u8) with the int8 weights."""
        out_dtype = None if self.output_range is not None else self.out_dtype  # None: u8
        out_scale, out_zero_point = self.output_range or (1.0, 0)
        if not x.numel():  # no range to quantize over
            return x.new_empty(*x.shape[:-1], self.out_features, dtype=out_dtype or torch.uint8)
        rows = x.reshape(-1, self.in_features)
        if x.dtype == torch.uint8:  # a linked block's output, over its fixed range
            if self.input_range is None:
                raise InvalidInputError(f"{type(self).__name__}: a u8 input needs a range; see link()")
            quantized: Quantized | None = (rows, *self.input_range)
        else:
            if self.outliers_out is not None:
                rows = rows.float()  # read by the float channels too; quantize_rows takes it as it is
            quantized = None if self.shared is None else self.shared.lookup(x)
        if quantized is None:
            quantized = quantize_rows(rows)
            if self.shared is not None:
                self.shared.keep(x, quantized)
        u8, scale, zero_point = quantized
        out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
            u8,
            scale,
            zero_point,
            self._packed,
            self._scales,
            self._zero_points,
            self._bias,
            out_scale,
            out_zero_point,
            out_dtype,
            self._activation,
            [],
            self._algorithm,
        )
        if self.outliers_in is not None:
            out += self.outliers_in.take(x)
        result = out.reshape(*x.shape[:-1], self.out_features)
        if self.outliers_out is not None:
            self.outliers_out.hand(rows, result)
        return result

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        out = "u8 over a fixed range" if self.output_range is not None else self.out_dtype
        outliers = self.outliers_out or self.outliers_in
        in_float = f", {len(outliers.channels)} outlier channels in float" if outliers is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel, "
            f"activation={self._activation}, out={out}{in_float}"
        )


_DOWN_PROJECTION = re.compile(r"(?:^|\.)layer\.(\d+)\.output\.dense$")
_FEED_FORWARD = re.compile(r"(?:^|\.)layer\.(\d+)\.intermediate$")


LINKED_MIN_COSINE = 0.99
"""The mean row cosine, linked against per call, below which :func:`calibrate` undoes its links."""

OUTLIER_FACTOR = 1.5
"""A feed-forward output channel is an outlier where its largest calibration value exceeds this
times the 99th percentile of the channels' largest values (:func:`outlier_channels`)."""


def outlier_channels(peaks: torch.Tensor) -> torch.Tensor:
    """The channels whose largest value (``peaks``, one per channel) is an outlier: at most 1% of them.

    On all-MiniLM-L6-v2's 88 calibration sentences: one channel in layers 1, 2 and 4 (24.7,
    20.5 and 13.8, where the rest reach 5.9, 5.6 and 5.3), two in layer 3 (17.6 and 14.7, the
    rest 5.3), four in layer 5 (6.4 to 7.8, the rest 6.2), one in layer 6 (7.0, the rest 4.5).
    """
    peaks = peaks.float()
    cut = OUTLIER_FACTOR * torch.quantile(peaks, 0.99)
    if not cut > 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(peaks > cut).flatten()


def link(block: Int8Linear, down: Int8Linear, low: float, high: float) -> None:
    """Have ``block`` hand ``down`` its output as u8 over ``[low, high]`` (widened to hold 0).

    Values beyond the range are clipped to its ends. Where the range is empty (``low == high
    == 0``), nothing changes: ``down`` keeps quantizing what it gets per call.
    """
    steps = _steps(low, high)
    if steps is not None:
        block.output_range = down.input_range = steps


def _steps(low: float, high: float) -> tuple[float, int] | None:
    """The u8 scale and zero point of ``[low, high]`` widened to hold 0; None where it has no steps."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0
    if not (math.isfinite(scale) and scale > 0.0 and math.isfinite(1.0 / scale)):
        return None
    return scale, min(255, max(0, round(-low / scale)))


def linked_pairs(model: torch.nn.Module) -> list[tuple[Int8Linear, Int8Linear]]:
    """The int8 feed-forward blocks (GELU fused) of the model's encoder with their int8 down-projections."""
    body = getattr(model, "encoder", model)
    modules = dict(body.named_modules())
    pairs = []
    for name, block in modules.items():
        if _FEED_FORWARD.search(name) and isinstance(block, Int8Linear) and block._activation == "gelu":
            down = modules.get(name.removesuffix("intermediate") + "output.dense")
            if isinstance(down, Int8Linear):
                pairs.append((block, down))
    return pairs


def calibrate(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> int:
    """Fix the range of each feed-forward block's output into its down-projection: u8 between them.

    ``run`` encodes calibration texts (:mod:`polyemb._calibration` at load time) through the
    model as quantized by :func:`quantize_linears`, its down-projections computing in float32
    for this first call. Over it, each block's outlier channels (:func:`outlier_channels`) move
    to float (:class:`FloatChannels`), and its smallest output and the largest of its other
    channels become the range its output is handed on in (:func:`link`); larger values are
    clipped to it. The block then writes u8 instead of float32 (a quarter of the bytes) and its
    down-projection skips quantizing. ``run`` is called again once linked, and where its vectors
    moved from the first call's (a mean row cosine below :data:`LINKED_MIN_COSINE`: a model whose
    down-projection is not the first thing its output module does, or ranges that clip too
    much), or where a down-projection does not read its block's output as the block returned it,
    every link is undone, with a warning. Either way the float weights that
    :func:`quantize_linears` kept for this are dropped. Returns how many blocks were linked.

    On all-MiniLM-L6-v2 the texts' largest outputs per block of the last four layers were 17.6,
    13.8, 7.9 and 7.5 (before the outlier channels went to float), where 1,500 sentences of the
    11 languages' train files reached 17.7, 13.9, 8.2 and 9.4. Widening the ranges to spare
    those few values did not pay: mean row cosine to fp32 on those sentences 0.99378 with the
    ranges as seen, 0.99413 with them 10% wider, 0.99314 25% wider (per call: 0.99381); the
    gate's largest Spearman drop 0.0046 as seen, 0.0050 10% wider.
    """
    try:
        return _calibrate(model, run)
    finally:
        for module in model.modules():
            if isinstance(module, Int8Linear):
                module.float_weight = None


def _calibrate(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> int:
    pairs = linked_pairs(model)
    if not pairs:
        return 0
    unlinked, seen = _outputs_seen(pairs, run)
    for block, down in pairs:
        if id(block) in seen:
            _split_and_link(block, down, *seen[id(block)])
    try:
        moved = float(cosine(unlinked, run()).mean())
        why = f"fixed ranges moved the calibration texts' vectors (mean row cosine {moved:.4f})"
    except InvalidInputError as exc:
        moved, why = math.nan, str(exc)
    if not moved >= LINKED_MIN_COSINE:
        for block, down in pairs:
            block.output_range = down.input_range = None
            if down.outliers_in is not None:
                down.leave_out(torch.zeros(0, dtype=torch.long))
            block.outliers_out = down.outliers_in = None
        logger.warning("int8: %s: every activation is quantized per call instead", why)
        return 0
    linked = sum(block.output_range is not None for block, _ in pairs)
    in_float = sum(len(block.outliers_out.channels) for block, _ in pairs if block.outliers_out is not None)
    logger.info(
        "int8: %d feed-forward blocks hand their down-projection u8 over a fixed range; "
        "%d outlier channels in float",
        linked,
        in_float,
    )
    return linked


def _outputs_seen(
    pairs: list[tuple[Int8Linear, Int8Linear]], run: Callable[[], np.ndarray]
) -> tuple[np.ndarray, dict[int, tuple[float, torch.Tensor]]]:
    """``run()``'s vectors, and each block's smallest output and largest per channel over it (finite ones).

    The down-projections compute in float32 meanwhile (from the weights kept for calibration):
    the vectors are the reference that linking must not move.
    """
    seen: dict[int, tuple[float, torch.Tensor]] = {}

    def record(block: torch.nn.Module, _: object, out: torch.Tensor) -> None:
        if out.numel() and out.is_floating_point():
            rows = out.reshape(-1, out.shape[-1])
            low, peak = rows.min().item(), rows.amax(dim=0).float()
            if id(block) in seen:
                low, peak = min(seen[id(block)][0], low), torch.maximum(seen[id(block)][1], peak)
            seen[id(block)] = (low, peak)

    def in_float(down: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        if not isinstance(down, Int8Linear) or down.float_weight is None or not args[0].is_floating_point():
            return out
        weight = down.float_weight.float()
        return torch.nn.functional.linear(args[0].float(), weight, down._bias).to(out.dtype)

    hooks = [block.register_forward_hook(record) for block, _ in pairs]
    hooks += [down.register_forward_hook(in_float) for _, down in pairs]
    try:
        vectors = run()
    finally:
        for hook in hooks:
            hook.remove()
    return vectors, {
        key: (low, peak) for key, (low, peak) in seen.items() if math.isfinite(low) and peak.isfinite().all()
    }


def _split_and_link(block: Int8Linear, down: Int8Linear, low: float, peak: torch.Tensor) -> None:
    """Put the block's outlier channels in float, and link the two over the other channels' range."""
    channels = outlier_channels(peak)
    if len(channels) and block.float_weight is not None and down.float_weight is not None:
        down.leave_out(channels)
        block.outliers_out = down.outliers_in = FloatChannels(
            block.float_weight, block._bias, down.float_weight, channels
        )
        peak = peak.clone()
        peak[channels] = -math.inf
    link(block, down, low, peak.max().item())


def quantize_linears(model: torch.nn.Module, *, rows: int) -> int:
    """Replace, in place, the ``nn.Linear`` layers under the model's ``encoder`` by :class:`Int8Linear`.

    A feed-forward block that is exactly ``erf_gelu(dense(x))`` becomes one fused layer, which
    hands its down-projection float32 until :func:`calibrate` links them; those two keep their
    float layer for :func:`calibrate`, which drops it. The model must be on the CPU, in eval
    mode; the other layers return its dtype. ``rows``: the typical rows per product (tokens per
    batch), for the weights' packed layout. Returns how many layers now run in int8.

    Raises:
        InvalidInputError: The model has no ``encoder`` module of Linear layers.
    """
    body = getattr(model, "encoder", None)
    if not isinstance(body, torch.nn.Module):
        raise InvalidInputError(
            f"precision='int8' needs a BERT-like transformer with an 'encoder' module; "
            f"{type(model).__name__} has none. Use 'bf16' or 'fp32'"
        )
    dtype = next(model.parameters()).dtype
    replacements: dict[str, Int8Linear] = {}
    for name, module in body.named_modules():
        if any(name.startswith(done + ".") for done in replacements):
            continue  # inside a block already fused
        dense = gelu_dense(module) if _FEED_FORWARD.search(name) else None
        if dense is not None:
            # The down-projection quantizes from float32: hand it that, not bf16 to convert.
            replacements[name] = Int8Linear(
                dense, "gelu", rows=rows, out_dtype=torch.float32, keep_float=True
            )
        elif isinstance(module, torch.nn.Linear):
            down = _DOWN_PROJECTION.search(name) is not None
            replacements[name] = Int8Linear(module, rows=rows, out_dtype=dtype, keep_float=down)
    if not replacements:
        raise InvalidInputError(f"precision='int8': no Linear layers in {type(model).__name__}.encoder")
    parents = collections.Counter(name.rpartition(".")[0] for name in replacements)
    shared = {parent: SharedInput() for parent, count in parents.items() if count > 1}
    for parent, kept in shared.items():
        # Layers under one parent share the last quantized input (Q, K and V read one tensor),
        # for the length of one call of the parent.
        module = body.get_submodule(parent)
        module.register_forward_pre_hook(kept.clear)
        module.register_forward_hook(kept.clear, always_call=True)
    for name, replacement in replacements.items():
        replacement.shared = shared.get(name.rpartition(".")[0])
        replace_module(body, name, replacement)
    logger.info("int8: %d layers quantized", len(replacements))
    return len(replacements)
