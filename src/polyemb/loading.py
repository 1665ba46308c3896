"""A model's files -> weights, tokenizer, sentence-transformers settings, device and dtype (and its checks).

Everything about *reading* a model lives here (finding its files: :mod:`polyemb.finding`); the
encoder only runs it.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from polyemb import attention
from polyemb._platform import hardware_flags, has_bf16_units, onednn_cap
from polyemb.errors import (
    InvalidInputError,
    ModelLoadError,
    UnsupportedModelError,
)
from polyemb.finding import WEIGHT_FILES, first_line
from polyemb.options import PRECISIONS, Precision, WeightPrecision
from polyemb.quantize import activation_dtype, check_int8_supported

__all__ = [
    "ModelSpec",
    "check_precision_runs_here",
    "load_config",
    "load_tokenizer",
    "load_transformer",
    "read_spec",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

_DTYPES: dict[WeightPrecision, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

# A tokenizer needs its vocabulary: without one of these, transformers would quietly build an
# empty default tokenizer from config.json alone.
_VOCAB_FILES = [
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
]
_NO_LIMIT = 1_000_000  # tokenizers say "no limit" with a huge model_max_length


@dataclass(frozen=True)
class ModelSpec:
    """What a model's sentence-transformers files say about encoding with it."""

    transformer_folder: Path
    max_seq_length: int | None
    do_lower_case: bool
    normalize: bool
    dimension: int | None


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def _module_kind(entry: dict[str, Any]) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def read_spec(folder: Path) -> ModelSpec:
    """Read ``modules.json``, ``sentence_bert_config.json`` and the pooling config.

    A folder without ``modules.json`` is a plain transformers model: mean pooling, no
    normalization, the tokenizer's max length.

    Raises:
        UnsupportedModelError: A module other than Transformer -> mean Pooling -> [Normalize].
        ModelLoadError: A config file is unreadable or malformed.
    """
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return ModelSpec(folder, None, False, False, None)
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {modules_path}: {exc}") from exc
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(f"{modules_path} should hold a list of module objects")
    kinds = [_module_kind(m) for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedModelError(
            f"{modules_path} lists the modules {kinds}; polyemb encodes Transformer -> "
            "Pooling (mean) -> optional Normalize and does not implement the others"
        )
    transformer_folder = folder / str(modules[0].get("path", ""))
    settings: dict[str, Any] = {}
    for config in sorted(transformer_folder.glob("sentence_*_config.json")):
        settings = _read_json(config)
        break
    dimension = _check_pooling(folder / str(modules[1].get("path", "")) / "config.json")
    max_len = settings.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or max_len <= 0):
        raise ModelLoadError(f"max_seq_length in {transformer_folder} is {max_len!r}, not a positive int")
    return ModelSpec(
        transformer_folder=transformer_folder,
        max_seq_length=max_len,
        do_lower_case=bool(settings.get("do_lower_case", False)),
        normalize=len(modules) == 3,
        dimension=dimension,
    )


_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _check_pooling(path: Path) -> int | None:
    """Check the pooling config asks for mean pooling (both ST config formats); return its dim."""
    if not path.is_file():
        raise ModelLoadError(f"the pooling module's config {path} is missing")
    config = _read_json(path)
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in _LEGACY_MODES.items() if config.get(key)]
        mode = modes[0] if len(modes) == 1 else modes or "mean"
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode != "mean":
        raise UnsupportedModelError(f"{path} asks for pooling {mode!r}; polyemb implements mean pooling only")
    if config.get("include_prompt") is False:
        raise UnsupportedModelError(f"{path} sets include_prompt=false, which polyemb does not implement")
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    return int(dim) if isinstance(dim, int) else None


