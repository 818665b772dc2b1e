"""The paper's ICon classifier (SPEC 2.3 step 3, 2.5): a LoRA sequence classifier on the target LLM.

`train_lora_classifier` fine-tunes, once, in the calling process:
AutoModelForSequenceClassification with 2 labels built from the target causal LM's checkpoint
(the classification head is new and trained in full), with LoRA adapters (peft) on
`target_modules`. Inputs are the candidates' templated text (prompt [+ input] + response),
truncated to `max_length` tokens; the loss is the mean cross-entropy over an optimizer step of
`batch_size` x `grad_accum` rows, AdamW with a cosine schedule after a linear warmup. Row order
(per epoch), the head and LoRA initialisation and dropout are all seeded by the job seed, so a
rerun gives the same adapter bytes.

`score_pool` gives P(class 1) for every text in one linear pass, as a map over chunks of rows
through the engine's `parallel_map` (local processes, Spark tasks or Beam elements). Each work
item carries the model reference, the LoRA shape, the trained weights as safetensors *bytes*
(LoRA matrices and the head: megabytes even for an 8B model) and its chunk's texts; a worker
loads the base model once per process, loads the adapter bytes into it (again only when they
change) and scores its texts in length-sorted token-budget batches. The process that trained
the classifier scores with the trained model directly.

Nothing is ever downloaded: the model reference is resolved like every thresher model
(`thresher.models.loading`), with `local_files_only`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from thresher.common.device import resolve_device
from thresher.common.seeds import stable_hash
from thresher.common.threads import apply_torch_threads
from thresher.models.batching import TokenBatcher, move
from thresher.models.loading import ModelConfig, ModelError, _load_tokenizer, resolve_dtype, resolve_model_ref
from thresher.selectors.base import ParallelMap

METADATA_KEY = "thresher_icon_lora"  # safetensors metadata: base model, LoRA shape, training settings (JSON)
HEAD_NAMES = ("score", "classifier")  # the new classification head of decoder / encoder models


@dataclass(frozen=True)
class LoraSpec:
    """LoRA shape (SPEC 2.5: r = 8, alpha = 8, dropout 0.05 on q_proj and v_proj)."""

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def peft_config(self) -> Any:
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.SEQ_CLS, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules))


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning knobs (SPEC 2.5 defaults: 5 epochs, lr 5e-5, 8 x 16 rows a step, cosine, 3% warmup)."""

    epochs: int = 5
    lr: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 16
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 512
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass
class TrainedClassifier:
    """The trained weights (safetensors bytes of the LoRA matrices and head) and training stats."""

    adapter: bytes
    digest: str
    stats: dict[str, Any]


@dataclass
class ScoreTask:
    """One `parallel_map` work item: everything a worker needs to score a chunk of texts."""

    model: ModelConfig
    lora: LoraSpec
    adapter: bytes
    digest: str
    texts: list[str]
    max_length: int
    max_tokens_per_batch: int | None = None


@dataclass
class _Loaded:
    model: Any  # the peft-wrapped classifier
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    max_positions: int | None
    digest: str | None = None


# -- model building ---------------------------------------------------------------------------
def _max_positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Any:
    """Run with torch's global RNG seeded, restoring its state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (1 << 63))
        yield


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for a half-precision backbone (trainable weights stay float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def load_backbone(spec: ModelConfig, seed: int) -> tuple[Any, Any, torch.device, torch.dtype]:
    """A 2-label sequence classifier from the checkpoint `spec.ref` (a causal LM or a classifier).

    `spec.kind` must be `sequence_classification`. Only the classification head may be missing
    from the checkpoint (it is new, initialised under `seed`); any other missing weight is a
    `ModelError`.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if spec.kind != "sequence_classification":
        raise ValueError(f"icon lora classifier: model kind must be 'sequence_classification', got {spec.kind!r}")
    apply_torch_threads(spec.torch_threads)
    path = resolve_model_ref(spec.ref)
    if path.is_file() or not (path / "config.json").exists():
        raise ModelError(f"icon lora classifier: {path} is not a Hugging Face model folder (no config.json)")
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, num_labels=2,
                                            trust_remote_code=spec.trust_remote_code)
    except Exception as exc:
        raise ModelError(f"cannot read the model config at {path}: {type(exc).__name__}: {exc}") from exc
    tokenizer = _load_tokenizer(path, spec)
    config.pad_token_id = tokenizer.pad_token_id
    config.use_cache = False
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), _seeded(seed, device):
            warnings.simplefilter("ignore")
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path), config=config, dtype=dtype, local_files_only=True, ignore_mismatched_sizes=True,
                trust_remote_code=spec.trust_remote_code, output_loading_info=True)
    except ValueError as exc:
        raise ModelError(f"model at {path} ({type(config).__name__}) has no sequence-classification form: "
                         f"{exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", [])
               if k.split(".")[0] not in HEAD_NAMES and "position_ids" not in k]
    if missing:
        raise ModelError(f"model at {path} loaded as a sequence classifier lacks trained weights for "
                         f"{sorted(missing)[:6]}{' …' if len(missing) > 6 else ''}")
    model.to(device)
    return model, tokenizer, device, dtype


