"""Parameters: the block objective shared with greedy, and DATAMASK's optimiser knobs (SPEC 1.6)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from thresher.selectors.base import BudgetParams


class BlockObjectiveParams(BudgetParams):
    """The block objective and its blocks: what every block selector (DATAMASK, greedy) reads.

    Give either ``quality`` or ``quality_weights``."""

    quality: str | None = Field(None, description="quality score column")
    quality_weights: dict[str, float] | None = Field(
        None, description="quality = weighted sum of these columns (e.g. three classifiers)")
    embedding: str = Field("embedding_vector", description="fixed-size-list<float> embedding column")
    lam: float = Field(0.5, ge=0, le=1, description="weight of quality against diversity")
    diversity: Literal["pws", "fl", "disf"] = Field(
        "pws", description="pws: minus the mean pairwise cosine; fl: facility location; disf: DiSF (decorrelated "
                           "embedding dimensions)")
    prune_fraction: float = Field(0.4, ge=0, lt=1, description="drop this bottom share by quality first")
    block_size: int = Field(1_000_000, ge=2, description="documents per independently solved block (memory: the "
                                                          "block's embeddings, plus a copy of the kept ones with the "
                                                          "context reward: about 1.6 x block x dim x 4 bytes)")
    fl_reference: int = Field(1024, ge=1, description="facility location: reference docs V per block")
    calibration_draws: int = Field(32, ge=2, description="random subsets used to standardise fl/disf diversity "
                                                           "(pws: exact moments, no subsets)")
    normalized_tol: float = Field(1e-3, gt=0, description="allowed | ||e|| - 1 | for pws/fl")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where blocks are solved: auto (cuda when available) | cpu | cuda")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while solving (None: leave as is)")

    @model_validator(mode="after")
    def _one_quality(self) -> BlockObjectiveParams:
        if (self.quality is None) == (self.quality_weights is None):
            raise ValueError("give exactly one of `quality` (a column) or `quality_weights` ({column: weight})")
        if self.quality_weights is not None and not self.quality_weights:
            raise ValueError("`quality_weights` is empty")
        return self

    def quality_columns(self) -> list[str]:
        """The score columns behind the quality vector."""
        return [self.quality] if self.quality is not None else list(self.quality_weights or {})


class DataMaskParams(BlockObjectiveParams):
    """DATAMASK parameters (SPEC 1.6): the block objective plus the policy-gradient optimiser."""

    group_size: int | None = Field(None, ge=2, description="masks drawn per batch (G); None: 32 with the context "
                                                           "reward, 128 (the paper's) with the batch reward")
    steps: int | None = Field(None, ge=0, description="batch updates per block (paper ~10k); None: `epochs` passes "
                                                       "over the pruned block with the context reward, 400 with the batch reward")
    epochs: float = Field(10.0, gt=0, description="passes over the pruned block when `steps` is None (context reward)")
    lr: float = Field(4.0, gt=0, description="ascent step size on the logits")
    batch_fraction: float | None = Field(None, gt=0, le=1, description="share of the pruned block per batch "
                                                                   "(None: see batch_size)")
    min_batch: int = Field(64, ge=2, description="smallest batch, for small blocks")
    init: Literal["quality", "uniform"] = Field("quality",
                                                description="initial logits: from the quality scores, or uniform")
    metric_norm: Literal["group", "fixed"] = Field(
        "fixed", description="group: z-score each metric within the group before mixing; "
                             "fixed: mix the block-standardised objective (exactly what greedy maximises)")
    adv_eps: float = Field(1e-8, gt=0, description="floor of the group std in the advantage")
    sampler: Literal["auto", "gumbel"] = Field(
        "auto", description="gumbel: Gumbel-top-k for every batch; auto: sequential draws (the same race, run "
                            "lazily) where a batch draws at most 8 documents with a logit spread <= 16 nats")
    batch_reward: Literal["auto", "context", "batch"] = Field(
        "auto", description="context: score a batch mask as the block subset it completes (U + current readout "
                            "outside the batch; pws only); batch: the batch subset alone; auto: context for pws")
    batch_size: int | None = Field(None, ge=2, description="documents per batch; with batch_fraction also None: "
                                                          "32 with the context reward, 5% of the block with the batch reward")
    parallel_batches: int | None = Field(None, ge=1, description="disjoint batches updated together, vectorised "
                                                                 "(None: about 2^15 batch documents per step with the "
                                                                 "context reward, 2^19 sampling keys with the batch reward)")

    @model_validator(mode="after")
    def _context_needs_pws(self) -> DataMaskParams:
        if self.batch_reward == "context" and self.diversity != "pws" and self.lam < 1:
            raise ValueError(f"batch_reward: context is implemented for diversity: pws only (got {self.diversity!r}); "
                             "use batch_reward: batch or auto")
        return self
