"""The Encoder: texts -> tokenize -> length-sorted batches -> forward -> mean-pool -> normalize.

Texts longer than ``max_seq_length`` tokens are truncated, or (``long_texts="mean"``, and always
in :meth:`Encoder.encode_chunks`) cut into windows (:mod:`polyemb.windows`) that share batches
with every other text's (:mod:`polyemb.batching`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from polyemb import chunks, finding, forking, kernels, loading, quantize, windows
from polyemb._platform import (
    available_cpus,
    keep_heap_between_batches,
    release_free_memory,
)
from polyemb.batching import (
    MAX_ROWS,
    TOKEN_BUDGET,
    check_batch_size,
    pad_multiple,
    plan_batches,
    run_batches,
)
from polyemb.defaults import default_encoder, set_default_encoder
from polyemb.embedder import TextEncoder, VectorSpec, check_texts
from polyemb.options import LongTexts, Precision, WeightPrecision
from polyemb.prepare import describe, long_text_setting, precision_of, prepare
from polyemb.progress import ProgressBar, progress_bar
from polyemb.quantize.sentences import SENTENCES as CALIBRATION_SENTENCES

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "MAX_ROWS",
    "TOKEN_BUDGET",
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
# After a call of at least this many texts, the C heap's free pages go back to the system
# (:func:`polyemb._platform.release_free_memory`): a trim took 6 to 8 ms after 5,000 MiniLM texts
# (and gave back about 100 MiB), where a call of 1,000 texts takes 1 to 5 s on 2 CPUs.
TRIM_MIN_TEXTS = 1_000
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


def cap_cpu_threads(cpus: int | None = None) -> None:
    """Run torch on at most ``cpus`` threads, and never more than this process's CPUs.

    For containers (a cgroup quota below the machine's cores) and Spark (a task's
    ``spark.task.cpus``): more threads than CPUs only contend. Never raises the count.
    """
    limit = available_cpus() if cpus is None else max(1, min(cpus, available_cpus()))
    if torch.get_num_threads() > limit:
        logger.info("capping torch threads from %d to %d CPUs", torch.get_num_threads(), limit)
        torch.set_num_threads(limit)


class Encoder(TextEncoder):
    """A loaded sentence-embedding model: ``encode`` turns texts into float32 vectors.

    Build one with :func:`polyemb.load`. One Encoder may be shared by many threads.

    Attributes:
        model_id: The hub id or folder the model was loaded from.
        revision: The hub commit loaded, or None for a local folder.
        dim: Length of each vector.
        max_seq_length: Tokens per text (or window of a longer text), special tokens included.
        long_texts: What ``encode`` makes of a longer text: ``"truncate"`` (its first window) or
            ``"mean"`` (all its windows, averaged).
        stride: Tokens consecutive windows share (``encode_chunks``' default, and ``"mean"``'s).
        device: The torch device the model runs on.
        dtype: The torch dtype of the weights (for int8, that of everything but its int8
            products: :func:`polyemb.quantize.activation_dtype`; pooling is always float32).
    """

    def __init__(
        self,
        *,
        files: finding.ModelFiles,
        model: torch.nn.Module,
        tokenizer: Any,
        pad_id: int,
        max_seq_length: int,
        normalizes: bool,
        dim: int,
        device: torch.device,
        dtype: torch.dtype,
        precision: WeightPrecision,
        long_texts: LongTexts = "truncate",
        stride: int | None = None,
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
        self._specials = int(tokenizer.num_special_tokens_to_add(False))
        self.long_texts, self.stride = long_text_setting(long_texts, stride, max_seq_length, self._specials)
        self._windower: windows.Windower | None = None  # made on first use
        loading.enable_truncation(tokenizer, max_seq_length)
        forking.register(self)

    def __copy__(self) -> Encoder:
        """Another Encoder of the same model (weights shared)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        forking.register(clone)
        return clone

    def __reduce__(self) -> Any:
        raise TypeError(
            "an Encoder cannot be pickled (its weights are laid out for this CPU or device): load it in "
            "each worker process, e.g. polyemb.load(...) in a process pool's initializer; a process "
            "forked from this one has it already"
        )

    def __repr__(self) -> str:
        mode = (
            "" if self.long_texts == "truncate" else f", long_texts={self.long_texts!r}, stride={self.stride}"
        )
        return (
            f"Encoder(model_id={self.model_id!r}, dim={self.dim}, max_seq_length="
            f"{self.max_seq_length}, device='{self.device}', precision={self.precision}{mode})"
        )

    @cached_property
    def fingerprint(self) -> str:
        """The exact model content: the hub commit, or ``sha256:...`` of a local folder's files."""
        return finding.fingerprint(self._files)

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
            long_texts=self.long_texts,
            stride=self.stride if self.long_texts != "truncate" else None,
        )

    @property
    def normalizes(self) -> bool:
        """Whether the model's own pipeline ends in a Normalize module (vectors always unit)."""
        return self._normalizes

    # ------------------------------------------------------------------ public

    def token_counts(self, texts: Iterable[str]) -> np.ndarray:
        """Tokens the model reads for each text (special tokens included, cut at ``max_seq_length``).

        What a forward pass costs is about proportional to these: ``polyemb bench`` turns them
        into tokens/s.
        """
        items = check_texts(texts, allow_none=False)
        encodings = windows.encode_batch(self._tokenizer, items, offsets=False, specials=True)
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))

    def encode_chunks(
        self,
        texts: Iterable[str | None],
        *,
        stride: int | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> pa.Table:
        """Every window of every text as a row, whatever ``long_texts`` is: for passage search.

        Windows of ``max_seq_length`` tokens, each with the special tokens, share ``stride``
        tokens (:mod:`polyemb.windows`); all texts' windows share batches. A text that fits in one
        window (``""`` too) is one chunk, its ``"truncate"`` vector; None gives no rows.

        Args:
            texts: Texts, None for missing ones.
            stride: Tokens consecutive windows share; None: the encoder's :attr:`stride`.
            batch_size: Windows per forward pass; None: by token budget.
            normalize: Scale every window vector to unit length.
            show_progress: A progress bar on stderr (texts); None: for large inputs on a terminal.

        Returns:
            A table (:mod:`polyemb.chunks`) of one row per window, by text then window: ``row``
            (the text's position), ``chunk`` (0, 1, ...), ``start``, ``end`` (``text[start:end]``
            is the window's text), ``tokens`` (special ones included) and ``vector``.

        Raises:
            InvalidInputError: An item neither a str nor None, or a stride windows cannot share.

        Example:
            >>> table = encoder.encode_chunks([article], stride=32)
            >>> [article[s:e] for s, e in zip(table["start"].to_pylist(), table["end"].to_pylist())]
        """
        items = check_texts(texts, allow_none=True)
        batch_size = check_batch_size(batch_size)
        chosen = windows.check_stride(
            self.stride if stride is None else stride, self.max_seq_length, self._specials
        )
        present, inverse, unique = chunks.distinct_present(items)
        parts: list[windows.EncodedWindows] = []
        with self._progress(len(unique), show_progress) as bar:
            for start in range(0, len(unique), TOKENIZE_CHUNK):
                batch = unique[start : start + TOKENIZE_CHUNK]
                with self._lock:
                    part = self._windows_of(batch, chosen, batch_size, normalize, offsets=True)
                parts.append(part)
                bar.update(len(batch))
        if len(unique) >= TRIM_MIN_TEXTS:
            release_free_memory()
        return chunks.chunk_table(
            windows.EncodedWindows.concat(parts, self.dim), present, inverse, self.provenance
        )

    # ------------------------------------------------------------------ pipeline

    def _progress(self, total: int, show_progress: bool | None) -> ProgressBar:
        return progress_bar(
            desc="encoding", unit="text", total=total, show=show_progress, quiet_below=PROGRESS_MIN_TEXTS
        )

    def _encode(
        self,
        items: list[str],
        *,
        batch_size: int | None,
        normalize: bool,
        show_progress: bool | None,
    ) -> np.ndarray:
        batch_size = check_batch_size(batch_size)
        index: dict[str, int] = {}
        inverse = np.fromiter(
            (index.setdefault(text, len(index)) for text in items), dtype=np.intp, count=len(items)
        )
        unique = list(index)
        vectors = np.empty((len(unique), self.dim), dtype=np.float32)
        truncated = np.zeros(len(unique), dtype=bool)
        with self._progress(len(unique), show_progress) as bar:
            for start in range(0, len(unique), TOKENIZE_CHUNK):
                chunk = unique[start : start + TOKENIZE_CHUNK]
                with self._lock:
                    done = self._encode_chunk(
                        chunk, vectors[start:], truncated[start:], batch_size, normalize
                    )
                    for count in done:
                        bar.update(count)
        if len(unique) >= TRIM_MIN_TEXTS:
            release_free_memory()
        if len(unique) == len(items):  # all distinct: inverse is the identity
            out = vectors
        else:
            out = vectors[inverse]
            truncated = truncated[inverse]
        n_truncated = int(truncated.sum())
        if n_truncated:
            logger.warning(
                "%d of %d texts were longer than max_seq_length=%d tokens and were truncated "
                "(load(..., long_texts='mean') reads them whole)",
                n_truncated,
                len(items),
                self.max_seq_length,
            )
        return out

    def _encode_chunk(
        self,
        texts: list[str],
        out: np.ndarray,
        truncated: np.ndarray,
        batch_size: int | None,
        normalize: bool,
    ) -> Iterator[int]:
        """Encode one chunk into ``out[:len(texts)]``, yielding the texts done as they are."""
        if self.long_texts == "mean":
            part = self._windows_of(texts, self.stride, batch_size, normalize, offsets=False)
            out[: len(texts)] = part.means(len(texts), normalize=normalize or self._normalizes)
            yield len(texts)
            return
        encodings = windows.encode_batch(self._tokenizer, texts, offsets=False, specials=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        truncated[: len(texts)] = [bool(e.overflowing) for e in encodings]
        yield from self._batches(lengths, lambda row: encodings[row].ids, out, batch_size, normalize)

    def _windows_of(
        self, texts: list[str], stride: int, batch_size: int | None, normalize: bool, *, offsets: bool
    ) -> windows.EncodedWindows:
        """Cut texts into windows and encode every window, all texts' windows batched together."""
        if self._windower is None:  # the caller holds the lock
            self._windower = windows.Windower(self._tokenizer)

        def run(lengths: np.ndarray, tokens_of: Callable[[int], np.ndarray], out: np.ndarray) -> None:
            for _ in self._batches(lengths, tokens_of, out, batch_size, normalize):
                pass

        return self._windower.encode(
            texts, window=self.max_seq_length, stride=stride, offsets=offsets, dim=self.dim, run=run
        )

    def _batches(
        self,
        lengths: np.ndarray,
        tokens_of: Callable[[int], Any],
        out: np.ndarray,
        batch_size: int | None,
        normalize: bool,
    ) -> Iterator[int]:
        """Rows of tokens through the model into ``out`` (:func:`polyemb.batching.run_batches`)."""
        forward = functools.partial(self._forward, normalize=normalize)
        return run_batches(
            lengths,
            tokens_of,
            forward,
            out,
            pad_id=self._pad_id,
            device_type=self.device.type,
            batch_size=batch_size,
            multiple=pad_multiple(self.device.type, self._precision),
            limit=self.max_seq_length,
        )

    def _forward(self, ids: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
        forking.warn_if_one_thread()
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
    long_texts: LongTexts = "truncate",
    stride: int | None = None,
) -> Encoder:
    """Load a sentence-embedding model for encoding.

    Args:
        model: A local folder or a Hugging Face hub id. None: ``$POLYEMB_MODEL`` if set, else
            ``AIDA-UPM/mstsb-paraphrase-multilingual-mpnet-base-v2``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:0"``, ...
        precision: Weight dtype: ``"auto"`` is fp32 on CPU and fp16 on GPUs; ``"fp32"``,
            ``"fp16"``, ``"bf16"``, or ``"int8"`` (x86 CPUs with AVX2, fastest with VNNI: the
            transformer layers' matrix products in int8, see :mod:`polyemb.quantize`). Pooling is always
            computed in float32. Only fp32 gives the same vectors on every CPU.
        max_seq_length: Tokens per text (special tokens included); None: the model's own
            setting (``sentence_bert_config.json``, else the tokenizer's).
        revision: Hub branch, tag or commit, e.g. ``"refs/pr/3"``.
        local_files_only: Never touch the network; None follows ``HF_HUB_OFFLINE``.
        long_texts: A text longer than ``max_seq_length`` tokens: ``"truncate"`` reads its first
            ``max_seq_length`` tokens (sentence-transformers' vectors); ``"mean"`` reads all of it,
            in windows of ``max_seq_length`` tokens, and averages their vectors weighted by their
            tokens. A text that fits in one window gets the same vector either way. Part of the
            vector store's key.
        stride: Tokens consecutive windows share (for ``"mean"`` and ``encode_chunks``); None: a
            quarter of ``max_seq_length``.

    Returns:
        The Encoder.

    Raises:
        ModelNotFoundError: The model is neither a folder nor reachable on the hub.
        ModelLoadError: A file of the model is missing or corrupt.
        UnsupportedModelError: The model needs something polyemb does not implement.
        InvalidInputError: A bad device, precision, max_seq_length, long_texts or stride.

    Example:
        >>> import polyemb
        >>> encoder = polyemb.load("/models/all-MiniLM-L6-v2")
        >>> encoder.encode(["a sentence"]).shape
        (1, 384)
    """
    torch_device = loading.resolve_device(device)
    dtype = loading.resolve_dtype(precision, torch_device)
    loading.check_precision_runs_here(precision, torch_device)
    prepared = prepare(model, max_seq_length, revision, local_files_only)
    long_text_setting(
        long_texts, stride, prepared.max_seq_length, prepared.specials
    )  # fail before the weights
    if torch_device.type == "cpu":
        cap_cpu_threads()
        if keep_heap_between_batches():
            logger.info("C heap kept between batches (polyemb._platform.keep_heap_between_batches)")
    transformer = loading.load_transformer(prepared.spec, prepared.config, torch_device, dtype)
    if precision == "int8":
        quantize.quantize_linears(transformer, rows=TOKEN_BUDGET["cpu"])
    if torch_device.type == "cpu":
        kernels.use_onednn(transformer, rows=TOKEN_BUDGET["cpu"])
    encoder = Encoder(
        files=prepared.files,
        model=transformer,
        tokenizer=prepared.tokenizer,
        pad_id=prepared.pad_id,
        max_seq_length=prepared.max_seq_length,
        normalizes=prepared.spec.normalize,
        dim=prepared.dim,
        device=torch_device,
        dtype=dtype,
        precision=precision_of(precision, dtype),
        long_texts=long_texts,
        stride=stride,
    )
    if precision == "int8":
        # Ranges of the activations int8 keeps as u8 between layers, from texts written for it
        # (a model with a short max_seq_length cuts some: no warning for that here).
        def run() -> np.ndarray:
            return encoder.encode(CALIBRATION_SENTENCES, show_progress=False)

        with _quiet_in_this_thread(logger):
            quantize.calibrate(transformer, run)
    if torch_device.type == "cpu":
        kernels.fuse_residuals(transformer)  # after calibration, which reads products without them
        release_free_memory()  # the float weights that packing and quantizing replaced
    return encoder


@contextlib.contextmanager
def _quiet_in_this_thread(target: logging.Logger) -> Iterator[None]:
    """Drop ``target``'s records from this thread (other threads' pass) while the block runs."""
    thread = threading.get_ident()

    def other_threads(record: logging.LogRecord) -> bool:
        return record.thread != thread

    target.addFilter(other_threads)
    try:
        yield
    finally:
        target.removeFilter(other_threads)
