"""ICon / RICo in-context contribution scores (SPEC section 2), a per-batch map stage.

Each candidate row (instruction data: the batch's `prompt` and `response` columns) is placed
as a one-shot demonstration before every item of a fixed assessment set, and we measure how
much it lowers the perplexity of the assessment responses compared with a random-character
context of the same character length (RICo's control):

    c_ij = (PPL(S_i | random_j) - PPL(S_i | T_j)) / (PPL(S_i) + 1e-6),   s_j = mean_i c_ij.

The assessment set (`assessment`: JSONL, JSON list or Parquet with prompt/response fields) is
loaded and its baselines PPL(S_i) computed once per worker in `setup()`. Only a seeded sample
of rows is scored (`sample_fraction`; membership = hash(seed, id), so every engine and retry
picks the same rows); the selector trains a classifier on the sample to score the rest.

Columns (prefix default `icon`; null for rows not in the sample):
`icon_score` s_j, `icon_phi` φ(s_j), `icon_consistency` (share of c_ij > 0), `icon_stability`
(variance of c_ij), `icon_coverage` (share of c_ij > 0.5), and `icon_sampled` (bool, never null).

Cost: 2·n forwards of the n assessment continuations per sampled row, with the candidate's KV
cache shared across them (see thresher.models.icl); n = 1,020 and thousands of rows is GPU work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from thresher.common.templates import ALPACA_TEMPLATE
from thresher.models.icl import SEPARATOR, ICLEngine, Item, in_sample, phi, summarize
from thresher.models.loading import load_model
from thresher.scorers.model import ModelScorerMixin
from thresher.scorers.base import Scorer, ScorerParams

STATS = ("score", "phi", "consistency", "stability", "coverage")


class IConParams(ScorerParams):
    model: str = Field("smollm2", description="the target causal LM (the model that will be fine-tuned)")
    assessment: str = Field(..., description="assessment set: .jsonl / .json / .parquet with prompt and response fields")
    assessment_prompt_field: str = Field("prompt", description="field of the assessment records holding the prompt")
    assessment_response_field: str = Field("response",
                                           description="field of the assessment records holding the response")
    assessment_input_field: str | None = Field(None, description="optional field appended to the prompt after a blank line")
    assessment_limit: int | None = Field(None, gt=0, description="use only the first N assessment items")
    template: str = Field(ALPACA_TEMPLATE, description="prompt template; must contain {prompt}")
    separator: str = Field(SEPARATOR, description="text between the demonstration and the assessment item")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="share of rows scored with ICL (seeded by id)")
    exclude_urls: bool = Field(True, description="rows whose prompt or response has http(s):// are not sampled")
    random_control: bool = Field(True, description="RICo control; false = v1-style (base - real)/base")
    seed: int = Field(42, description="seeds the sample (by id) and the random-character controls")
    max_prompt_tokens: int = Field(1024, gt=0, description="assessment prompt tokens kept (longer prompts are cut)")
    max_context_tokens: int = Field(2040, gt=0, description="demonstration (candidate) tokens kept")
    max_target_tokens: int = Field(1024, gt=0, description="assessment response tokens kept")
    max_tokens_per_batch: int | None = Field(None, gt=0, description="continuation tokens per batch (default 2048 CPU, 32768 GPU)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU); log-probs are always fp32")
    torch_threads: int | None = Field(None, gt=0, description="torch threads in this worker")
    trust_remote_code: bool = Field(False, description="let transformers run code shipped with the model folder")
    pad_token: str | None = Field(None, description="pad token to use when the tokenizer has none (default: eos)")


def read_assessment(params: IConParams) -> list[tuple[str, str]]:
    """(prompt, response) pairs of the assessment set; clear errors for missing files and fields."""
    path = Path(params.assessment).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"icon: assessment file {path} does not exist")
    if path.suffix == ".parquet":
        records = pq.read_table(path).to_pylist()
    else:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    fields = (params.assessment_prompt_field, params.assessment_response_field)
    pairs: list[tuple[str, str]] = []
    for n, rec in enumerate(records):
        missing = [f for f in fields if not isinstance(rec.get(f), str)]
        if missing:
            raise ValueError(f"icon: assessment record {n} in {path} lacks text fields {missing} "
                             f"(set assessment_prompt_field / assessment_response_field); keys: {sorted(rec)}")
        prompt = rec[fields[0]]
        extra = rec.get(params.assessment_input_field) if params.assessment_input_field else None
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        pairs.append((prompt, rec[fields[1]]))
    if params.assessment_limit:
        pairs = pairs[: params.assessment_limit]
    if not pairs:
        raise ValueError(f"icon: assessment file {path} holds no records")
    return pairs


class IConScorer(ModelScorerMixin, Scorer):
    """In-context contribution of each sampled candidate to a fixed assessment set."""

    name: ClassVar[str] = "icon"
    Params: ClassVar[type[IConParams]] = IConParams
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    kind = "causal_lm"

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(self.col(s), pa.float64()) for s in STATS]
                         + [pa.field(self.col("sampled"), pa.bool_())])

    def setup(self) -> None:
        p = self.params
        pairs = read_assessment(p)  # fail on a bad file before loading a model
        self._lm = load_model(self.model_config())
        lm = self._lm
        budget = p.max_tokens_per_batch or (32768 if lm.device.type == "cuda" else 2048)
        self.engine = ICLEngine(lm.model, lm.tokenizer, lm.device, template=p.template, separator=p.separator,
                                max_prompt_tokens=p.max_prompt_tokens, max_context_tokens=p.max_context_tokens,
                                max_target_tokens=p.max_target_tokens, max_tokens_per_batch=budget,
                                max_positions=lm.max_positions())
        self.items: list[Item] = [self.engine.item(q, r) for q, r in pairs]
        self.base = self.engine.base_ppl(self.items)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for key in ("engine", "items", "base"):
            state.pop(key, None)
        return state

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        names = batch.schema.names
        if "prompt" not in names or "response" not in names:
            raise ValueError("icon scores instruction data: set input.prompt_column and input.response_column "
                             f"in the job (batch columns: {names})")
        p = self.params
        ids = [str(i) for i in batch.column("id").to_pylist()]
        prompts = batch.column("prompt").to_pylist()
        responses = batch.column("response").to_pylist()
        sampled = in_sample(ids, p.seed, p.sample_fraction)
        n = batch.num_rows
        out: dict[str, list[float | None]] = {s: [None] * n for s in STATS}
        for r in range(n):
            q, a = prompts[r] or "", responses[r] or ""
            if not (q.strip() and a.strip()) or (p.exclude_urls and _has_url(q + a)):
                sampled[r] = False
            if not sampled[r]:
                continue
            text = self.engine.candidate_text(q, a)
            c = self.engine.candidate_c(ids[r], text, self.items, self.base, p.seed, p.random_control)
            stats = summarize(c)
            stats["phi"] = float(phi(stats["score"]))
            for s in STATS:
                out[s][r] = stats[s]
        cols = {self.col(s): pa.array(v, pa.float64()) for s, v in out.items()}
        cols[self.col("sampled")] = pa.array(sampled.tolist(), pa.bool_())
        return cols


def _has_url(text: str) -> bool:
    return "http://" in text or "https://" in text
