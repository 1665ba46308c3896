"""The Encoder: texts -> tokenize -> length-sorted batches -> forward -> mean-pool -> normalize."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from polyemb import kernels, loading, quantize
from polyemb._platform import available_cpus
from polyemb.embedder import VectorSpec, check_texts, place_nulls, replace_surrogates
from polyemb.errors import InvalidInputError, ModelLoadError
from polyemb.options import WEIGHT_PRECISIONS, Precision, WeightPrecision, check_choice

__all__ = [
    "Encoder",
    "available_cpus",
    "cap_cpu_threads",
    "default_encoder",
    "describe",
    "load",
    "mean_pool",
    "plan_batches",
    "set_default_encoder",
]

logger = logging.getLogger(__name__)

# Texts tokenized at a time: bounds the memory held by token lists for huge inputs while
# leaving enough texts per chunk that length-sorting makes padding negligible.
TOKENIZE_CHUNK = 16_384
# Default work per forward pass when the caller sets no batch_size: a token budget (rows x
# padded length) and a row cap, per device type.
TOKEN_BUDGET = {"cpu": 2_048, "cuda": 65_536, "mps": 16_384}
MAX_ROWS = {"cpu": 128, "cuda": 1_024, "mps": 256}
# Show a progress bar by default only when there is this much to do (and stderr is a terminal).
PROGRESS_MIN_TEXTS = 5_000


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors that the attention mask marks as real, in float32.

    Args:
        token_embeddings: (batch, tokens, dim) hidden states, any float dtype.
        attention_mask: (batch, tokens), 1 for real tokens and 0 for padding.

    Returns:
        (batch, dim) float32 mean of the unmasked token vectors.
    """
    mask = attention_mask.to(torch.float32).unsqueeze(1)  # (batch, 1, tokens)
    summed = torch.bmm(mask, token_embeddings.to(torch.float32)).squeeze(1)
    counts = mask.sum(dim=2).clamp(min=1e-9)
    return summed / counts


