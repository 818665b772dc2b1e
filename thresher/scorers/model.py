"""Pieces shared by the model scorers: common parameters, per-worker state, blank-text checks."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from thresher.common.device import resolve_cpu_bf16_autocast
from thresher.models.batching import TokenBatcher
from thresher.models.loading import LoadedModel, ModelConfig, ModelKind, load_model
from thresher.scorers.base import ScorerParams

# reasons written next to a null score
REASON_EMPTY = "empty"  # text empty or whitespace only
REASON_TOO_SHORT = "too_short"  # fewer tokens than the score needs
REASON_TRUNCATED = "truncated"  # scored, but only the first max_length tokens


class ModelScorerParams(ScorerParams):
    """Job-spec keys every HF-model scorer takes."""

    model: str = Field(..., description="local path, package:NAME/SUB, special name, or cached hub id")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    cpu_bf16_autocast: Literal["auto"] | bool = Field(
        "auto", description="bf16 autocast of the forward on CPU: auto (only where the CPU runs bf16 natively, "
        "AVX-512-BF16/AMX or Arm BF16; an AVX2-only CPU emulates it at several times the fp32 cost) | true | false")
    torch_threads: int | None = Field(None, gt=0, description="torch threads in this worker")
    trust_remote_code: bool = Field(False, description="let transformers run code shipped with the model folder")
    pad_token: str | None = Field(None, description="pad token to use when the tokenizer has none (default: eos)")
    max_length: int | None = Field(None, gt=1, description="tokens per model row (default: per scorer)")
    max_tokens_per_batch: int | None = Field(None, gt=0, description="padded tokens per batch (default 2048 CPU, 32768 GPU)")
    max_batch_size: int | None = Field(
        None, gt=0, description="most documents per batch (default: limited only by max_tokens_per_batch)")
    long_doc_policy: Literal["chunk", "truncate"] = Field(
        "chunk", description="documents longer than max_length: chunk (score every chunk) or truncate (the first only)")
    sort_window: int = Field(1024, gt=0, description="documents tokenised and length-sorted together")
    prefetch: int = Field(2, ge=0, description="batches tokenised ahead by a background thread (0: none)")


class ModelScorerMixin:
    """Per-worker model state for a scorer; dropped when the scorer is pickled."""

    params: Any
    _lm: LoadedModel | None = None
    _batcher: TokenBatcher | None = None
    _ready: bool

    kind: ModelKind
    default_max_length: int = 512
    batcher_mode: Literal["lm", "encoder"] = "lm"

    def model_config(self) -> ModelConfig:
        p = self.params
        return ModelConfig(ref=p.model, kind=self.kind, device=p.device, dtype=p.dtype,
                           trust_remote_code=p.trust_remote_code, torch_threads=p.torch_threads,
                           pad_token=p.pad_token)

    def load(self, text_prefix: str = "") -> None:
        """Load the model (cached per process) and build the batcher."""
        self._lm = load_model(self.model_config())
        p = self.params
        max_length = p.max_length or self.default_max_length
        limit = self._lm.max_positions()
        if limit is not None:
            max_length = min(max_length, limit)
        budget = p.max_tokens_per_batch or (32768 if self._lm.device.type == "cuda" else 2048)
        self._batcher = TokenBatcher(
            self._lm.tokenizer, max_length=max_length, max_tokens_per_batch=max(budget, max_length),
            policy=p.long_doc_policy, mode=self.batcher_mode, sort_window=p.sort_window,
            max_batch_size=p.max_batch_size, text_prefix=text_prefix, prefetch=p.prefetch)

    def cpu_autocast(self) -> bool:
        """The `cpu_bf16_autocast` setting resolved for this machine (`auto`: native bf16 CPUs only)."""
        return resolve_cpu_bf16_autocast(self.params.cpu_bf16_autocast)

    def batching_stats(self) -> dict[str, Any]:
        return self._batcher.stats.as_dict() if self._batcher is not None else {}

    def stats(self) -> dict[str, Any]:
        """Rows and seconds (kept by the Scorer base) plus batching counters of this worker."""
        rows, seconds = getattr(self, "rows", 0), getattr(self, "seconds", 0.0)
        return {"rows": rows, "seconds": round(seconds, 4), **self.batching_stats()}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lm", None)
        state.pop("_batcher", None)
        state["_ready"] = False
        return state


def texts_and_valid(batch: pa.RecordBatch) -> tuple[list[str], list[int]]:
    """The batch's texts and the positions of those that are not empty or whitespace."""
    texts = batch.column("text").to_pylist()
    valid = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    return [t if t is not None else "" for t in texts], valid
