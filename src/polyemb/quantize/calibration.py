"""Fixing, once at load time, the ranges int8 keeps between layers, and its outlier channels in float."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

from polyemb.errors import InvalidInputError
from polyemb.quantize.activations import FloatChannels
from polyemb.quantize.linear import Int8Linear, link
from polyemb.quantize.model import linked_pairs
from polyemb.similarity import cosine

__all__ = [
    "LINKED_MIN_COSINE",
    "OUTLIER_FACTOR",
    "SMOOTHING",
    "calibrate",
    "fix_input_ranges",
    "outlier_channels",
    "smooth_inputs",
]

logger = logging.getLogger(__name__)

LINKED_MIN_COSINE = 0.99
"""The mean row cosine, linked against per call, below which :func:`calibrate` undoes its links."""

SMOOTHING = 0.7
"""How much of an input channel's range :func:`smooth_inputs` moves into the weights (alpha):
channel j is divided by ``x_j ** alpha / w_j ** (1 - alpha)``, ``x_j`` its largest value seen
and ``w_j`` the largest weight that reads it."""

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


def calibrate(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> int:
    """Fix the range of each feed-forward block's output into its down-projection: u8 between them.

    ``run`` encodes calibration texts (:mod:`polyemb.quantize.sentences` at load time) through the
    model as quantized by :func:`quantize_linears`, its down-projections computing in float32
    for this first call. Over it, each block's outlier channels (:func:`outlier_channels`) move
    to float (:class:`FloatChannels`), and its smallest output and the largest of its other
    channels become the range its output is handed on in (:func:`link`); larger values are
    clipped to it. The block then writes u8 instead of float32 (a quarter of the bytes) and its
    down-projection skips quantizing. ``run`` is called again once linked, and where its vectors
    moved from the first call's (a mean row cosine below :data:`LINKED_MIN_COSINE`: a model whose
    down-projection is not the first thing its output module does, or ranges that clip too
    much), or where a down-projection does not read its block's output as the block returned it,
    every link is undone, with a warning. Before this the inputs are smoothed
    (:func:`smooth_inputs`), and after it the layers that read a LayerNorm's output get fixed
    input ranges (:func:`fix_input_ranges`). Either way the float weights that
    :func:`quantize_linears` kept for this are dropped. Returns how many blocks were linked.

    On all-MiniLM-L6-v2 the texts' largest outputs per block of the last four layers were 17.6,
    13.8, 7.9 and 7.5 (before the outlier channels went to float), where 1,500 sentences of the
    11 languages' train files reached 17.7, 13.9, 8.2 and 9.4. Widening the ranges to spare
    those few values did not pay: mean row cosine to fp32 on those sentences 0.99378 with the
    ranges as seen, 0.99413 with them 10% wider, 0.99314 25% wider (per call: 0.99381); the
    gate's largest Spearman drop 0.0046 as seen, 0.0050 10% wider.
    """
    try:
        smooth_inputs(model, run)
        linked = _calibrate(model, run)
        fix_input_ranges(model, run)
        return linked
    finally:
        for module in model.modules():
            if isinstance(module, Int8Linear):
                module.float_weight = None


def fix_input_ranges(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> int:
    """Fix the u8 range of the int8 layers that read a LayerNorm's output: no range pass per call.

    Over one ``run`` of the calibration texts, each :class:`Int8Linear` whose input is, on every
    call, the output of one of the model's ``nn.LayerNorm`` modules (Q, K and V, the
    feed-forward blocks) records the smallest and largest value it quantizes (divided by its
    smoothing factors), and that becomes its ``input_range``; values beyond it are clipped to its
    ends, as a linked block's are. A LayerNorm output keeps its scale whatever the text; an
    attention context does not (attention concentrated on many copies of one token, as in
    ``"----"`` or a single word, took the attention output's input of all-MiniLM-L6-v2 to 2 to 3
    times the calibration range), so the other layers keep a range per call. ``run`` is called
    again with the ranges fixed, and where its vectors moved from the first call's (a mean row
    cosine below :data:`LINKED_MIN_COSINE`), every range is undone, with a warning. Returns how
    many layers now quantize over a fixed range.

    On all-MiniLM-L6-v2 (Intel Xeon with AMX, 1,500 train sentences, in one process taking
    turns with ranges per call): 1.05x on English and 1.06x on the 11 languages with every
    layer fixed, the same mean row cosine to fp32 (0.99894 -> 0.99891, 0.99868 -> 0.99868);
    but then separators, repeated punctuation and single words fell to a row cosine of 0.93 to
    0.98 (a review's texts; per call: above 0.994). With the attention outputs per call, see
    docs/performance.md.
    """
    norms = [module for module in model.modules() if isinstance(module, torch.nn.LayerNorm)]
    layers = [module for module in model.modules() if isinstance(module, Int8Linear)]
    normalized: dict[int, torch.Tensor] = {}  # the LayerNorm outputs of the run, by id
    seen: dict[int, tuple[float, float]] = {}
    other: set[int] = set()  # layers that read anything else at least once

    def keep(_: torch.nn.Module, __: object, out: torch.Tensor) -> None:
        normalized[id(out)] = out

    def record(layer: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        if not (isinstance(layer, Int8Linear) and x.numel() and x.is_floating_point()):
            return
        if normalized.get(id(x)) is not x:
            other.add(id(layer))
            return
        rows = layer._smoothed(x.reshape(-1, layer.in_features))
        low, high = (bound.item() for bound in torch.aminmax(rows))
        if math.isfinite(low) and math.isfinite(high):
            before = seen.get(id(layer), (low, high))
            seen[id(layer)] = (min(before[0], low), max(before[1], high))

    hooks = [norm.register_forward_hook(keep) for norm in norms]
    hooks += [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        per_call = _hooked(run, hooks)
    finally:
        normalized.clear()
    chosen = [layer for layer in layers if id(layer) in seen and id(layer) not in other]
    fixed = [layer for layer in chosen if layer.fix_input_range(*seen[id(layer)])]
    if not fixed:
        return 0
    why = _moved(per_call, run, "fixed input ranges")
    if why is not None:
        for layer in fixed:
            layer.input_range = None
        logger.warning("int8: %s: inputs are quantized over their own range per call instead", why)
        return 0
    logger.info("int8: %d layers quantize their input over a range fixed at load", len(fixed))
    return len(fixed)


def smooth_inputs(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> bool:
    """Divide each input channel of the layers that quantize per call by a factor put into their weights.

    The inputs of Q, K, V and of the feed-forward blocks are LayerNorm outputs, where a few
    channels reach far beyond the rest (in all-MiniLM-L6-v2 and BERT-like models generally),
    and one u8 range over all channels spends most of its steps on them. Over one ``run`` of
    the calibration texts, each layer that reads a float input (not the down-projections that
    :func:`calibrate` links) records the largest magnitude per channel, ``x_j``; the layers that
    share one input (Q, K and V) share one factor, from the largest weight over them that reads
    channel j, ``w_j``: ``x_j ** SMOOTHING / w_j ** (1 - SMOOTHING)`` (:meth:`Int8Linear.smooth`;
    the idea is SmoothQuant's, Xiao et al. 2023; there it is folded into the LayerNorm, which
    here also feeds the residual, so the division runs in the pass that converts the input to
    float32 for quantizing). The factors are kept only where they bring the calibration
    texts' vectors closer to those of the float layers (their mean row cosine, over the whole
    model: all the factors are kept, or none). Returns whether they were kept.

    On all-MiniLM-L6-v2, the 11 STS dev files (``polyemb check-precision``, Intel Xeon with AMX):
    mean row cosine to fp32 0.99523 -> 0.99869, min 0.9854 -> 0.9956, largest Spearman drop
    0.0057 (zh, which failed the gate) -> 0.0013 (ja). Alpha 0.3, 0.5, 0.7 and 0.85 on the ru
    and zh files gave mean row cosines of 0.99697, 0.99805, 0.99831 and 0.99816.
    """
    pairs = linked_pairs(model)
    downs = {id(down) for _, down in pairs}
    layers = [
        module
        for module in model.modules()
        if isinstance(module, Int8Linear) and module.float_weight is not None and id(module) not in downs
    ]
    if not layers:
        return False
    reference, plain, peaks = _inputs_seen(model, layers, run)
    smoothed = _smooth_groups(layers, peaks)
    if not smoothed:
        return False
    try:
        before, after = float(cosine(plain, reference).mean()), float(cosine(run(), reference).mean())
    except InvalidInputError:  # no text gave a vector: nothing to compare
        before = after = math.nan
    if after >= before:
        logger.info(
            "int8: inputs of %d layers smoothed (mean row cosine to float %.5f -> %.5f)",
            len(smoothed),
            before,
            after,
        )
        return True
    for layer in smoothed:
        layer.smooth(None)
    logger.info(
        "int8: smoothing inputs did not bring the vectors closer to float (%.5f -> %.5f): undone",
        before,
        after,
    )
    return False


def _smooth_groups(layers: list[Int8Linear], peaks: dict[int, torch.Tensor]) -> list[Int8Linear]:
    """Smooth ``layers`` by their input ``peaks`` (by ``id``), one factor per shared input.

    Returns the layers smoothed.
    """
    # One factor for the layers that share a quantization cache (Q, K and V under one parent):
    # any of them may quantize the input that the next finds in the cache, divided by its own
    # factor. The factor comes from the largest input over them (in MPNet the output projection
    # shares the parent and the cache, not the input; it never hits, and shares the factor).
    groups: dict[int, list[Int8Linear]] = {}
    for layer in layers:
        if id(layer) in peaks:
            groups.setdefault(id(layer.shared if layer.shared is not None else layer), []).append(layer)
    smoothed = []
    for group in groups.values():
        divisor = _divisor(torch.stack([peaks[id(layer)] for layer in group]).amax(dim=0), group)
        if divisor is not None:
            for layer in group:
                layer.smooth(divisor)
                smoothed.append(layer)
    return smoothed


def _divisor(x_peak: torch.Tensor, group: list[Int8Linear]) -> torch.Tensor | None:
    """One factor per input channel for ``group`` (layers that read one input), or None."""
    weights = [layer.float_weight for layer in group if layer.float_weight is not None]
    w_peak = torch.stack([weight.float().abs().amax(dim=0) for weight in weights]).amax(dim=0)
    if not (x_peak.isfinite().all() and w_peak.isfinite().all()) or not (
        x_peak.max() > 0 and w_peak.max() > 0
    ):
        return None
    # A channel the texts hardly reached (or a column of zero weights) is not divided by a tiny
    # number: later texts that do reach it would then overflow the range.
    x_peak = x_peak.clamp(min=x_peak.max().item() * _SMALLEST)
    w_peak = w_peak.clamp(min=w_peak.max().item() * _SMALLEST)
    return (x_peak**SMOOTHING / w_peak ** (1.0 - SMOOTHING)).float()


# The smallest channel peak, as a share of the largest, that smooth_inputs takes as it is.
_SMALLEST = 1e-2


def _inputs_seen(
    model: torch.nn.Module, layers: list[Int8Linear], run: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[int, torch.Tensor]]:
    """``run()``'s vectors with every int8 layer computing in float, then as it is.

    Also each of ``layers``' largest input magnitude per channel (by ``id``), over the second run.
    """
    peaks: dict[int, torch.Tensor] = {}

    def record(layer: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        if x.numel() and x.is_floating_point():
            peak = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            peaks[id(layer)] = peak if id(layer) not in peaks else torch.maximum(peaks[id(layer)], peak)

    def in_float(layer: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        if not isinstance(layer, Int8Linear) or layer.float_weight is None or not args[0].is_floating_point():
            return out
        # In the weights' dtype, as the bf16 and fp32 paths compute (float32 products of XLM-R
        # base's shape took 3 s of the load on an Intel Xeon, bf16 ones a fraction of it).
        weight = layer.float_weight
        bias = None if layer._bias is None else layer._bias.to(weight.dtype)
        product = torch.nn.functional.linear(args[0].to(weight.dtype), weight, bias)
        if layer._activation == "gelu":
            product = torch.nn.functional.gelu(product)
        return product.to(out.dtype)

    every = [module for module in model.modules() if isinstance(module, Int8Linear)]
    reference = _hooked(run, [layer.register_forward_hook(in_float) for layer in every])
    plain = _hooked(run, [layer.register_forward_pre_hook(record) for layer in layers])
    return reference, plain, {key: peak for key, peak in peaks.items() if peak.isfinite().all()}


def _moved(before: np.ndarray, run: Callable[[], np.ndarray], change: str) -> str | None:
    """Why ``run()``'s vectors, after ``change``, are too far from ``before`` to keep it; else None.

    Too far: a mean row cosine below :data:`LINKED_MIN_COSINE`, or no vectors to compare.
    """
    try:
        moved = float(cosine(before, run()).mean())
    except InvalidInputError as exc:
        return str(exc)
    if moved >= LINKED_MIN_COSINE:
        return None
    return f"{change} moved the calibration texts' vectors (mean row cosine {moved:.4f})"


def _hooked(run: Callable[[], np.ndarray], hooks: list[torch.utils.hooks.RemovableHandle]) -> np.ndarray:
    """``run()`` with ``hooks`` in place, removed after it, also when it raises."""
    try:
        return run()
    finally:
        for hook in hooks:
            hook.remove()


def _calibrate(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> int:
    pairs = linked_pairs(model)
    if not pairs:
        return 0
    unlinked, seen = _outputs_seen(pairs, run)
    for block, down in pairs:
        if id(block) in seen:
            _split_and_link(block, down, *seen[id(block)])
    why = _moved(unlinked, run, "fixed ranges")
    if why is not None:
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
    vectors = _hooked(run, hooks)
    return vectors, {
        key: (low, peak) for key, (low, peak) in seen.items() if math.isfinite(low) and peak.isfinite().all()
    }


def _split_and_link(block: Int8Linear, down: Int8Linear, low: float, peak: torch.Tensor) -> None:
    """Put the block's outlier channels in float, and link the two over the other channels' range."""
    channels = outlier_channels(peak)
    if len(channels) and block.float_weight is not None and down.float_weight is not None:
        down.leave_out(channels)
        # The block hands the float channels its input as it quantizes it: smoothed.
        block.outliers_out = down.outliers_in = FloatChannels(
            block.smoothed_weight(), block._bias, down.float_weight, channels, down.out_dtype
        )
        peak = peak.clone()
        peak[channels] = -math.inf
    link(block, down, low, peak.max().item())
