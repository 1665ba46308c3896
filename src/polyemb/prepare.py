"""A model's files, settings and tokenizer without its weights: what ``load`` and ``describe`` share.

:func:`describe` gives the :class:`~polyemb.embedder.VectorSpec` (a store's key) that ``load``
would give, for a driver (Spark) that never loads the weights itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polyemb import finding, loading, windows
from polyemb.embedder import VectorSpec
from polyemb.errors import InvalidInputError, ModelLoadError
from polyemb.options import LONG_TEXTS, WEIGHT_PRECISIONS, LongTexts, Precision, WeightPrecision, check_choice

if TYPE_CHECKING:
    import torch

__all__ = ["Prepared", "choose_length", "describe", "long_text_setting", "precision_of", "prepare", "spec_of"]


@dataclass(frozen=True)
class Prepared:
    """A model's files, settings, tokenizer and config: all of loading but the weights."""

    files: finding.ModelFiles
    spec: loading.ModelSpec
    tokenizer: Any
    pad_id: int
    config: Any
    dim: int
    max_seq_length: int

    @property
    def specials(self) -> int:
        """Special tokens the tokenizer puts around one text."""
        return int(self.tokenizer.num_special_tokens_to_add(False))


def prepare(
    model: str | os.PathLike[str] | None,
    max_seq_length: int | None,
    revision: str | None,
    local_files_only: bool | None,
) -> Prepared:
    """Find the model and read everything of it but the weights, checking that the parts fit."""
    files = finding.find_model(model, revision=revision, local_files_only=local_files_only)
    spec = loading.read_spec(files.folder)
    tokenizer, pad_id, tokenizer_limit = loading.load_tokenizer(spec)
    config = loading.load_config(spec)
    dim = int(config.hidden_size)
    if spec.dimension is not None and spec.dimension != dim:
        raise ModelLoadError(
            f"the pooling config in {files.folder} says dimension {spec.dimension}, "
            f"but the transformer's hidden size is {dim}"
        )
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > int(config.vocab_size):
        raise ModelLoadError(
            f"the tokenizer in {spec.transformer_folder} has {vocab} tokens but the model's "
            f"embedding table only {config.vocab_size}: tokenizer and weights do not belong together"
        )
    limit = min(tokenizer_limit, position_limit(config, tokenizer_limit))
    length = choose_length(max_seq_length, spec.max_seq_length, limit)
    return Prepared(files, spec, tokenizer, pad_id, config, dim, length)


# Model types whose position ids start after the padding token's id (transformers'
# create_position_ids_from_input_ids), so that pad_token_id + 1 of their positions are never read.
_POSITIONS_AFTER_PADDING = frozenset(
    {
        "camembert",
        "data2vec-text",
        "ibert",
        "longformer",
        "luke",
        "mpnet",
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
    }
)


def position_limit(config: Any, default: int) -> int:
    """The tokens a transformer's position table lets it read: ``default`` where the config says nothing.

    ``max_position_embeddings``, less ``pad_token_id + 1`` for RoBERTa-like models (514 - 2 =
    512 for XLM-RoBERTa base): without that, a text of 513 or 514 tokens indexes past the table.
    """
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return default
    pad = getattr(config, "pad_token_id", None)
    if getattr(config, "model_type", None) in _POSITIONS_AFTER_PADDING and isinstance(pad, int):
        positions -= pad + 1
    return positions


def choose_length(asked: int | None, configured: int | None, limit: int) -> int:
    """The tokens per text: the one asked for (checked against the model's limit), else the model's."""
    if asked is None:
        return min(configured, limit) if configured is not None else limit
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 2:
        raise InvalidInputError(f"max_seq_length must be an int >= 2, got {asked!r}")
    if asked > limit:
        raise InvalidInputError(f"max_seq_length={asked} exceeds what this model takes ({limit} tokens)")
    return asked


def precision_of(asked: Precision, dtype: torch.dtype) -> WeightPrecision:
    """The weights' precision as ``Encoder.precision`` names it: ``"auto"`` resolved by its dtype."""
    import torch

    if asked != "auto":
        return asked
    return "fp32" if dtype == torch.float32 else "fp16"


def long_text_setting(
    long_texts: Any, stride: Any, max_seq_length: int, specials: int
) -> tuple[LongTexts, int]:
    """``(long_texts, stride)`` checked, the stride defaulted (:func:`polyemb.windows.default_stride`).

    With ``"truncate"`` and no stride asked for, a window too small for text is no error: the
    stride then only matters to ``encode_chunks``, which checks it.

    Raises:
        InvalidInputError: An unknown setting, or a stride windows of ``max_seq_length`` tokens cannot share.
    """
    mode: LongTexts = check_choice("long_texts", long_texts, LONG_TEXTS)
    room = max_seq_length - specials
    if stride is None:
        stride = max(0, min(windows.default_stride(max_seq_length), room - 1))
        if mode == "truncate":
            return mode, stride
    return mode, windows.check_stride(stride, max_seq_length, specials)


def spec_of(
    prepared: Prepared,
    *,
    precision: WeightPrecision,
    normalized: bool,
    long_texts: LongTexts,
    stride: int,
    fingerprint: str | None = None,
) -> VectorSpec:
    """The :class:`VectorSpec` of a prepared model's vectors; the stride only counts for ``"mean"``."""
    return VectorSpec(
        model_id=prepared.files.model_id,
        fingerprint=fingerprint if fingerprint is not None else finding.fingerprint(prepared.files),
        dim=prepared.dim,
        max_seq_length=prepared.max_seq_length,
        precision=precision,
        normalized=normalized,
        long_texts=long_texts,
        stride=stride if long_texts != "truncate" else None,
    )


def describe(
    model: str | os.PathLike[str] | None = None,
    *,
    precision: WeightPrecision = "fp32",
    max_seq_length: int | None = None,
    revision: str | None = None,
    normalize: bool = True,
    local_files_only: bool | None = None,
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> VectorSpec:
    """The :class:`VectorSpec` that ``load(...)`` would give, without loading the weights.

    For a driver (Spark) that needs the store key of the vectors its workers will compute.
    Arguments as for :func:`polyemb.load`; ``precision`` must be concrete, since ``"auto"`` depends
    on the device the vectors are computed on.
    """
    check_choice("precision", precision, WEIGHT_PRECISIONS)
    prepared = prepare(model, max_seq_length, revision, local_files_only)
    mode, chosen = long_text_setting(long_texts, stride, prepared.max_seq_length, prepared.specials)
    return spec_of(
        prepared,
        precision=precision,
        normalized=normalize or prepared.spec.normalize,
        long_texts=mode,
        stride=chosen,
    )
