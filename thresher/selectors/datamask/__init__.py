"""DATAMASK: joint quality/diversity subset selection by policy-gradient mask learning.

SPEC section 1. One real logit per document defines a Plackett-Luce policy (S draws without
replacement, each a softmax over the remaining documents). Each step draws G masks at once by
Gumbel-top-k, scores them with a set objective lam*f_qua + (1-lam)*f_div, turns the scores into
group-normalised advantages and moves the logits along the exact Plackett-Luce score function.
The readout is the top-S documents by logit.

The corpus is split into random blocks (``block_of``: a hash of (seed, id)) and each block is solved on its own
(``solve_block``): a block is the unit of parallelism (one Spark task / Beam element per block),
and every random number of a block is seeded from (job seed, block id, step), so a block's
result does not depend on which worker solves it or on the other blocks.

Objective reported (and optimised exactly by greedy / ``metric_norm: fixed``): each metric is
standardised against random subsets of the same size drawn from the whole block,

    f(U) = lam * (qbar(U) - m_q) / s_q + (1 - lam) * (div(U) - m_d) / s_d,

so 0 = a random subset and 1 = one random-subset standard deviation better. The default
``metric_norm: fixed`` optimises that objective (standardised at the batch's subset size); with
``metric_norm: group`` the optimiser instead z-scores each metric within the group of G masks
before mixing (SPEC 1.6), which keeps lam meaningful as the policy sharpens but lands 3-6% lower
on the reported objective (benchmarks/results/datamask.md).

Batch reward (``batch_reward``; SPEC 1.5.4 leaves open what a batch mask is scored on). With
``batch`` (the reference loop's reading) a mask drawn in a batch is scored on the batch subset
alone, so diversity only sees the few documents drawn with it. With ``context`` (default for
PWS) it is scored as the block subset it completes: U_g plus the current readout (top-S by
logit) outside the batch, i.e. exactly the block objective the readout is judged on. A
document's reward then carries its interaction with the whole selection, which lets batches be
small (32 documents, G = 32) and many (vectorised ``parallel_batches`` per step); with PWS the
rest of the block enters as one summed embedding, so the cost per mask stays small. It
reaches 0.98-0.99 of greedy's objective where the batch reward reached 0.87-0.93
(benchmarks/results/datamask.md).

Speed. Sampling: Gumbel-top-k forms its keys as the equivalent exponential race (one log per
key); when a batch draws only a few documents (the context reward's 3 of 32) the same race is
run lazily instead (``sequential_draws``: one uniform per draw, no G x batch keys, no top-k).
Reward: one batched Gram product per step over the batches, extended by a row holding the
readout's summed embedding, gives every mask's PWS from gathered entries. Gradient: the exact
Plackett-Luce gradient runs in linear space (cumsum instead of logcumsumexp; log space only
for wide logit spreads) with no dense (G, N) temporary in the weighted form.

Modules: ``params`` (BlockObjectiveParams, shared with greedy; DataMaskParams), ``plackett_luce``
(sampler and exact gradient), ``objective`` (the block objective and its calibration),
``blocks`` (blocks, pruning, per-block preparation and result, and ``BlockSelector``: the loop
over blocks shared with greedy), ``rewards`` (batch and context rewards), ``optimiser``
(``solve_block``), ``selector`` (DataMaskSelector).
"""

from thresher.selectors.datamask.blocks import (
    BlockResult,
    BlockSelector,
    PreparedBlock,
    allocate,
    block_calibration,
    check_normalized,
    finish_block,
    prepare_block,
    prune_by_quality,
    quality_vector,
    solve_block_task,
    block_count,
    block_of,
)
from thresher.selectors.datamask.objective import Calibration, calibrate, objective
from thresher.selectors.datamask.optimiser import batch_docs, batch_schedule, group_advantages, solve_block, zscore
from thresher.selectors.datamask.params import BlockObjectiveParams, DataMaskParams
from thresher.selectors.datamask.plackett_luce import draw_masks, gumbel_topk, pl_grad, pl_grad_log, sequential_draws
from thresher.selectors.datamask.rewards import ContextReadout, batch_metrics, reward_mode
from thresher.selectors.datamask.selector import DataMaskSelector

__all__ = [
    "BlockObjectiveParams", "BlockResult", "BlockSelector", "Calibration", "ContextReadout", "DataMaskParams",
    "DataMaskSelector", "PreparedBlock", "allocate", "batch_docs", "batch_metrics", "batch_schedule",
    "block_calibration", "calibrate", "check_normalized", "draw_masks", "finish_block", "group_advantages",
    "gumbel_topk", "objective", "pl_grad", "pl_grad_log", "prepare_block", "prune_by_quality", "quality_vector",
    "reward_mode", "sequential_draws", "solve_block", "solve_block_task", "block_count", "block_of", "zscore",
]
