"""Model id or folder -> weights, tokenizer, sentence-transformers settings, device and dtype.

Everything about *finding* and *reading* a model lives here; the encoder only runs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from polyemb.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from polyemb.options import PRECISIONS, Precision, WeightPrecision

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "ContentHash",
    "ModelFiles",
    "ModelSpec",
    "find_model",
    "fingerprint",
    "load_config",
    "load_tokenizer",
    "load_transformer",
    "model_files",
    "read_spec",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "AIDA-UPM/mstsb-paraphrase-multilingual-mpnet-base-v2"
MODEL_ENV = "POLYEMB_MODEL"

_DTYPES: dict[WeightPrecision, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.float32,  # float32 weights, then int8 matrix products (polyemb.quantize)
}

# Files a text-embedding model needs from a hub repository (weights are chosen separately).
_HUB_PATTERNS = [
    "config.json",
    "modules.json",
    "sentence_*_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "*Pooling/config.json",
]
_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]
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

_HINT = (
    "Point polyemb at a local model folder instead: polyemb.load('/path/to/model'), "
    "`--model /path/to/model` on the command line, or the environment variable "
    f"{MODEL_ENV}=/path/to/model. Any sentence-transformers folder works (one with config.json, "
    "tokenizer.json and weights), e.g. one saved by SentenceTransformer.save() on a machine "
    "that reaches the hub."
)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are, and which model they are."""

    model_id: str
    folder: Path
    revision: str | None  # the hub commit, None for a local folder


@dataclass(frozen=True)
class ModelSpec:
    """What a model's sentence-transformers files say about encoding with it."""

    transformer_folder: Path
    max_seq_length: int | None
    do_lower_case: bool
    normalize: bool
    dimension: int | None


# --------------------------------------------------------------------------- finding


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (flag or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags
    )


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")
    )