def plan_batches(lengths: np.ndarray, *, max_tokens: int, max_rows: int) -> list[tuple[int, int]]:
    """Split rows sorted by decreasing length into ``[start, end)`` batches.

    Each batch holds at most ``max_rows`` rows and at most ``max_tokens`` tokens once padded to
    its first (longest) row, and always at least one row.
    """
    batches: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        rows = max(1, min(max_rows, max_tokens // max(1, int(lengths[start]))))
        end = min(n, start + rows)
        batches.append((start, end))
        start = end
    return batches


def cap_cpu_threads(cpus: int | None = None) -> None:
    """Run torch on at most ``cpus`` threads, and never more than this process's CPUs.

    For containers (a cgroup quota below the machine's cores) and Spark (a task's
    ``spark.task.cpus``): more threads than CPUs only contend. Never raises the count.
    """
    limit = available_cpus() if cpus is None else max(1, min(cpus, available_cpus()))
    if torch.get_num_threads() > limit:
        logger.info("capping torch threads from %d to %d CPUs", torch.get_num_threads(), limit)
        torch.set_num_threads(limit)


class Encoder:
    """A loaded sentence-embedding model: ``encode`` turns texts into float32 vectors.

    Build one with :func:`polyemb.load`. One Encoder may be shared by many threads.

    Attributes:
        model_id: The hub id or folder the model was loaded from.
        revision: The hub commit loaded, or None for a local folder.
        dim: Length of each vector.
        max_seq_length: Tokens per text, special tokens included; longer texts are truncated.
        device: The torch device the model runs on.
        dtype: The torch dtype of the weights (float32 for int8, whose activations are float32;
            pooling is always float32).
    """

    def __init__(
        self,
        *,
        files: loading.ModelFiles,
        model: torch.nn.Module,
        tokenizer: Any,
        pad_id: int,
        max_seq_length: int,
        normalizes: bool,
        dim: int,
        device: torch.device,
        dtype: torch.dtype,
        precision: WeightPrecision,
    ) -> None:
        self._files = files
        self._model = model
        self._tokenizer = tokenizer
        self._pad_id = pad_id
        self._normalizes = normalizes
        # One chunk (tokenize + forward passes) at a time: torch already spreads a pass over every
        # core and the tokenizer does the same, so concurrent chunks would only contend for the
        # cores (and for GPU memory). Callers on other threads wait, idle, for their turn.
        self._lock = threading.Lock()
        self.model_id = files.model_id
        self.revision = files.revision
        self.max_seq_length = max_seq_length
        self.dim = dim
        self.device = device
        self.dtype = dtype
        self._precision: WeightPrecision = precision
        loading.enable_truncation(tokenizer, max_seq_length)

    def __repr__(self) -> str:
        return (
            f"Encoder(model_id={self.model_id!r}, dim={self.dim}, max_seq_length="
            f"{self.max_seq_length}, device='{self.device}', precision={self.precision})"
        )

    @cached_property
    def fingerprint(self) -> str:
        """The exact model content: the hub commit, or ``sha256:...`` of a local folder's files."""
        return loading.fingerprint(self._files)

    @property
    def provenance(self) -> str:
        """``model_id@fingerprint``: store it beside vectors to know which model made them."""
        return f"{self.model_id}@{self.fingerprint}"

    @property
    def folder(self) -> Path:
        """The local folder the model was read from (a hub model's cached snapshot)."""
        return self._files.folder

    @property
    def precision(self) -> WeightPrecision:
        """The weights' precision as ``load`` names it: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``."""
        return self._precision

    def vector_spec(self, *, normalize: bool = True) -> VectorSpec:
        """What decides the vectors ``encode(..., normalize=normalize)`` gives (a store's key)."""
        return VectorSpec(
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            dim=self.dim,
            max_seq_length=self.max_seq_length,
            precision=self.precision,
            normalized=normalize or self._normalizes,
        )

    @property
    def normalizes(self) -> bool:
        """Whether the model's own pipeline ends in a Normalize module (vectors always unit)."""
        return self._normalizes

    # ------------------------------------------------------------------ public

    def encode(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Encode texts into an ``(n, dim)`` C-contiguous float32 array, rows in input order.

        Identical texts are encoded once. ``""`` and whitespace-only texts get the model's
        vector for its special tokens alone. Texts longer than ``max_seq_length`` tokens are
        truncated, and one warning per call says how many were. Lone surrogates (which
        cannot be UTF-8 encoded) are replaced by U+FFFD.

        Args:
            texts: Any sequence or iterable of str.
            batch_size: Texts per forward pass. None: batches sized by a token budget for the
                device, which keeps short texts in large batches and long ones in small.
            normalize: Scale every vector to unit length (then a dot product is the cosine).
                A model whose pipeline ends in Normalize returns unit vectors either way.
            show_progress: A progress bar on stderr; None shows one for large inputs when
                stderr is a terminal.

        Returns:
            float32 array of shape (len(texts), dim).

        Raises:
            InvalidInputError: An item is not a str (the message names its position and type).

        Example:
            >>> vectors = encoder.encode(["Hola mundo", "Hello world"])
            >>> float(vectors[0] @ vectors[1])  # cosine, since rows are unit length
        """
        items = check_texts(texts, allow_none=False)
        return self._encode(items, batch_size=batch_size, normalize=normalize, show_progress=show_progress)

    def encode_nullable(
        self,
        texts: Iterable[str | None],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode texts where ``None`` marks a missing value (SQL NULL): the adapters' entry point.

        Returns:
            ``(vectors, valid)``: vectors as :meth:`encode` gives them with all-zero rows where
            the text was None, and a bool array that is False exactly there.

        Raises:
            InvalidInputError: An item is neither a str nor None.
        """
        items = check_texts(texts, allow_none=True)
        return place_nulls(
            items,
            self.dim,
            lambda present: self._encode(
                present, batch_size=batch_size, normalize=normalize, show_progress=show_progress
            ),
        )

    # ------------------------------------------------------------------ pipeline

    def _encode(
        self,
        items: list[str],
        *,
        batch_size: int | None,
        normalize: bool,
        show_progress: bool | None,
    ) -> np.ndarray:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidInputError(f"batch_size must be a positive int or None, got {batch_size!r}")
        index: dict[str, int] = {}
        inverse = np.fromiter(
            (index.setdefault(text, len(index)) for text in items), dtype=np.intp, count=len(items)
        )
        unique = list(index)
        vectors = np.empty((len(unique), self.dim), dtype=np.float32)
        truncated = np.zeros(len(unique), dtype=bool)
        if show_progress is None:
            disable: bool | None = None if len(unique) >= PROGRESS_MIN_TEXTS else True
        else:
            disable = not show_progress
        with tqdm(total=len(unique), unit="text", desc="encoding", disable=disable) as bar:
            for start in range(0, len(unique), TOKENIZE_CHUNK):
                chunk = unique[start : start + TOKENIZE_CHUNK]
                with self._lock:
                    done = self._encode_chunk(
                        chunk, vectors[start:], truncated[start:], batch_size, normalize
                    )
                    for count in done:
                        bar.update(count)
        if len(unique) == len(items):  # all distinct: inverse is the identity
            out = vectors
        else:
            out = vectors[inverse]
            truncated = truncated[inverse]
        n_truncated = int(truncated.sum())
        if n_truncated:
            logger.warning(
                "%d of %d texts were longer than max_seq_length=%d tokens and were truncated",
                n_truncated,
                len(items),
                self.max_seq_length,
            )
        return out

    def _tokenize(self, texts: list[str]) -> list[Any]:
        try:
            return self._tokenizer.encode_batch_fast(texts)  # type: ignore[no-any-return]
        except TypeError:
            # Lone surrogates cannot cross into Rust as UTF-8.
            cleaned = [replace_surrogates(text) for text in texts]
            return self._tokenizer.encode_batch_fast(cleaned)  # type: ignore[no-any-return]

    def _encode_chunk(
        self,
        texts: list[str],
        out: np.ndarray,
        truncated: np.ndarray,
        batch_size: int | None,
        normalize: bool,
    ) -> Iterator[int]:
        """Encode one chunk into ``out[:len(texts)]``, yielding the rows done after each batch."""
        encodings = self._tokenize(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        truncated[: len(texts)] = [bool(e.overflowing) for e in encodings]
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
        kind = self.device.type if self.device.type in TOKEN_BUDGET else "cuda"
        if batch_size is None:
            plan = plan_batches(sorted_lengths, max_tokens=TOKEN_BUDGET[kind], max_rows=MAX_ROWS[kind])
        else:
            plan = plan_batches(
                sorted_lengths, max_tokens=batch_size * int(sorted_lengths[0]), max_rows=batch_size
            )
        for start, end in plan:
            rows = order[start:end]
            width = int(sorted_lengths[start])
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                tokens = encodings[row].ids
                ids[i, : len(tokens)] = tokens
                mask[i, : len(tokens)] = 1
            out[rows] = self._forward(ids, mask, normalize)
            yield len(rows)

    def _forward(self, ids: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        attention_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=attention_mask)[0]
            pooled = mean_pool(hidden, attention_mask)
            if normalize or self._normalizes:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled.cpu().numpy()


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "auto",
    precision: Precision = "auto",
    max_seq_length: int | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> Encoder:
    """Load a sentence-embedding model for encoding.

    Args:
        model: A local folder or a Hugging Face hub id. None: ``$POLYEMB_MODEL`` if set, else
            ``AIDA-UPM/mstsb-paraphrase-multilingual-mpnet-base-v2``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:0"``, ...
        precision: Weight dtype: ``"auto"`` is fp32 on CPU and fp16 on GPUs; ``"fp32"``,
            ``"fp16"``, ``"bf16"``, or ``"int8"`` (CPUs with AVX-512 VNNI: the transformer
            layers' matrix products in int8, see :mod:`polyemb.quantize`). Pooling is always
            computed in float32. Only fp32 gives the same vectors on every CPU.
        max_seq_length: Tokens per text (special tokens included); None: the model's own
            setting (``sentence_bert_config.json``, else the tokenizer's).
        revision: Hub branch, tag or commit, e.g. ``"refs/pr/3"``.
        local_files_only: Never touch the network; None follows ``HF_HUB_OFFLINE``.

    Returns:
        The Encoder.

    Raises:
        ModelNotFoundError: The model is neither a folder nor reachable on the hub.
        ModelLoadError: A file of the model is missing or corrupt.
        UnsupportedModelError: The model needs something polyemb does not implement.
        InvalidInputError: A bad device, precision or max_seq_length.

    Example:
        >>> import polyemb
        >>> encoder = polyemb.load("/models/all-MiniLM-L6-v2")
        >>> encoder.encode(["a sentence"]).shape
        (1, 384)
    """
    torch_device = loading.resolve_device(device)
    dtype = loading.resolve_dtype(precision, torch_device)
    if precision == "int8":
        quantize.check_int8_supported(torch_device)
    prepared = _prepare(model, max_seq_length, revision, local_files_only)
    if torch_device.type == "cpu":
        cap_cpu_threads()
    transformer = loading.load_transformer(prepared.spec, prepared.config, torch_device, dtype)
    if precision == "int8":
        quantize.quantize_linears(transformer)
    if torch_device.type == "cpu":
        kernels.use_onednn(transformer, rows=TOKEN_BUDGET["cpu"])
    return Encoder(
        files=prepared.files,
        model=transformer,
        tokenizer=prepared.tokenizer,
        pad_id=prepared.pad_id,
        max_seq_length=prepared.max_seq_length,
        normalizes=prepared.spec.normalize,
        dim=prepared.dim,
        device=torch_device,
        dtype=dtype,
        precision=_precision_of(precision, dtype),
    )


def describe(
    model: str | os.PathLike[str] | None = None,
    *,
    precision: WeightPrecision = "fp32",
    max_seq_length: int | None = None,
    revision: str | None = None,
    normalize: bool = True,
    local_files_only: bool | None = None,
) -> VectorSpec:
    """The :class:`VectorSpec` that ``load(...)`` would give, without loading the weights.

    For a driver (Spark) that needs the store key of the vectors its workers will compute.
    Arguments as for :func:`load`; ``precision`` must be concrete, since ``"auto"`` depends on the
    device the vectors are computed on.
    """
    check_choice("precision", precision, WEIGHT_PRECISIONS)
    prepared = _prepare(model, max_seq_length, revision, local_files_only)
    return VectorSpec(
        model_id=prepared.files.model_id,
        fingerprint=loading.fingerprint(prepared.files),
        dim=prepared.dim,
        max_seq_length=prepared.max_seq_length,
        precision=precision,
        normalized=normalize or prepared.spec.normalize,
    )


@dataclass(frozen=True)
class _Prepared:
    """A model's files, settings, tokenizer and config: all of loading but the weights."""

    files: loading.ModelFiles
    spec: loading.ModelSpec
    tokenizer: Any
    pad_id: int
    config: Any
    dim: int
    max_seq_length: int


def _prepare(
    model: str | os.PathLike[str] | None,
    max_seq_length: int | None,
    revision: str | None,
    local_files_only: bool | None,
) -> _Prepared:
    files = loading.find_model(model, revision=revision, local_files_only=local_files_only)
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
    limit = min(tokenizer_limit, int(getattr(config, "max_position_embeddings", tokenizer_limit)))
    length = _choose_length(max_seq_length, spec.max_seq_length, limit)
    return _Prepared(files, spec, tokenizer, pad_id, config, dim, length)


def _precision_of(asked: Precision, dtype: torch.dtype) -> WeightPrecision:
    if asked != "auto":
        return asked
    return "fp32" if dtype == torch.float32 else "fp16"


def _choose_length(asked: int | None, configured: int | None, limit: int) -> int:
    if asked is None:
        return min(configured, limit) if configured is not None else limit
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 2:
        raise InvalidInputError(f"max_seq_length must be an int >= 2, got {asked!r}")
    if asked > limit:
        raise InvalidInputError(f"max_seq_length={asked} exceeds what this model takes ({limit} tokens)")
    return asked


_default_lock = threading.Lock()
_default: Encoder | None = None


def default_encoder() -> Encoder:
    """The process-wide Encoder the adapters use when given none.

    Made on first use by :func:`load` with no arguments (so ``$POLYEMB_MODEL`` applies), or
    whatever :func:`set_default_encoder` set.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = load()
        return _default


def set_default_encoder(encoder: Encoder | None) -> None:
    """Make ``encoder`` the process-wide default; None forgets it (the next use loads again)."""
    global _default
    if encoder is not None and not isinstance(encoder, Encoder):
        raise InvalidInputError(f"set_default_encoder takes an Encoder or None, got {type(encoder).__name__}")
    with _default_lock:
        _default = encoder
