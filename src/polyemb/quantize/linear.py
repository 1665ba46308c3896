"""The int8 layer (:class:`Int8Linear`) and this CPU's int8 support (activations as u8: :mod:`.activations`).

How the products run, and why, is in :mod:`polyemb.quantize`.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

from polyemb._platform import cpu_flags, hardware_flags, has_bf16_units, onednn_cap
from polyemb.errors import InvalidInputError
from polyemb.kernels import Activation, probe_linear
from polyemb.quantize.activations import FloatChannels, Quantized, SharedInput, _steps, quantize_rows

__all__ = ["Int8Linear", "activation_dtype", "check_int8_supported", "link", "weight_steps"]

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
    return torch.bfloat16 if has_bf16_units(cpu_flags() if flags is None else flags) else torch.float32


def weight_steps(flags: frozenset[str] | None = None) -> int | None:
    """The largest int8 weight this CPU's products take without saturating; None where int8 cannot run.

    127 with AVX-512 VNNI, AVX-VNNI or AMX (u8 x s8 summed into 32 bits); 63 with AVX2 alone
    (each pair of u8 x s8 products summed in 16 bits first: 2 x 255 x 63 = 32,130 <= 32,767);
    None without AVX2. ``flags``: the CPU's feature flags (this CPU's, under oneDNN's cap, when
    None).
    """
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return 127
    return 63 if "avx2" in flags else None


def check_int8_supported(device: torch.device) -> None:
    """Raise :class:`InvalidInputError` unless int8 can run here: AVX2 and torch's oneDNN int8 operators."""
    if device.type != "cpu":
        raise InvalidInputError(
            f"precision='int8' runs on the CPU only (device {device}); on a GPU use 'fp16' or 'bf16'"
        )
    if weight_steps() is None:
        if onednn_cap() and weight_steps(hardware_flags()) is not None:
            raise InvalidInputError(
                f"precision='int8' needs AVX2, and oneDNN is capped below it here "
                f"(ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA: {onednn_cap()}). Lift the cap, or use "
                f"'bf16' or 'fp32'"
            )
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
            # The products as int8 runs them (quantize_linears): the plain ones write the
            # activations' dtype (bf16 only where the CPU has bf16 units: elsewhere oneDNN writes
            # bf16 on its reference kernel alone, 8 ms for this probe under AVX2_VNNI), the
            # feed-forward block, its GELU fused, float32 (u8 once linked, below).
            probes: tuple[tuple[Activation, torch.dtype], ...] = (
                ("none", activation_dtype()),
                ("gelu", torch.float32),
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
            # Inputs and weights all in [0.5, 1]: with 8-bit weights nearly every u8 x s8 pair sum
            # is beyond 16 bits, so a kernel that sums pairs in 16 bits where weight_steps() took
            # it not to (a cap polyemb cannot see) is off by about 0.2, a kernel that does not
            # saturate by 0.002 (tests/core/test_onednn_cap.py). Absolute values of normal draws,
            # this probe before, were off by 0.005 at its draw (passed; the first probe refused)
            # and by 0.003 to 0.06 at 19 others (two past the tolerance).
            if not _close(*_saturation_probe()):
                return False
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        # What a torch without these operators raises (a build without oneDNN's x86 kernels, a
        # release that removed quantized tensors or renamed the ops). Not a crash to pass on:
        # check_int8_supported turns it into a refusal that names bf16 and fp32, and the log
        # keeps the cause.
        logger.warning("oneDNN int8 operators not usable (%s): int8 refused", exc)
        return False
    return True


def _saturation_probe() -> tuple[torch.Tensor, torch.Tensor]:
    """An int8 product whose u8 x s8 pair sums reach far past 16 bits, and its float32 result."""
    generator = torch.Generator().manual_seed(3)
    linear = probe_linear(48, 40)
    with torch.no_grad():
        linear.weight.copy_(0.5 + 0.5 * torch.rand(40, 48, generator=generator))
    x = 0.5 + 0.5 * torch.rand(3, 5, 48, generator=generator)
    return Int8Linear(linear, rows=16, out_dtype=torch.float32)(x), linear(x)


@functools.cache
def _adds_residual(dtype: torch.dtype) -> bool:
    """Whether oneDNN's int8 product adding a tensor, writing ``dtype``, agrees with product, then add.

    Per dtype, as layers write it (``polyemb.load``'s: the activations' dtype).
    """
    if not _supported():
        return False
    linear = probe_linear(48, 40)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 48, generator=generator)
    residual = torch.randn(3, 5, 40, generator=generator).to(dtype)
    layer = Int8Linear(linear, rows=16, out_dtype=dtype)
    try:
        with torch.inference_mode():
            got, expected = layer._product(x, residual), layer(x) + residual
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        # As in _supported(): a torch without this operator, or a dtype it has no kernel for
        # here (bf16 without bf16 units), keeps the add as a step of its own.
        logger.info("oneDNN int8 product with an added residual not usable (%s)", exc)
        return False
    return _close(got, expected)


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    error = (got.float() - expected).abs().max() / expected.abs().max()
    if not error <= _PROBE_TOLERANCE:
        logger.warning("oneDNN int8 product off by %.2g on a probe: int8 refused", error)
        return False
    return True