def find_model(
    model: str | os.PathLike[str] | None,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> ModelFiles:
    """Turn a model argument into a local folder, downloading from the hub when allowed.

    Args:
        model: A local folder, a hub id, or None for ``$POLYEMB_MODEL`` or the default model.
        revision: Hub branch, tag or commit (``refs/pr/3`` works); ignored for folders.
        local_files_only: Never touch the network. None follows ``HF_HUB_OFFLINE``.

    Returns:
        The model's id, local folder and hub commit.

    Raises:
        ModelNotFoundError: The folder does not exist, or the hub id is neither cached nor
            downloadable. The message says how to point at a local folder.
    """
    if model is None:
        model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    model_id = os.fspath(model)
    if not model_id.strip():
        raise InvalidInputError("model is an empty string; give a hub id or a folder path")
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return ModelFiles(model_id=model_id, folder=folder.resolve(), revision=None)
    if folder.exists():
        raise ModelNotFoundError(f"model {model_id!r} is a file, not a folder. {_HINT}")
    if _looks_like_path(model_id):
        raise ModelNotFoundError(f"model folder {model_id!r} does not exist. {_HINT}")
    offline = _offline() if local_files_only is None else local_files_only
    return _from_hub(model_id, revision, offline)


def _from_hub(repo_id: str, revision: str | None, offline: bool) -> ModelFiles:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if offline:
        problem = "offline mode is on (HF_HUB_OFFLINE or local_files_only)"
    else:
        try:
            # One metadata request, no retries: an unreachable hub fails in well under a second.
            info = HfApi().model_info(repo_id, revision=revision)
        except GatedRepoError as exc:
            raise ModelNotFoundError(
                f"model {repo_id!r} is gated on the hub: accept its terms and log in "
                f"(`hf auth login`), or download it elsewhere. {_HINT}"
            ) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            where = f" at revision {revision!r}" if revision else ""
            raise ModelNotFoundError(
                f"model {repo_id!r}{where} is not on the Hugging Face Hub. {_HINT}"
            ) from exc
        except Exception as exc:  # any transport error (httpx, ssl, socket) means "unreachable"
            problem = f"the hub is not reachable ({type(exc).__name__}: {_first_line(exc)})"
        else:
            files = [sibling.rfilename for sibling in info.siblings or []]
            patterns = _HUB_PATTERNS + _weight_patterns(repo_id, files)
            path = snapshot_download(repo_id, revision=info.sha or revision, allow_patterns=patterns)
            return _hub_files(repo_id, Path(path))
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder, not in the Hugging Face cache, and {problem}. {_HINT}"
        ) from exc
    return _hub_files(repo_id, Path(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _weight_patterns(repo_id: str, files: list[str]) -> list[str]:
    top = set(files)
    for name in _WEIGHT_FILES:
        if name in top:
            return [name]
        if f"{name}.index.json" in top:
            stem = name.split(".")[0]
            return [f"{name}.index.json", f"{stem}-*"]
    raise ModelLoadError(
        f"the hub repository {repo_id!r} has no model.safetensors or pytorch_model.bin at its "
        f"top level; found: {sorted(f for f in files if '/' not in f)}"
    )


def _hub_files(repo_id: str, folder: Path) -> ModelFiles:
    # A hub snapshot folder is named by its commit hash: the exact revision that was loaded.
    return ModelFiles(model_id=repo_id, folder=folder, revision=folder.name)


# What of a model folder determines its vectors: configs, tokenizer files and weights. The
# fingerprint hashes exactly these files and Spark ships exactly these, so a worker never loads
# a file that the fingerprint did not see.
_CONTENT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt")


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that make its vectors, in path order."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix in _CONTENT_SUFFIXES and path.name != "README.md" and path.is_file()
    )


class ContentHash:
    """The sha256 id of a model's files, fed file by file: what :func:`fingerprint` gives a folder.

    For code that reads the files anyway (Spark ships them), so that the id is of the bytes it read.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, relative: str, data: bytes = b"") -> None:
        """Start the next file (its path relative to the model folder), with its first bytes."""
        self._digest.update(relative.encode())
        self._digest.update(data)

    def update(self, data: bytes) -> None:
        """More bytes of the current file."""
        self._digest.update(data)

    def value(self) -> str:
        """``sha256:`` and 16 hex digits."""
        return "sha256:" + self._digest.hexdigest()[:16]


def fingerprint(files: ModelFiles) -> str:
    """A short id of the model's exact content: the hub commit, else a sha256 of its files."""
    if files.revision:
        return files.revision
    digest = ContentHash()
    for path in model_files(files.folder):
        digest.add(path.relative_to(files.folder).as_posix())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.value()


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
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but MPS is not available")
    return chosen


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype to load weights in: ``"auto"`` -> fp32 on CPU, fp16 on GPUs; else the named precision."""
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if precision not in _DTYPES:
        raise InvalidInputError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    return _DTYPES[precision]


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
            f"cannot load the tokenizer from {folder} ({', '.join(present)}): {_first_line(exc)}"
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
        raise UnsupportedModelError(f"cannot read {config_path}: {_first_line(exc)}") from exc


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
        (folder / name).is_file() or (folder / f"{name}.index.json").is_file() for name in _WEIGHT_FILES
    ):
        raise ModelLoadError(f"no model.safetensors or pytorch_model.bin in {folder}")

    def load(attention: str) -> torch.nn.Module:
        model: torch.nn.Module = quiet_transformers(
            lambda: AutoModel.from_pretrained(
                folder,
                config=config,
                dtype=dtype,
                attn_implementation=attention,
                trust_remote_code=False,
                local_files_only=True,
                weights_only=True,
            )
        )
        return model

    try:
        try:
            model = load("sdpa")
        except ValueError as exc:
            if "sdpa" not in str(exc).lower():
                raise
            logger.info("%s has no SDPA attention in transformers; using eager attention", folder)
            model = load("eager")
    except Exception as exc:  # transformers raises many types for a bad file; name it
        weights = [p.name for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"}]
        raise ModelLoadError(
            f"cannot load the weights in {folder} ({', '.join(weights) or 'none found'}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    model.eval()
    return model.to(device)


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