def check_target_modules(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """Fail clearly when no layer of `model` matches `targets` (peft's rule: the full module
    name or its dotted suffix), listing the names that could be targeted."""
    from transformers.pytorch_utils import Conv1D

    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))
             and n.split(".")[0] not in HEAD_NAMES]
    if any(n == t or n.endswith("." + t) for n in names for t in targets):
        return
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    raise ValueError(f"icon lora: target_modules {list(targets)} match no layer of {type(model).__name__}; "
                     f"its linear layers are named {leaves}; set selector.target_modules to some of them")


def wrap_lora(model: torch.nn.Module, lora: LoraSpec, seed: int, device: torch.device) -> Any:
    """The peft LoRA model (head trained in full); trainable weights are float32."""
    from peft import get_peft_model

    check_target_modules(model, lora.target_modules)
    with warnings.catch_warnings(), _seeded(stable_hash("icon-lora-init", seed), device):
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, lora.peft_config())
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return peft_model


def _batcher(tokenizer: Any, max_length: int, max_positions: int | None, budget: int) -> TokenBatcher:
    if max_positions is not None:
        max_length = min(max_length, max_positions)
    return TokenBatcher(tokenizer, max_length=max_length, max_tokens_per_batch=max(budget, max_length),
                        policy="truncate", mode="lm", prefetch=0)


