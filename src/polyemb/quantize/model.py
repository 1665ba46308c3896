"""Which of a transformer's layers become int8 (:func:`quantize_linears`), and which pairs link."""

from __future__ import annotations

import collections
import logging
import re

import torch

from polyemb.errors import InvalidInputError
from polyemb.kernels import gelu_dense, replace_module
from polyemb.quantize.activations import SharedInput
from polyemb.quantize.linear import Int8Linear

__all__ = ["linked_pairs", "quantize_linears"]

logger = logging.getLogger(__name__)

_FEED_FORWARD = re.compile(r"(?:^|\.)layer\.(\d+)\.intermediate$")


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


def quantize_linears(model: torch.nn.Module, *, rows: int) -> int:
    """Replace, in place, the ``nn.Linear`` layers under the model's ``encoder`` by :class:`Int8Linear`.

    A feed-forward block that is exactly ``erf_gelu(dense(x))`` becomes one fused layer, which
    hands its down-projection float32 until :func:`calibrate` links them. Every layer keeps its
    float weight for :func:`calibrate` (to smooth inputs and to link), which drops it. The model
    must be on the CPU, in eval mode; the other layers return its dtype. ``rows``: the typical
    rows per product (tokens per batch), for the weights' packed layout. Returns how many
    layers now run in int8.

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
            replacements[name] = Int8Linear(module, rows=rows, out_dtype=dtype, keep_float=True)
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