# --------------------------------------------------------------------------- loading


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA, then MPS, then CPU; anything else as torch reads it."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(
            f"device {device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc
    if chosen.type not in ("cpu", "cuda", "mps"):  # xla, meta...: failed later, in torch's words
        raise InvalidInputError(
            f"device {device!r} is not one polyemb runs on; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but MPS is not available")
    return chosen


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype to load weights in: ``"auto"`` -> fp32 on CPU, fp16 on GPUs; else the named precision."""
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if precision == "int8":  # int8 matrix products; the rest in this dtype (polyemb.quantize)
        return activation_dtype()
    if precision not in _DTYPES:
        raise InvalidInputError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    return _DTYPES[precision]


def check_precision_runs_here(precision: Precision, device: torch.device) -> None:
    """Refuse int8 where it cannot run (``quantize.check_int8_supported``), and warn where bf16 is slow.

    bf16 on a CPU without bfloat16 units (or with oneDNN capped below them) runs on torch's
    generic kernels: loaded as asked, with a warning that says why and what to use instead.

    Raises:
        InvalidInputError: int8 asked for where it cannot run.
    """
    if precision == "int8":
        check_int8_supported(device)
    if precision == "bf16" and device.type == "cpu" and not has_bf16_units():
        capped = bool(onednn_cap()) and has_bf16_units(hardware_flags())
        logger.warning(
            "precision='bf16' %s runs on torch's generic kernels, far slower than fp32 "
            "(all-MiniLM-L6-v2 on an AMD EPYC Zen 3: 0.15x); use 'fp32', or 'int8' for speed",
            f"with oneDNN capped at {onednn_cap()}, below this CPU's bfloat16 units,"
            if capped
            else "on a CPU without bfloat16 units (AVX512-BF16 or AMX)",
        )


def load_tokenizer(spec: ModelSpec) -> tuple[Any, int, int]:
    """Load the fast tokenizer's Rust backend, configured once for truncation.

    Returns:
        ``(tokenizer, pad_id, limit)``: a ``tokenizers.Tokenizer`` private to the caller
        (never reconfigured afterwards, so concurrent calls are safe), the padding id, and
        the tokenizer's own max length (or ``_NO_LIMIT``).
    """
    from tokenizers import Tokenizer, normalizers
    from transformers import AutoTokenizer

    folder = spec.transformer_folder
    if not any((folder / name).is_file() for name in _VOCAB_FILES):
        raise ModelLoadError(f"the tokenizer is missing from {folder}: none of {_VOCAB_FILES} is there")
    try:
        wrapper = quiet_transformers(
            lambda: AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        )
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        present = [name for name in _VOCAB_FILES if (folder / name).is_file()]
        raise ModelLoadError(
            f"cannot load the tokenizer from {folder} ({', '.join(present)}): {first_line(exc)}"
        ) from exc
    if not getattr(wrapper, "is_fast", False):
        raise UnsupportedModelError(
            f"the tokenizer in {folder} is not a fast (Rust) tokenizer; polyemb needs tokenizer.json"
        )
    backend = Tokenizer.from_str(wrapper.backend_tokenizer.to_str())
    if spec.do_lower_case:
        # Lowercasing is idempotent, so prepending it is safe even if the tokenizer already does.
        parts = [normalizers.Lowercase()]
        if backend.normalizer is not None:
            parts.append(backend.normalizer)
        backend.normalizer = normalizers.Sequence(parts)
    backend.no_padding()
    backend.no_truncation()
    pad_id = wrapper.pad_token_id if wrapper.pad_token_id is not None else 0
    limit = int(min(wrapper.model_max_length, _NO_LIMIT))
    return backend, int(pad_id), limit


def enable_truncation(tokenizer: Any, max_length: int, side: str = "right") -> None:
    """Truncate at max_length tokens, special tokens included, as transformers does."""
    tokenizer.enable_truncation(max_length=max_length, stride=0, strategy="longest_first", direction=side)


def load_config(spec: ModelSpec) -> Any:
    """The transformer's ``config.json`` (no weights, no code from the folder)."""
    from transformers import AutoConfig

    config_path = spec.transformer_folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} is missing: not a transformers model folder")
    try:
        return AutoConfig.from_pretrained(
            spec.transformer_folder, trust_remote_code=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnsupportedModelError(f"cannot read {config_path}: {first_line(exc)}") from exc


def load_transformer(
    spec: ModelSpec, config: Any, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Load the transformer through transformers' safe paths, in eval mode on ``device``.

    Safetensors first; a pickle (``pytorch_model.bin``) only with ``weights_only=True``, which
    cannot run code. No code from the folder ever runs (``trust_remote_code=False``).
    """
    from transformers import AutoModel

    folder = spec.transformer_folder
    if not any(
        (folder / name).is_file() or (folder / f"{name}.index.json").is_file() for name in WEIGHT_FILES
    ):
        raise ModelLoadError(f"no model.safetensors or pytorch_model.bin in {folder}")

    # Mean pooling reads the last hidden states only: a pooler (BERT's dense layer and tanh over
    # the first token) would run on every batch for nothing.
    no_pooler = {"add_pooling_layer": False} if _takes_pooling_argument(config) else {}

    def load(implementation: str) -> torch.nn.Module:
        model: torch.nn.Module = quiet_transformers(
            lambda: AutoModel.from_pretrained(
                folder,
                config=config,
                dtype=dtype,
                attn_implementation=implementation,
                trust_remote_code=False,
                local_files_only=True,
                weights_only=True,
                **no_pooler,
            )
        )
        return model

    # polyemb.attention where it pays off; then SDPA, then eager attention, for a model whose
    # transformers class takes neither.
    short = attention.pays_off(device, dtype) and _takes_registered_attention(config)
    choices = [attention.register(), "sdpa", "eager"] if short else ["sdpa", "eager"]
    try:
        for choice, fallback in zip(choices, [*choices[1:], None], strict=True):
            try:
                model = load(choice)
                break
            except ValueError as exc:
                if fallback is None or not _refuses_attention(exc, choice):
                    raise
                logger.info("%s takes no %s attention in transformers; using %s", folder, choice, fallback)
    except Exception as exc:  # transformers raises many types for a bad file; name it
        weights = [p.name for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"}]
        raise ModelLoadError(
            f"cannot load the weights in {folder} ({', '.join(weights) or 'none found'}): "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    model.eval()
    return model.to(device)


def _refuses_attention(exc: ValueError, implementation: str) -> bool:
    """Whether transformers refused to load with ``implementation`` (and another may do).

    It names the implementation ("... does not support ... polyemb_short") or, for SDPA, says
    "does not support an attention implementation through torch.nn.functional.
    scaled_dot_product_attention" (MPNet and DeBERTa-v2 in transformers 5, which then take eager).
    """
    message = str(exc)
    return implementation in message or "does not support an attention implementation" in message


def _model_class(config: Any) -> type | None:
    """The transformers class ``AutoModel`` loads for ``config``; None where it has none."""
    from transformers import AutoModel

    try:
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, AttributeError, ValueError):
        return None
    # A few configs map to several classes (Funnel: a tuple), chosen by the config's architecture.
    return model_class if isinstance(model_class, type) else None


def _takes_pooling_argument(config: Any) -> bool:
    """Whether the model class for ``config`` can be built without its pooler (``add_pooling_layer``).

    Those classes (BERT, XLM-RoBERTa, MPNet, ...) check for a missing pooler in their forward;
    others are loaded as they are.
    """
    model_class = _model_class(config)
    if model_class is None:
        return False
    try:
        return "add_pooling_layer" in inspect.signature(model_class).parameters
    except (TypeError, ValueError):
        return False


def _takes_registered_attention(config: Any) -> bool:
    """Whether the model class for ``config`` runs attention through transformers' registry.

    Classes that do not (MPNet, DeBERTa-v2) would load under a registered name and run their own
    attention: they keep SDPA or eager, as before.
    """
    return bool(getattr(_model_class(config), "_supports_attention_backend", False))


_T = TypeVar("_T")


def quiet_transformers(make: Callable[[], _T]) -> _T:
    """Run a transformers loader without its progress bars and load reports."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return make()
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