def adapter_bytes(peft_model: Any, metadata: dict[str, str] | None = None) -> bytes:
    """The trainable weights (LoRA matrices and head) as safetensors bytes (float32, CPU)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in get_peft_model_state_dict(peft_model).items()}
    return save(state, metadata=metadata)


# -- training ---------------------------------------------------------------------------------
def train_lora_classifier(spec: ModelConfig, lora: LoraSpec, settings: TrainSettings, texts: Sequence[str],
                          labels: np.ndarray) -> TrainedClassifier:
    """Fine-tune the LoRA classifier on (text, label) rows; see the module docstring.

    The trained model also stays in this process's cache, so scoring here needs no reload.
    """
    labels = np.asarray(labels, dtype=bool)
    if len(texts) != len(labels) or not len(texts):
        raise ValueError(f"icon lora: {len(texts)} texts and {len(labels)} labels")
    t0 = time.perf_counter()
    seed = stable_hash("icon-lora", settings.seed)
    base, tokenizer, device, dtype = load_backbone(spec, seed)
    if settings.gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # no input-grad hook needed with frozen embeddings
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model = wrap_lora(base, lora, seed, device)
    positions = _max_positions(base.config)
    batcher = _batcher(tokenizer, settings.max_length, positions, 1)
    segments = [batcher.split(i, ids)[0] for i, ids in enumerate(batcher.encode(list(texts)))]
    y = torch.from_numpy(labels.astype(np.int64))
    trainable = [p for p in model.parameters() if p.requires_grad]
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    n = len(segments)
    steps_per_epoch = math.ceil(math.ceil(n / settings.batch_size) / settings.grad_accum)
    total_steps = settings.epochs * steps_per_epoch
    warmup = math.ceil(settings.warmup_ratio * total_steps)
    sched = get_cosine_schedule_with_warmup(opt, warmup, total_steps)
    losses: list[float] = []
    model.train()
    with _seeded(stable_hash("icon-lora-dropout", seed), device):
        for epoch in range(settings.epochs):
            order = np.random.default_rng(stable_hash("icon-lora-order", seed, epoch)).permutation(n)
            micro = [order[i: i + settings.batch_size] for i in range(0, n, settings.batch_size)]
            epoch_loss = 0.0
            for s in range(0, len(micro), settings.grad_accum):
                group = micro[s: s + settings.grad_accum]
                rows = sum(len(g) for g in group)
                for g in group:
                    batch = batcher.collate([segments[i] for i in g])
                    ids, mask = move(batch, device)
                    with _autocast(device, dtype):
                        logits = model(input_ids=ids, attention_mask=mask).logits
                    loss = F.cross_entropy(logits.float(), y[g].to(device), reduction="sum") / rows
                    loss.backward()
                    epoch_loss += float(loss.detach()) * rows
                if settings.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            losses.append(epoch_loss / n)
    model.eval()
    # one metadata key: safetensors writes several in no fixed order, and the bytes must be stable
    meta = {METADATA_KEY: json.dumps({"base_model": spec.ref, "lora": asdict(lora), "train": asdict(settings)},
                                     sort_keys=True)}
    adapter = adapter_bytes(model, meta)
    digest = hashlib.sha256(adapter).hexdigest()
    with _LOCK:
        _CACHE[(spec, lora)] = _Loaded(model, tokenizer, device, dtype, positions, digest)
    stats = {"train_rows": n, "positives": int(labels.sum()), "steps": total_steps, "warmup_steps": warmup,
             "epoch_loss": [round(v, 6) for v in losses], "trainable_params": int(sum(p.numel() for p in trainable)),
             "max_length": batcher.max_length, "seconds": round(time.perf_counter() - t0, 3),
             "adapter_sha256": digest, "adapter_bytes": len(adapter)}
    return TrainedClassifier(adapter, digest, stats)


# -- scoring (runs in workers) ----------------------------------------------------------------
_CACHE: dict[tuple[ModelConfig, LoraSpec], _Loaded] = {}
_LOCK = threading.Lock()


def _worker_model(task: ScoreTask) -> _Loaded:
    """The classifier for `task` in this process, with the task's adapter loaded."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load

    key = (task.model, task.lora)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            seed = stable_hash("icon-lora-worker", task.model.ref)  # any seed: every trained weight is replaced
            base, tokenizer, device, dtype = load_backbone(task.model, seed)
            model = wrap_lora(base, task.lora, seed, device)
            model.eval()
            hit = _Loaded(model, tokenizer, device, dtype, _max_positions(base.config))
            _CACHE[key] = hit
        if hit.digest != task.digest:
            state = load(task.adapter)
            result = set_peft_model_state_dict(hit.model, state)
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            if unexpected:
                raise ModelError(f"icon lora: the adapter does not fit {task.model.ref}: "
                                 f"unexpected weights {unexpected[:4]}")
            hit.digest = task.digest
        return hit


def score_chunk(task: ScoreTask) -> np.ndarray:
    """P(class 1) for each text of one work item (float64)."""
    w = _worker_model(task)
    budget = task.max_tokens_per_batch or (32768 if w.device.type == "cuda" else 2048)
    batcher = _batcher(w.tokenizer, task.max_length, w.max_positions, budget)
    out = np.full(len(task.texts), np.nan, dtype=np.float64)
    with torch.inference_mode(), _autocast(w.device, w.dtype):
        for batch in batcher.batches(task.texts):
            ids, mask = move(batch, w.device)
            logits = w.model(input_ids=ids, attention_mask=mask).logits.float()
            prob = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
            for seg, p in zip(batch.segments, prob):
                out[seg.doc] = float(p)
    return out


def score_pool(spec: ModelConfig, lora: LoraSpec, trained: TrainedClassifier, texts: Sequence[str],
               max_length: int, parallel_map: ParallelMap, chunk_rows: int = 2048,
               max_tokens_per_batch: int | None = None) -> np.ndarray:
    """P(class 1) for every text: one work item per `chunk_rows` texts, mapped by `parallel_map`."""
    tasks = [ScoreTask(spec, lora, trained.adapter, trained.digest, list(texts[lo: lo + chunk_rows]), max_length,
                       max_tokens_per_batch) for lo in range(0, len(texts), chunk_rows)]
    parts = parallel_map(score_chunk, tasks) if tasks else []
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def forget(spec: ModelConfig, lora: LoraSpec) -> None:
    """Drop this process's classifier for (spec, lora), e.g. the trained one once the pool is scored."""
    with _LOCK:
        hit = _CACHE.pop((spec, lora), None)
    if hit is not None and hit.device.type == "cuda":
        del hit
        torch.cuda.empty_cache()


def clear_cache() -> None:
    """Forget the classifiers held by this process (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()
