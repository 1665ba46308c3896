"""What every embedder shares, torch-free: the protocol, text checks, NULLs, the VectorSpec.

The VectorSpec names a model's vectors (a vector store's key).

The :class:`~polyemb.encoder.Encoder` (torch) and the vector store's
:class:`~polyemb.store.StoredEncoder` both derive from :class:`TextEncoder`, and a store can be
opened, read and maintained without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from polyemb.errors import InvalidInputError, ModelMismatchError
from polyemb.options import LongTexts, WeightPrecision

__all__ = [
    "VECTOR_FORMAT",
    "Embedder",
    "TextEncoder",
    "VectorSpec",
    "check_same_model",
    "check_texts",
    "place_nulls",
    "replace_surrogates",
]

_SURROGATES = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    """``text`` with lone surrogates (which UTF-8 cannot hold) replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", text)


def check_same_model(first: str | None, second: str | None, what: str) -> None:
    """Refuse to compare vectors of two different models; unknown provenance (None) passes.

    Two provenances name the same model when their content fingerprints (after the last ``@``)
    agree, so the same model loaded from two folders is one model.

    Raises:
        ModelMismatchError: Naming both models.
    """
    if first is None or second is None:
        return
    if first.rsplit("@", 1)[-1] != second.rsplit("@", 1)[-1]:
        raise ModelMismatchError(
            f"{what} compares vectors of two different models, {first} and {second}: their "
            "cosines mean nothing. Encode both sides with one model"
        )


def place_nulls(
    items: list[str | None], dim: int, encode: Callable[[list[str]], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, valid)`` for texts where None is a missing value: the one place NULLs are put.

    ``encode`` gets the present texts in order; their vectors go to their rows, and the rows of
    None are all zeros with ``valid`` False.
    """
    valid = np.fromiter((text is not None for text in items), dtype=bool, count=len(items))
    if valid.all():
        return encode(items), valid  # type: ignore[arg-type]
    vectors = np.zeros((len(items), dim), dtype=np.float32)
    if valid.any():
        vectors[valid] = encode([text for text in items if text is not None])
    return vectors, valid


def check_texts(texts: Iterable[Any], *, allow_none: bool) -> list[Any]:
    """Materialize ``texts`` as a list, checking every item is a str (or None if allowed)."""
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(
            f"texts is a single {type(texts).__name__}; pass a list of texts, e.g. encode([text])"
        )
    try:
        items = list(texts)
    except TypeError as exc:  # None, a number: not a sequence of texts at all
        raise InvalidInputError(f"texts is {type(texts).__name__}, not a list of texts") from exc
    for position, text in enumerate(items):
        if isinstance(text, str) or (text is None and allow_none):
            continue
        shown = "None" if text is None else f"{type(text).__name__} ({_short(text)})"
        hint = "; use encode_nullable() to keep missing texts as missing rows" if text is None else ""
        raise InvalidInputError(f"texts[{position}] is {shown}, not a str{hint}", position=position)
    return items


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Embedder(Protocol):
    """What the adapters encode with: an :class:`Encoder`, or one behind a vector store.

    :meth:`polyemb.store.VectorStore.bind` gives the second; both give the same vectors.
    """

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    @property
    def provenance(self) -> str:
        """``model_id@fingerprint`` of the model that makes the vectors."""
        ...

    def encode(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Texts -> ``(n, dim)`` float32 vectors, as :meth:`Encoder.encode`."""
        ...

    def encode_nullable(
        self,
        texts: Iterable[str | None],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Texts with None -> ``(vectors, valid)``, as :meth:`Encoder.encode_nullable`."""
        ...


class TextEncoder(ABC):
    """An :class:`Embedder` made of one ``_encode`` of checked texts: the public methods it shares.

    Subclasses set ``dim`` and implement ``_encode`` (distinct or not, in order, no None).
    """

    dim: int

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
        truncated, and one warning per call says how many were; with ``long_texts="mean"``
        they are read whole instead, as the token-weighted mean of their windows' vectors. Lone
        surrogates (which cannot be UTF-8 encoded) are replaced by U+FFFD. Behind a vector
        store, only the texts it lacks are embedded (and stored).

        Args:
            texts: Any sequence or iterable of str.
            batch_size: Rows (texts or windows) per forward pass. None: batches sized by a token
                budget for the device, which keeps short texts in large batches and long ones in small.
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

    @abstractmethod
    def _encode(
        self, items: list[str], *, batch_size: int | None, normalize: bool, show_progress: bool | None
    ) -> np.ndarray:
        """The vectors of ``items`` (checked str), in order."""


# Bump when polyemb changes how it computes vectors from the same model and settings: every
# store key changes with it, so no stored vector of the old computation is read again.
VECTOR_FORMAT = 1


@dataclass(frozen=True)
class VectorSpec:
    """Everything that decides the vectors a model gives: a vector store's key and provenance.

    Attributes:
        model_id: The hub id or folder the model was loaded from (not part of the key: the same
            content under another name gives the same vectors).
        fingerprint: The model's exact content (hub commit, or sha256 of its files).
        dim: Length of each vector.
        max_seq_length: Tokens per text, or per window of a longer text.
        precision: The weights' precision.
        normalized: Whether vectors are scaled to unit length.
        pooling: How token vectors become one (polyemb implements ``"mean"``).
        long_texts: What a longer text's vector is (:data:`polyemb.options.LongTexts`).
        stride: Tokens consecutive windows share, for ``long_texts="mean"``; None for ``"truncate"``.
    """

    model_id: str
    fingerprint: str
    dim: int
    max_seq_length: int
    precision: WeightPrecision
    normalized: bool
    pooling: str = "mean"
    long_texts: LongTexts = "truncate"
    stride: int | None = None

    @property
    def provenance(self) -> str:
        """``model_id@fingerprint``, as :attr:`Encoder.provenance`."""
        return f"{self.model_id}@{self.fingerprint}"

    def content(self) -> dict[str, Any]:
        """The fields the key is made of (all but the model's name), with the vector format.

        The long-text setting and its stride count only when not the default ``"truncate"``, so
        the keys of vectors made before the setting existed stay what they were.
        """
        fields = asdict(self)
        del fields["model_id"]
        if self.long_texts == "truncate":
            del fields["long_texts"], fields["stride"]
        return {**fields, "format": VECTOR_FORMAT}

    @property
    def key(self) -> str:
        """``"k"`` and 16 hex digits of the SHA-256 of :meth:`content` as sorted JSON.

        Changes whenever any field does. The letter keeps Spark's and DuckDB's partition type
        inference from reading a key of digits as a number.
        """
        text = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return "k" + hashlib.sha256(text.encode()).hexdigest()[:16]