class Int8Linear(torch.nn.Module):
    """``activation(x @ weight.T + bias)``: int8 weights per output channel, ``x`` as u8 per call.

    Takes any float dtype, of any leading shape, quantized over its own range per call, or over
    ``input_range`` once fixed (:meth:`fix_input_range`); or u8 over ``input_range`` (a linked
    block's output, see :func:`link`). Returns ``out_dtype``, or u8 over ``output_range`` once
    linked.
    The weights are rounded to ``steps`` steps each side of 0 (:func:`weight_steps` for this CPU
    when None). The original weight is kept as ``float_weight`` only with ``keep_float`` (for
    :meth:`leave_out`, :meth:`smooth` and :class:`FloatChannels`, until :func:`calibrate` drops it); else it
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
        # (scale, zero point) of a u8 output, and of the input (a u8 one, see link(), or a
        # float one quantized over it, see fix_input_range()).
        self.output_range: tuple[float, int] | None = None
        self.input_range: tuple[float, int] | None = None
        # A block's outlier channels in float, handed on (out) or added (in): see FloatChannels.
        self.outliers_out: FloatChannels | None = None
        self.outliers_in: FloatChannels | None = None
        # Per input channel, what the input is divided by before it is quantized: see smooth().
        self.smoothing: torch.Tensor | None = None
        # Input columns whose weights are 0 in int8 (their part runs in float): see leave_out().
        self._left_out = torch.zeros(0, dtype=torch.long)
        self._smoothing_inverse: torch.Tensor | None = None

    def _quantize(self, weight: torch.Tensor) -> None:
        self._scales = (weight.abs().amax(dim=1) / self.steps).clamp(min=1e-12)
        quantized = torch.round(weight / self._scales[:, None]).clamp(-self.steps, self.steps).to(torch.int8)
        # oneDNN picks the packed layout for products of about this many rows.
        self._packed = torch.ops.onednn.qlinear_prepack(quantized, [self._rows, weight.shape[1]])

    def leave_out(self, channels: torch.Tensor) -> None:
        """Quantize the weights again with the input ``channels``' columns as 0 (none: every column).

        The smoothing factors (:meth:`smooth`) stay.

        Raises:
            InvalidInputError: The layer was made without ``keep_float``, or its float weight was
                dropped since.
        """
        if self.float_weight is None:
            raise InvalidInputError(f"{type(self).__name__}: no float weights kept to quantize again")
        self._left_out = channels
        self._quantize(self._kept_weight())

    def smooth(self, divisor: torch.Tensor | None) -> None:
        """Quantize the weights again with input channel j times ``divisor[j]``, and divide inputs by it.

        The product is the same in exact arithmetic; what changes is what int8 rounds. ``divisor``
        (float32, one positive value per input channel) moves the range of channels that reach far
        beyond the others into the weights (:func:`polyemb.quantize.calibration.smooth_inputs`
        chooses it; copied). None: no factors, inputs as they come. Columns left out
        (:meth:`leave_out`) stay out. A u8 input (a linked block's) is never divided: do not
        smooth a down-projection that will be linked.

        Raises:
            InvalidInputError: The layer was made without ``keep_float``, or its float weight was
                dropped since.
        """
        if self.float_weight is None:
            raise InvalidInputError(f"{type(self).__name__}: no float weights kept to quantize again")
        self.smoothing = None if divisor is None else divisor.detach().float().clone()
        self._smoothing_inverse = None if self.smoothing is None else 1.0 / self.smoothing
        self._quantize(self._kept_weight())

    def _smoothed(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` as float32, divided by the smoothing factors where there are some; never in place."""
        inverse = self._smoothing_inverse
        if inverse is None:
            return rows.float()
        if rows.dtype == torch.float32:
            return rows * inverse
        # Converted, then multiplied in place: 80 us for 2,048 x 384 bf16 on an Intel Xeon, where
        # one mixed-dtype multiplication took 169 (the conversion alone 56).
        return rows.float().mul_(inverse)

    def smoothed_weight(self) -> torch.Tensor:
        """The float weight (kept with ``keep_float``) as the smoothed inputs read it: times the factors."""
        if self.float_weight is None:
            raise InvalidInputError(f"{type(self).__name__}: no float weights kept")
        weight = self.float_weight.float()
        return weight if self.smoothing is None else weight * self.smoothing

    def _kept_weight(self) -> torch.Tensor:
        """What the int8 weights quantize: the float weight smoothed, the left-out columns 0."""
        weight = self.smoothed_weight().clone()
        weight[:, self._left_out] = 0.0
        return weight

    @property
    def takes_residual(self) -> bool:
        """Whether ``forward`` adds a residual in the product (float output, no activation, probed here)."""
        return self.output_range is None and self._activation == "none" and _adds_residual(self.out_dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The product of ``x`` (over ``input_range``, else its own range, unless u8) with the int8 weights.

        ``residual`` (the output's shape and dtype) is added in the product's last step, where
        :attr:`takes_residual`; else after it.
        """
        if residual is not None and not (self.takes_residual and residual.dtype == self.out_dtype):
            return self._product(x) + residual
        return self._product(x, residual)

    def _product(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The product, ``residual`` added as its last step where given (unchecked: see forward)."""
        out_dtype = None if self.output_range is not None else self.out_dtype  # None: u8
        out_scale, out_zero_point = self.output_range or (1.0, 0)
        if not x.numel():  # no range to quantize over
            empty = x.new_empty(*x.shape[:-1], self.out_features, dtype=out_dtype or torch.uint8)
            return empty if residual is None else empty + residual
        rows, (u8, scale, zero_point) = self._quantized(x)
        weights = (self._packed, self._scales, self._zero_points)
        out: torch.Tensor
        if residual is None:
            out = torch.ops.onednn.qlinear_pointwise(
                u8, scale, zero_point, *weights, self._bias, out_scale, out_zero_point, out_dtype,
                self._activation, [], self._algorithm,
            )  # fmt: skip
        else:  # added as the product's last step (the residual's own scale and zero point: 1, 0)
            out = torch.ops.onednn.qlinear_pointwise.binary(
                u8, scale, zero_point, *weights, residual.reshape(-1, self.out_features).contiguous(),
                self._bias, out_scale, out_zero_point, out_dtype, 1.0, 0, "add", 1.0,
                self._activation, [], self._algorithm,
            )  # fmt: skip
        if self.outliers_in is not None:
            self.outliers_in.add_to(out, x)
        result = out.reshape(*x.shape[:-1], self.out_features)
        if self.outliers_out is not None:
            self.outliers_out.hand(rows, result)
        return result

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """``x`` as 2-D rows (smoothed where it is float and they are read), and as u8 for the product."""
        rows = x.reshape(-1, self.in_features)
        if x.dtype == torch.uint8:  # a linked block's output, over its fixed range
            if self.input_range is None:
                raise InvalidInputError(f"{type(self).__name__}: a u8 input needs a range; see link()")
            return rows, (rows, *self.input_range)
        quantized = None if self.shared is None else self.shared.lookup(x)
        if quantized is None or self.outliers_out is not None:
            # What quantize_rows and the float channels (their weights smoothed alike) read.
            rows = self._smoothed(rows)
        if quantized is None:
            quantized = quantize_rows(rows, self.input_range)
            if self.shared is not None:
                self.shared.keep(x, quantized)
        return rows, quantized

    def fix_input_range(self, low: float, high: float) -> bool:
        """Quantize float inputs over ``[low, high]`` (widened to hold 0; of the inputs as smoothed).

        Returns False, and changes nothing, where the range has no steps (empty, or not finite).
        """
        steps = _steps(low, high)
        if steps is not None:
            self.input_range = steps
        return steps is not None

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        out = "u8 over a fixed range" if self.output_range is not None else self.out_dtype
        outliers = self.outliers_out or self.outliers_in
        in_float = f", {len(outliers.channels)} outlier channels in float" if outliers is not None else ""
        smoothed = ", inputs smoothed" if self.smoothing is not None else ""
        fixed = ", input over a fixed range" if self.input_range is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel, "
            f"activation={self._activation}, out={out}{in_float}{smoothed}{fixed}"
        )


def link(block: Int8Linear, down: Int8Linear, low: float, high: float) -> None:
    """Have ``block`` hand ``down`` its output as u8 over ``[low, high]`` (widened to hold 0).

    Values beyond the range are clipped to its ends. Where the range is empty (``low == high
    == 0``), nothing changes: ``down`` keeps quantizing what it gets per call.
    """
    steps = _steps(low, high)
    if steps is not None:
        block.output_range = down.input_range = steps
